"""The ``custom_vjp`` shared by the fused implementations of ``token_logprobs``.

Each implementation (``xla``, ``pallas``) supplies two pure functions on
flattened tokens (``h [BT, D]``, ``W [D, V]``, ``t [BT]`` int32):

* ``forward_stats -> (lse [BT], z_t [BT], E_p[z] [BT] or None)``: the logsumexp,
  the target logit (0 when ``t`` is outside ``[0, V)``) and the mean logit;
* ``backward(..., lse, E_p[z], g, g_H) -> (d hidden, dW)``: recomputes the logits
  block by block from the *global* statistics.

Outputs are ``logp = z_t - lse`` and ``H = lse - E_p[z]``. The residuals are
``h``, ``W``, ``t``, ``lse`` and (with the entropy) ``E_p[z]``: nothing of size V.
Because both functions take target ids relative to the block of the vocabulary
they see and global statistics, the sharded entry point (``sharded.py``) reuses them
per vocabulary shard.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from giftjax.kernels import _logprobs_pallas, _logprobs_xla


class FusedConfig(NamedTuple):
    """Static settings of one fused call (hashable: a ``nondiff_argnums`` entry)."""

    impl: str  # "xla" or "pallas"
    temperature: float  # tau > 0
    with_entropy: bool
    block_n: int  # token block (pallas only)
    block_v: int  # vocabulary block


def make_config(
    impl: str,
    *,
    num_tokens: int,
    dim: int,
    vocab: int,
    itemsize: int,
    grad_itemsize: int | None = None,
    temperature: float,
    with_entropy: bool,
    block_n: int | None,
    block_v: int | None,
) -> FusedConfig:
    """Fill in default blocks for ``impl`` and check explicit ones.

    ``grad_itemsize``: bytes per element of the gradients the backward kernels write
    (the input dtype's by default; float32 in the sharded path).
    """
    if impl == "pallas":
        grad_itemsize = itemsize if grad_itemsize is None else grad_itemsize
        bn, bv = _logprobs_pallas.default_blocks(dim, itemsize, grad_itemsize)
        block_n = bn if block_n is None else block_n
        block_v = bv if block_v is None else block_v
        _logprobs_pallas.check_blocks(block_n, block_v)
    elif impl == "xla":
        block_n = 0 if block_n is None else block_n
        if block_v is None:
            block_v = _logprobs_xla.default_block_v(num_tokens, vocab)
        if not isinstance(block_v, int) or isinstance(block_v, bool) or block_v < 1:
            raise ValueError(f"block_v must be a positive int, got {block_v!r}.")
    else:
        raise ValueError(f"fused impl must be 'xla' or 'pallas', got {impl!r}.")
    return FusedConfig(impl, float(temperature), bool(with_entropy), int(block_n), int(block_v))


def forward_stats(cfg: FusedConfig, h, w, t):
    """Per-implementation ``(lse, z_t, E_p[z] | None)``; see the module docstring."""
    kw = dict(inv_t=1.0 / cfg.temperature, with_entropy=cfg.with_entropy, block_v=cfg.block_v)
    if cfg.impl == "pallas":
        return _logprobs_pallas.forward_stats(h, w, t, block_n=cfg.block_n, **kw)
    return _logprobs_xla.forward_stats(h, w, t, **kw)


def backward(cfg: FusedConfig, h, w, t, lse, mean_z, g, g_ent, *, dh_dtype, dw_dtype):
    """Per-implementation ``(d hidden, dW)``; see the module docstring."""
    kw = dict(
        inv_t=1.0 / cfg.temperature, block_v=cfg.block_v, dh_dtype=dh_dtype, dw_dtype=dw_dtype
    )
    if cfg.impl == "pallas":
        return _logprobs_pallas.backward(h, w, t, lse, mean_z, g, g_ent, block_n=cfg.block_n, **kw)
    return _logprobs_xla.backward(h, w, t, lse, mean_z, g, g_ent, **kw)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def fused_logprobs(cfg: FusedConfig, h: jax.Array, w: jax.Array, t: jax.Array):
    """``logps [BT]`` (or ``(logps, entropy)``) float32 with a recomputing VJP."""
    out, _ = _fwd(cfg, h, w, t)
    return out


def _fwd(cfg, h, w, t):
    lse, tgt, mean_z = forward_stats(cfg, h, w, t)
    logps = tgt - lse
    out = (logps, lse - mean_z) if cfg.with_entropy else logps
    return out, (h, w, t, lse, mean_z)


def _bwd(cfg, res, cts):
    h, w, t, lse, mean_z = res
    g, g_ent = cts if cfg.with_entropy else (cts, None)
    g = g.astype(jnp.float32)
    g_ent = None if g_ent is None else g_ent.astype(jnp.float32)
    dh, dw = backward(cfg, h, w, t, lse, mean_z, g, g_ent, dh_dtype=h.dtype, dw_dtype=w.dtype)
    return dh, dw, None


fused_logprobs.defvjp(_fwd, _bwd)
