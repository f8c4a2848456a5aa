"""Parameter creation with logical axis names, and the activation-constraint hook.

Every parameter is an `nnx.Param` whose `out_sharding` metadata holds *logical* axis names
(`embed`, `vocab`, `heads`, `kv_heads`, `head_dim`, `mlp`; the layer stack adds `layers`);
`giftjax.sharding` maps them to mesh axes with a rules table. `eager_sharding=False` keeps flax
from placing the value at creation (logical names are not mesh axes).

A `Constrain` function applies a sharding constraint to an activation by logical names; the
decoder passes `no_constraint` unless `Decoder.set_sharding` was called.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

_INIT = jax.nn.initializers.normal(stddev=0.02)


Constrain = Callable[[jax.Array, tuple[str | None, ...]], jax.Array]


def no_constraint(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
    """The default activation constraint: none (see Decoder.set_sharding)."""
    del names
    return x


def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x @ w`` over the last axis of x and the first of w, with w cast to x's dtype:
    [..., I] x [I, O] -> [..., O].

    One ``lax.dot_general`` (what ``x @ w`` lowers to), written out so that qwix's LoRA
    interception, which hooks ``dot_general`` and ``einsum`` but not the ``@`` operator,
    sees the projection (giftjax/models/lora.py).
    """
    dims = (((x.ndim - 1,), (0,)), ((), ()))
    return jax.lax.dot_general(x, w.astype(x.dtype), dims)


def param(
    rngs: nnx.Rngs,
    shape: tuple[int, ...],
    names: tuple[str, ...],
    dtype: jnp.dtype,
    init=_INIT,
) -> nnx.Param:
    """An `nnx.Param` of `shape` with logical axis `names` (one per dimension)."""
    if len(names) != len(shape):
        raise ValueError(f"names={names} must name each of the {len(shape)} dims of {shape}.")
    return nnx.Param(init(rngs.params(), shape, dtype), out_sharding=names, eager_sharding=False)
