"""Blockwise per-token log-probs in plain JAX: a loop over vocabulary blocks.

Forward: for each block of ``block_v`` columns of ``W: [D, V]`` compute the
``[BT, block_v]`` logits, fold them into an online logsumexp (running max ``m``,
rescaled sum ``s``), pick the target logit, and (for the entropy) accumulate
``a = sum_v exp(z_v - m) z_v``, rescaled like ``s``. Then ``lse = m + log s``,
``logp = z_t - lse`` and ``H = lse - a / s``.

Backward (the ``custom_vjp`` of ``_logprobs_vjp``; residuals: hidden, W, targets, lse
and, with the entropy, ``E_p[z] = a / s``): with ``p = exp(z - lse)`` and cotangents ``g``
(log-probs) and ``g_H`` (entropy), the logit gradient is:

```
dz_v = g (1[v = t] - p_v) - g_H p_v (z_v - E_p[z])
```

recomputed block by block; ``d hidden = (dz @ W_blk^T) / tau`` accumulates in a
float32 ``[BT, D]`` buffer (the only large temporary), and ``dW_blk = hidden^T @ dz / tau``
is complete after one block and written straight into the ``[D, V]`` output.

A ragged last block is a separate step with a static width (no padded copy of
``W``); matmuls take the input dtype (bf16 stays bf16 on the MXU) and accumulate
in float32.

Shape letters: ``BT`` flattened tokens, ``D`` model width, ``V`` vocabulary, ``Vb`` one
vocabulary block; ``tau`` is the temperature (``inv_t = 1 / tau``).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from giftjax.kernels._logits import logit_grad, scaled_logits
from giftjax.kernels._matmul import dot_f32

__all__ = ["backward", "default_block_v", "forward_stats"]

# Bytes of one [BT, block_v] float32 temporary the default block aims at.
_BLOCK_BYTES = 16 * 2**20


def default_block_v(num_tokens: int, vocab: int) -> int:
    """A vocabulary block keeping ``[BT, block_v]`` float32 near 16 MiB (128 .. 4096)."""
    block = _BLOCK_BYTES // (4 * max(num_tokens, 1))
    block = max(128, min(4096, block // 128 * 128))
    return min(block, vocab)


def _forward_stats(h, w, t, inv_t, block_v, with_entropy):
    """``(lse [BT], target logit [BT], E_p[z] [BT] or None)`` by an online logsumexp."""
    n = h.shape[0]
    vocab = w.shape[1]
    num_full, tail = divmod(vocab, block_v)

    def step(start, width, carry):
        m, s, tgt, a = carry
        w_blk = lax.dynamic_slice_in_dim(w, start, width, axis=1)  # [D, Vb]
        z = scaled_logits(h, w_blk, inv_t)  # [BT, Vb]
        m_new = jnp.maximum(m, jnp.max(z, axis=1))
        alpha = jnp.exp(m - m_new)
        e = jnp.exp(z - m_new[:, None])  # [BT, Vb]
        s = s * alpha + jnp.sum(e, axis=1)
        if with_entropy:
            a = a * alpha + jnp.sum(e * z, axis=1)
        cols = lax.broadcasted_iota(jnp.int32, z.shape, 1)
        hit = cols == (t - start)[:, None]  # [BT, Vb]; no hit when t is outside the block
        tgt = tgt + jnp.sum(jnp.where(hit, z, 0.0), axis=1)
        return m_new, s, tgt, a

    zeros = jnp.zeros((n,), jnp.float32)
    carry = (jnp.full((n,), -jnp.inf, jnp.float32), zeros, zeros, zeros)
    if num_full:
        carry = lax.fori_loop(0, num_full, lambda i, c: step(i * block_v, block_v, c), carry)
    if tail:
        carry = step(num_full * block_v, tail, carry)
    m, s, tgt, a = carry
    lse = m + jnp.log(s)
    mean_z = a / s if with_entropy else None
    return lse, tgt, mean_z


def _backward(h, w, t, lse, mean_z, g, g_ent, inv_t, block_v, dh_dtype, dw_dtype):
    """``(d hidden [BT, D], dW [D, V])`` block by block."""
    vocab = w.shape[1]
    num_full, tail = divmod(vocab, block_v)

    col = lambda x: None if x is None else x[:, None]  # [BT] -> [BT, 1]
    stats = (col(lse), col(g), col(mean_z), col(g_ent))

    def step(start, width, carry):
        dh, dw = carry
        w_blk = lax.dynamic_slice_in_dim(w, start, width, axis=1)  # [D, Vb]
        z = scaled_logits(h, w_blk, inv_t)  # [BT, Vb]
        cols = lax.broadcasted_iota(jnp.int32, z.shape, 1)
        hit = cols == (t - start)[:, None]  # [BT, Vb]
        dz = logit_grad(z, hit, *stats, inv_t).astype(h.dtype)
        # [BT, Vb] x [D, Vb] -> [BT, D]; contracts Vb without transposing W_blk in HBM.
        dh = dh + dot_f32(dz, w_blk, (1, 1))
        # [BT, D] x [BT, Vb] -> [D, Vb]: the whole column block of dW, final after this step.
        dw_blk = dot_f32(h, dz, (0, 0))
        dw = lax.dynamic_update_slice_in_dim(dw, dw_blk.astype(dw_dtype), start, axis=1)
        return dh, dw

    carry = (jnp.zeros(h.shape, jnp.float32), jnp.zeros(w.shape, dw_dtype))
    if num_full:
        carry = lax.fori_loop(0, num_full, lambda i, c: step(i * block_v, block_v, c), carry)
    if tail:
        carry = step(num_full * block_v, tail, carry)
    dh, dw = carry
    return dh.astype(dh_dtype), dw


def forward_stats(h, w, t, *, inv_t, with_entropy, block_v):
    """``(lse [BT], target logit [BT] (0 when t is outside [0, V)), E_p[z] [BT] or None)``."""
    block_v = min(block_v, w.shape[1])
    return _forward_stats(h, w, t, inv_t, block_v, with_entropy)


def backward(h, w, t, lse, mean_z, g, g_ent, *, inv_t, block_v, dh_dtype, dw_dtype):
    """``(d hidden [BT, D] in dh_dtype, dW [D, V] in dw_dtype)`` from global statistics."""
    block_v = min(block_v, w.shape[1])
    return _backward(h, w, t, lse, mean_z, g, g_ent, inv_t, block_v, dh_dtype, dw_dtype)
