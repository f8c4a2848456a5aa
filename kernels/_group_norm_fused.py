"""Fused group normalisation: one formula for XLA and a Pallas TPU kernel, one ``custom_vjp``.

Groups are laid out as the columns of ``X: [G, P]`` (``X[:, g]`` = the G members of
group g), so that the many groups run along the 128 TPU lanes and the few members
along sublanes; a block is ``[G, block_p]`` (G = the full first dimension,
``block_p`` a multiple of 128 or all of P). With ``c = x - mean``,
``n = max(G - ddof, 1)``, ``std = sqrt(sum c^2 / n)`` and ``d = max(std, floor) + eps``:

```
z = c / d
```

Backward, for cotangents ``gz`` (of z), ``gm`` (of mean) and ``gs`` (of std), per group:

```
stop_grad_stats:  dx = gz / d
full gradient:    dx = (gz - mean(gz)) / d
                       + c / (n std) * (gs - k (sum_i gz_i c_i) / d^2) + gm / G
```

where ``k`` is the derivative of ``max(std, floor)`` in std as JAX defines it (1 above
the floor, 1/2 at a tie, 0 below) and ``c / (n std)`` (the gradient of std) is 0
where ``std = 0`` (the safe square root). This equals autodiff of
``group_normalize_reference`` (tested), without saving anything but ``x``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from giftjax.kernels._dispatch import on_platform

__all__ = ["GroupNormConfig", "group_normalize_fused"]


class GroupNormConfig(NamedTuple):
    """Static settings (hashable; a ``nondiff_argnums`` entry)."""

    impl: str  # "xla" or "pallas"
    group_size: int
    eps: float
    ddof: int
    stop_grad_stats: bool
    std_floor: float
    block_p: int  # groups per Pallas block (multiple of 128)


def safe_sqrt(v: jax.Array) -> jax.Array:
    """``sqrt(v)`` with a zero (not infinite) gradient at ``v == 0``."""
    positive = v > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, v, 1.0)), 0.0)


def _stats(xg, cfg):
    """``(c, mean, std)`` of ``xg: [G, p]`` float32 over axis 0; mean, std ``[1, p]``."""
    g = cfg.group_size
    mean = jnp.sum(xg, axis=0, keepdims=True) / g
    c = xg - mean
    var = jnp.sum(c * c, axis=0, keepdims=True) / max(g - cfg.ddof, 1)
    return c, mean, safe_sqrt(var)


def _forward_math(xg, cfg):
    c, mean, std = _stats(xg, cfg)
    z = c / (jnp.maximum(std, cfg.std_floor) + cfg.eps)
    return z, mean, std


def _backward_math(xg, gz, gm, gs, cfg):
    """``dx: [G, p]`` float32 (see the module docstring)."""
    c, _, std = _stats(xg, cfg)
    d = jnp.maximum(std, cfg.std_floor) + cfg.eps
    if cfg.stop_grad_stats:
        return gz / d
    g = cfg.group_size
    n = max(g - cfg.ddof, 1)
    k = jnp.where(std > cfg.std_floor, 1.0, jnp.where(std == cfg.std_floor, 0.5, 0.0))
    positive = std > 0
    dstd = jnp.where(positive, c / (n * jnp.where(positive, std, 1.0)), 0.0)  # d std / d x
    gz_c = jnp.sum(gz * c, axis=0, keepdims=True)
    mean_gz = jnp.sum(gz, axis=0, keepdims=True) / g
    return (gz - mean_gz) / d + dstd * (gs - k * gz_c / (d * d)) + gm / g


# ------------------------------------------------------------------------------ pallas


def _fwd_kernel(x_ref, z_ref, mean_ref, std_ref, *, cfg):
    z, mean, std = _forward_math(x_ref[...].astype(jnp.float32), cfg)
    z_ref[...] = z
    mean_ref[...] = mean
    std_ref[...] = std


def _bwd_kernel(x_ref, gz_ref, gm_ref, gs_ref, dx_ref, *, cfg):
    dx = _backward_math(x_ref[...].astype(jnp.float32), gz_ref[...], gm_ref[...], gs_ref[...], cfg)
    dx_ref[...] = dx.astype(dx_ref.dtype)


def _block_p(cfg, num_groups):
    return num_groups if num_groups <= cfg.block_p else cfg.block_p


def _pallas_forward(xg, cfg, interpret):
    g, p = xg.shape
    bp = _block_p(cfg, p)
    col = pl.BlockSpec((1, bp), lambda i: (0, i))
    return pl.pallas_call(
        functools.partial(_fwd_kernel, cfg=cfg),
        out_shape=(
            jax.ShapeDtypeStruct((g, p), jnp.float32),
            jax.ShapeDtypeStruct((1, p), jnp.float32),
            jax.ShapeDtypeStruct((1, p), jnp.float32),
        ),
        grid=(pl.cdiv(p, bp),),
        in_specs=[pl.BlockSpec((g, bp), lambda i: (0, i))],
        out_specs=(pl.BlockSpec((g, bp), lambda i: (0, i)), col, col),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",)),
        interpret=interpret,
        name="group_normalize_fwd",
    )(xg)


def _pallas_backward(xg, gz, gm, gs, cfg, interpret):
    g, p = xg.shape
    bp = _block_p(cfg, p)
    blk = pl.BlockSpec((g, bp), lambda i: (0, i))
    col = pl.BlockSpec((1, bp), lambda i: (0, i))
    return pl.pallas_call(
        functools.partial(_bwd_kernel, cfg=cfg),
        out_shape=jax.ShapeDtypeStruct((g, p), xg.dtype),
        grid=(pl.cdiv(p, bp),),
        in_specs=[blk, blk, col, col],
        out_specs=blk,
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",)),
        interpret=interpret,
        name="group_normalize_bwd",
    )(xg, gz, gm, gs)


# -------------------------------------------------------------------------- custom_vjp


def _to_columns(x, cfg):
    return x.reshape(-1, cfg.group_size).T  # [B] -> [G, P]


def _forward(cfg, x):
    xg = _to_columns(x, cfg)
    if cfg.impl == "pallas":
        fwd = lambda a, interpret: _pallas_forward(a, cfg, interpret)
        z, mean, std = on_platform(fwd, None, xg)
    else:
        z, mean, std = _forward_math(xg.astype(jnp.float32), cfg)
    return z.T.reshape(-1), mean[0], std[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def group_normalize_fused(cfg: GroupNormConfig, x: jax.Array):
    """``(z [B], mean [P], std [P])`` float32 of ``x: [B]``; see the module docstring."""
    return _forward(cfg, x)


def _fwd(cfg, x):
    return _forward(cfg, x), x


def _bwd(cfg, x, cts):
    gz, gm, gs = (c.astype(jnp.float32) for c in cts)
    xg = _to_columns(x, cfg)
    gz = _to_columns(gz, cfg)  # [G, P]
    gm, gs = gm[None, :], gs[None, :]  # [1, P]
    if cfg.impl == "pallas":
        dx = on_platform(
            lambda *a, interpret: _pallas_backward(*a, cfg, interpret), None, xg, gz, gm, gs
        )
    else:
        dx = _backward_math(xg.astype(jnp.float32), gz, gm, gs, cfg).astype(x.dtype)
    return (dx.T.reshape(-1),)


group_normalize_fused.defvjp(_fwd, _bwd)
