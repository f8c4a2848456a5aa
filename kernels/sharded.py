"""``token_logprobs`` on a device mesh: tokens over the data axes, vocabulary over ``tensor``.

A Pallas TPU kernel cannot be partitioned by XLA, so the fused log-probs run inside
``jax.shard_map`` (docs/development/architecture.md, section 4). Shard ``k`` holds the columns
``[k V_k, (k + 1) V_k)`` of ``W`` and computes, for its tokens, its own logsumexp
``lse_k``, target logit ``z_t^(k)`` (0 when the target is in another shard) and mean
logit ``E_k[z]``. They combine exactly over the vocabulary axis:

```
lse    = m + log sum_k exp(lse_k - m),   m = max_k lse_k       (pmax, psum)
z_t    = sum_k z_t^(k)                                          (psum)
E_p[z] = sum_k exp(lse_k - lse) E_k[z]                          (psum)
```

The backward pass is a second ``shard_map`` under the same ``custom_vjp``: each shard
recomputes its logits against the global ``lse`` and ``E_p[z]``, ``d hidden`` is summed
over the vocabulary axis and ``dW`` over the token axes (both in float32).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from giftjax.kernels import _dispatch, _logprobs_vjp
from giftjax.kernels.token_logprobs import check_logprobs_inputs

__all__ = ["token_logprobs_sharded"]


def _local_stats(cfg, vocab_axis, h, w, t):
    """Global ``(lse, z_t, E_p[z])`` for this shard's tokens, combined over ``vocab_axis``."""
    offset = lax.axis_index(vocab_axis) * w.shape[1]
    lse_k, tgt_k, mean_k = _logprobs_vjp.forward_stats(cfg, h, w, t - offset)
    m = lax.pmax(lse_k, vocab_axis)
    lse = m + jnp.log(lax.psum(jnp.exp(lse_k - m), vocab_axis))
    tgt = lax.psum(tgt_k, vocab_axis)
    if mean_k is None:
        return lse, tgt
    mean_z = lax.psum(jnp.exp(lse_k - lse) * mean_k, vocab_axis)
    return lse, tgt, mean_z


def _local_grads(cfg, vocab_axis, token_axes, h, w, t, lse, g, *entropy_terms):
    mean_z, g_ent = entropy_terms if entropy_terms else (None, None)
    offset = lax.axis_index(vocab_axis) * w.shape[1]
    dh, dw = _logprobs_vjp.backward(
        cfg, h, w, t - offset, lse, mean_z, g, g_ent, dh_dtype=jnp.float32, dw_dtype=jnp.float32
    )
    dh = lax.psum(dh, vocab_axis).astype(h.dtype)
    if token_axes:
        dw = lax.psum(dw, token_axes)
    return dh, dw.astype(w.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _sharded(cfg, mesh, token_axes, vocab_axis, h, w, t):
    out, _ = _sharded_fwd(cfg, mesh, token_axes, vocab_axis, h, w, t)
    return out


def _sharded_fwd(cfg, mesh, token_axes, vocab_axis, h, w, t):
    tok = P(token_axes or None)
    with_entropy = cfg.with_entropy
    stats = jax.shard_map(
        functools.partial(_local_stats, cfg, vocab_axis),
        mesh=mesh,
        in_specs=(P(token_axes or None, None), P(None, vocab_axis), tok),
        out_specs=(tok,) * (3 if with_entropy else 2),
        check_vma=False,  # pallas_call outputs carry no varying-axes type
    )
    lse, tgt, *rest = stats(h, w, t)
    mean_z = rest[0] if with_entropy else None
    logps = tgt - lse
    out = (logps, lse - mean_z) if with_entropy else logps
    return out, (h, w, t, lse, mean_z)


def _sharded_bwd(cfg, mesh, token_axes, vocab_axis, res, cts):
    h, w, t, lse, mean_z = res
    g, g_ent = cts if cfg.with_entropy else (cts, None)
    g = g.astype(jnp.float32)
    g_ent = None if g_ent is None else g_ent.astype(jnp.float32)
    tok = P(token_axes or None)
    extra = (mean_z, g_ent) if cfg.with_entropy else ()
    grads = jax.shard_map(
        functools.partial(_local_grads, cfg, vocab_axis, token_axes),
        mesh=mesh,
        in_specs=(P(token_axes or None, None), P(None, vocab_axis), tok, tok, tok)
        + (tok,) * len(extra),
        out_specs=(P(token_axes or None, None), P(None, vocab_axis)),
        check_vma=False,
    )
    dh, dw = grads(h, w, t, lse, g, *extra)
    return dh, dw, None


_sharded.defvjp(_sharded_fwd, _sharded_bwd)


def token_logprobs_sharded(
    hidden: jax.Array,
    lm_head: jax.Array,
    targets: jax.Array,
    *,
    mesh: Mesh,
    token_axes: Sequence[str] | None = None,
    vocab_axis: str = "tensor",
    temperature: float = 1.0,
    with_entropy: bool = False,
    impl: str = "auto",
    block_v: int | None = None,
    block_n: int | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """``token_logprobs`` with tokens split over ``token_axes`` and vocabulary over ``vocab_axis``.

    Same values and gradients as ``token_logprobs`` (see its docstring); call it under
    ``jax.jit``. The flattened token count must divide by the product of the
    ``token_axes`` sizes and ``V`` by the ``vocab_axis`` size.

    Args:
      hidden: ``[..., D]``; lm_head: ``[D, V]``; targets: ``[...]`` int (global ids).
      mesh: the device mesh (``jax.sharding.Mesh``).
      token_axes: mesh axes splitting the tokens; ``None``: every axis but ``vocab_axis``.
      vocab_axis: mesh axis splitting the vocabulary (``"tensor"``).
      temperature, with_entropy, block_v, block_n: as in ``token_logprobs``.
      impl: ``"auto"`` (pallas on TPU, xla elsewhere), ``"pallas"`` or ``"xla"``.

    Returns:
      ``logps [...]`` float32, or ``(logps, entropy)``.
    """
    check_logprobs_inputs(hidden, lm_head, targets, temperature)
    impl = _dispatch.resolve_impl(
        impl, available=dict.fromkeys(("xla", "pallas")), kernel="token_logprobs_sharded"
    )
    names = tuple(mesh.axis_names)
    if vocab_axis not in names:
        raise ValueError(f"vocab_axis={vocab_axis!r} is not an axis of the mesh {names}.")
    if token_axes is None:
        token_axes = tuple(a for a in names if a != vocab_axis)
    token_axes = tuple(token_axes)
    for a in token_axes:
        if a not in names or a == vocab_axis:
            raise ValueError(
                f"token_axes={token_axes!r}: each must be a mesh axis {names} other than "
                f"vocab_axis={vocab_axis!r}."
            )
    batch_shape = targets.shape
    h = hidden.reshape(-1, hidden.shape[-1])  # [BT, D]
    t = targets.reshape(-1).astype(jnp.int32)  # [BT]
    n, vocab = h.shape[0], lm_head.shape[1]
    n_tok = math.prod(mesh.shape[a] for a in token_axes)
    n_voc = mesh.shape[vocab_axis]
    if n % n_tok:
        raise ValueError(
            f"{n} tokens cannot be split over token_axes={token_axes} of total size {n_tok}."
        )
    if vocab % n_voc:
        raise ValueError(
            f"lm_head has V={vocab} columns, not a multiple of the {vocab_axis!r} axis size "
            f"{n_voc}; pad the vocabulary (e.g. to a multiple of 128 x {n_voc})."
        )
    cfg = _logprobs_vjp.make_config(
        impl,
        num_tokens=n // n_tok,
        dim=h.shape[1],
        vocab=vocab // n_voc,
        itemsize=jnp.dtype(h.dtype).itemsize,
        grad_itemsize=4,  # the backward writes float32 partials, summed across shards
        temperature=temperature,
        with_entropy=with_entropy,
        block_n=block_n,
        block_v=block_v,
    )
    out = _sharded(cfg, mesh, token_axes, vocab_axis, h, lm_head, t)
    if with_entropy:
        return out[0].reshape(batch_shape), out[1].reshape(batch_shape)
    return out.reshape(batch_shape)
