"""The key/value cache of the decoder: a preallocated pytree written slot by slot.

The cache holds S slots per row. A call with `cache=` writes its T tokens at slots
`index .. index+T-1` of every row (the same slots for every row; left padding of the prompt
stays in the cache, marked invalid in `mask`), advances `index` by T, and advances each row's
RoPE position by the number of real (mask=1) tokens it received. Nothing in it is Python state,
so it can be carried through `jax.lax.while_loop` and sharded like any pytree.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from giftjax.models.config import ModelConfig


class KVCache(NamedTuple):
    """Preallocated per-layer keys and values (L layers, B rows, S slots, K kv heads, H dim).

    Attributes:
      k: [L, B, S, K, H] keys after RoPE, in the cache dtype (the compute dtype by default).
      v: [L, B, S, K, H] values.
      mask: [B, S] bool, True where the slot holds a real (non-padding) token already written.
      index: () int32, the next slot to write (number of slots written so far).
      positions: [B] int32, the RoPE position the next real token of each row takes (the
        number of real tokens written so far in that row).
    """

    k: jax.Array
    v: jax.Array
    mask: jax.Array
    index: jax.Array
    positions: jax.Array


# Logical axis names of each field, for giftjax.sharding (cache sharded like activations).
CACHE_AXES = KVCache(
    k=("layers", "batch", "length", "kv_heads", "head_dim"),
    v=("layers", "batch", "length", "kv_heads", "head_dim"),
    mask=("batch", "length"),
    index=(),
    positions=("batch",),
)


def init_cache(
    config: ModelConfig, batch: int, max_len: int, dtype: jnp.dtype | str | None = None
) -> KVCache:
    """An empty cache of `max_len` slots for `batch` rows (dtype defaults to config.dtype)."""
    if batch < 1 or max_len < 1:
        raise ValueError(f"batch={batch} and max_len={max_len} must be positive.")
    dtype = jnp.dtype(dtype or config.dtype)
    shape = (config.num_layers, batch, max_len, config.num_kv_heads, config.head_dim)
    return KVCache(
        k=jnp.zeros(shape, dtype),
        v=jnp.zeros(shape, dtype),
        mask=jnp.zeros((batch, max_len), bool),
        index=jnp.zeros((), jnp.int32),
        positions=jnp.zeros((batch,), jnp.int32),
    )


def offsets(mask: jax.Array) -> jax.Array:
    """[B, T] int32: the index of each token among its row's real tokens (`cumsum(mask) - 1`)."""
    return jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1


def causal_mask(key_mask: jax.Array, start: jax.Array | int, t: int) -> jax.Array:
    """[B, 1, T, S] bool from the key mask [B, S]: query t (at slot start+t) sees slot s if
    s <= start+t and s is real."""
    s = key_mask.shape[1]
    q_slot = start + jnp.arange(t)  # [T]
    causal = jnp.arange(s)[None, :] <= q_slot[:, None]  # [T, S]
    return key_mask[:, None, None, :] & causal[None, None]


def write_masks(
    cache: KVCache, mask: jax.Array, positions: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """What writing T tokens with mask [B, T] at slot `cache.index` needs: (the key mask [B, S]
    with this call's slots, the attention mask [B, 1, T, S], positions [B, T]; `positions`
    defaults to those continuing each row's `cache.positions` over its real tokens)."""
    b, t = mask.shape
    if cache.mask.shape[0] != b:
        raise ValueError(f"cache has {cache.mask.shape[0]} rows; tokens have {b}.")
    if positions is None:
        positions = jnp.maximum(cache.positions[:, None] + offsets(mask), 0)
    key_mask = jax.lax.dynamic_update_slice(cache.mask, mask, (0, cache.index))  # [B, S]
    return key_mask, causal_mask(key_mask, cache.index, t), positions


def advance(
    cache: KVCache, kv: tuple[jax.Array, jax.Array], key_mask: jax.Array, mask: jax.Array
) -> KVCache:
    """The cache after a call that wrote T = mask.shape[1] slots: new k/v, key mask, index and
    per-row positions (advanced by each row's real tokens)."""
    return KVCache(
        k=kv[0],
        v=kv[1],
        mask=key_mask,
        index=cache.index + mask.shape[1],
        positions=cache.positions + jnp.sum(mask, axis=1, dtype=jnp.int32),
    )
