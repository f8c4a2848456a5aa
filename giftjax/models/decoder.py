"""The Llama/Qwen decoder in Flax NNX, with a full-sequence path and a KV-cache path.

Calling convention (shape letters: B rows, T tokens in this call, S cache slots, V vocab,
D width, L layers, K kv heads, H head dim)::

    model = Decoder(config, rngs=nnx.Rngs(0))        # or giftjax.models.load_hf(path, ...)

    # 1. Full forward (training, scoring):
    logits = model(tokens, attention_mask)             # tokens [B, T] int, mask [B, T] (1 = real)
    hidden = model(tokens, attention_mask, return_hidden=True)   # [B, T, D] after the final norm
    lm_head = model.lm_head_weight()                   # [D, V] (embedding.T when tied)

    # 2. Generation with a preallocated cache:
    cache = model.init_cache(batch=B, max_len=S)       # KVCache, all slots empty
    logits, cache = model(prompt_ids, prompt_mask, cache=cache)      # prefill, T = prompt length
    logits, cache = model(next_ids[:, None], None, cache=cache)      # decode, T = 1
    # ... repeat decode; each call writes T slots.

- `attention_mask` is optional (None = all real) and may be bool or int. Prompts are
  LEFT-padded: padding slots never serve as keys, and RoPE positions come from the cumulative
  sum of the mask (`position = cumsum(mask) - 1`, the first real token of every row at 0), as
  transformers does with `position_ids`, so left padding does not shift positions. An explicit
  `positions=` [B, T] int overrides this.
- With `cache=`, the T tokens go to slots `cache.index .. cache.index+T-1` of every row; their
  positions continue from `cache.positions` (per row: the number of real tokens so far); a query
  attends every earlier-or-same slot holding a real token (`cache.mask`, updated with this call's
  mask). Decode steps usually pass mask None (a real token in every row).
- `KVCache` (giftjax/models/kv_cache.py) is a NamedTuple pytree: `k`, `v` [L, B, S, K, H] in the
  compute dtype; `mask` [B, S] bool; `index` () int32; `positions` [B] int32.
- Returns: without cache, logits [B, T, V] float32 (or hidden [B, T, D] in the compute dtype
  with `return_hidden=True`); with cache, `(logits or hidden, new_cache)`.
- Logits at padding positions are finite but meaningless (a padding query attends nothing real).
- The cache must have room: `cache.index + T <= S`. Writes use `lax.dynamic_update_slice`,
  which clamps an out-of-range start instead of failing, so an overfull cache silently
  overwrites its last slots (the index is traced, so this cannot be checked at trace time).

The model is an NNX module: `nnx.split(model)` gives (graphdef, state) for `jax.jit`; the
config is static. Layers are created with `nnx.vmap` (every layer parameter has a leading L
axis, logical name `layers`) and run with `nnx.scan`, so one layer is compiled whatever the
depth; `config.remat` picks the rematerialisation policy of each layer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from giftjax import sharding as sharding_lib
from giftjax.models import kv_cache
from giftjax.models.config import ModelConfig
from giftjax.models.kv_cache import KVCache
from giftjax.models.layers import (
    Block,
    RMSNorm,
    no_constraint,
    param,
    rope_cos_sin,
    rope_inv_freq,
)

_LAYERS = {nnx.PARTITION_NAME: "layers"}

_REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole layer in the backward pass
    # save matmul outputs (no recompute of any dot; most memory):
    "dots": jax.checkpoint_policies.dots_saveable,
    # save matmuls without batch dims, i.e. the projections, not attention scores:
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # save only the q/k/v projections (named with checkpoint_name in layers.Attention):
    "save_qkv_proj": jax.checkpoint_policies.save_only_these_names("qkv_proj"),
}


def _causal_mask(key_mask: jax.Array, start: jax.Array | int, t: int) -> jax.Array:
    """[B, 1, T, S] bool: query t (at slot start+t) sees slot s if s <= start+t and s is real."""
    s = key_mask.shape[1]
    q_slot = start + jnp.arange(t)  # [T]
    causal = jnp.arange(s)[None, :] <= q_slot[:, None]  # [T, S]
    return key_mask[:, None, None, :] & causal[None, None]


class Decoder(nnx.Module):
    """Llama 3 / Qwen2 / Qwen3 causal decoder (see the module docstring for the calling
    convention).

    Attributes:
      config: the ModelConfig (static).
      embed: [V, D] token embedding (logical axes vocab, embed).
      layers: the L stacked Blocks (every parameter has a leading `layers` axis).
      final_norm: RMSNorm [D].
      lm_head: [D, V] output projection, absent when `config.tie_word_embeddings`.
      activation_sharding: None, or (mesh, rules) set by `set_sharding`: activations are then
        constrained by logical names (batch, length, heads, kv_heads, mlp, vocab) inside jit.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.activation_sharding = None
        pd = jnp.dtype(config.param_dtype)
        d, v = config.hidden_size, config.vocab_size
        self.embed = param(rngs, (v, d), ("vocab", "embed"), pd)

        @nnx.split_rngs(splits=config.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata=_LAYERS)
        def make_layers(rngs: nnx.Rngs) -> Block:
            return Block(config, rngs=rngs)

        self.layers = make_layers(rngs)
        self.final_norm = RMSNorm(d, config.rms_norm_eps, ("embed",), param_dtype=pd, rngs=rngs)
        if not config.tie_word_embeddings:
            self.lm_head = param(rngs, (d, v), ("embed", "vocab"), pd)

    def set_sharding(self, mesh, rules) -> None:
        """Constrain activations by logical names on `mesh` with `rules` (a rules table or
        "fsdp"/"fsdp_tp"); None for mesh turns it off.

        Without constraints, GSPMD may resolve the FSDP conflict (rows sharded over fsdp,
        weights sharded over fsdp along embed) by gathering the *activations* and splitting
        the contraction; constraining activations to (batch, length) forces the intended
        all-gather of the weights. `load_hf(mesh=...)` and `sharding.shard_params` call this.
        """
        if mesh is None:
            self.activation_sharding = None
        else:
            self.activation_sharding = (mesh, sharding_lib.get_rules(rules))

    def _constrain(self, x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
        if self.activation_sharding is None:
            return x
        return sharding_lib.constrain(x, names, *self.activation_sharding)

    def lm_head_weight(self) -> jax.Array:
        """The output projection [D, V] in the parameter dtype (embedding.T when tied)."""
        if self.config.tie_word_embeddings:
            return self.embed[...].T
        return self.lm_head[...]

    def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        """An empty KVCache with `max_len` slots per row (dtype defaults to config.dtype)."""
        return kv_cache.init_cache(self.config, batch, max_len, dtype)

    def __call__(
        self,
        tokens: jax.Array,
        attention_mask: jax.Array | None = None,
        *,
        cache: KVCache | None = None,
        positions: jax.Array | None = None,
        return_hidden: bool = False,
    ):
        """Runs the decoder; see the module docstring.

        Args:
          tokens: [B, T] int token ids.
          attention_mask: [B, T] bool/int, 1 for real tokens, 0 for (left) padding; None = all 1.
          cache: a KVCache to write into and attend over (prefill or decode step).
          positions: [B, T] int RoPE positions; default from the cumulative sum of the mask.
          return_hidden: return the final-norm hidden states [B, T, D] instead of logits.

        Returns:
          logits [B, T, V] float32 (or hidden [B, T, D]); with cache, a pair (that, new cache).
        """
        c = self.config
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [B, T]; received shape {tokens.shape}.")
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"tokens must be integer ids; received dtype {tokens.dtype}.")
        b, t = tokens.shape
        if attention_mask is None:
            mask = jnp.ones((b, t), bool)
        elif attention_mask.shape != (b, t):
            raise ValueError(
                f"attention_mask must have the tokens' shape {(b, t)}; "
                f"received {attention_mask.shape}."
            )
        else:
            mask = attention_mask.astype(bool)
        if positions is not None and positions.shape != (b, t):
            raise ValueError(f"positions must be [B, T] = {(b, t)}; received {positions.shape}.")
        offset = jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1  # [B, T]

        if cache is None:
            if positions is None:
                positions = jnp.maximum(offset, 0)
            attn_mask = _causal_mask(mask, 0, t)  # [B, 1, T, T]
            kv, index = None, None
        else:
            if cache.mask.shape[0] != b:
                raise ValueError(f"cache has {cache.mask.shape[0]} rows; tokens have {b}.")
            if positions is None:
                positions = jnp.maximum(cache.positions[:, None] + offset, 0)
            index = cache.index
            key_mask = jax.lax.dynamic_update_slice(cache.mask, mask, (0, index))  # [B, S]
            attn_mask = _causal_mask(key_mask, index, t)  # [B, 1, T, S]
            kv = (cache.k, cache.v)

        dt = jnp.dtype(c.dtype)
        x = jnp.take(self.embed[...], tokens, axis=0).astype(dt)  # [B, T, D]
        x = self._constrain(x, ("batch", "length", None))
        cos, sin = rope_cos_sin(positions, rope_inv_freq(c))  # [B, T, H] each
        x, kv = self._run_layers(x, cos, sin, attn_mask, kv, index)
        x = self.final_norm(x)
        if return_hidden:
            out = x
        else:
            w = self.lm_head_weight().astype(dt)
            out = jnp.einsum("btd,dv->btv", x, w, preferred_element_type=jnp.float32)
            out = self._constrain(out, ("batch", "length", "vocab"))  # [B, T, V]
        if cache is None:
            return out
        new_cache = KVCache(
            k=kv[0],
            v=kv[1],
            mask=key_mask,
            index=index + t,
            positions=cache.positions + jnp.sum(mask, axis=1, dtype=jnp.int32),
        )
        return out, new_cache

    def _run_layers(self, x, cos, sin, attn_mask, kv, index):
        """Scans the L stacked layers; kv is None or ([L, B, S, K, H], [L, B, S, K, H])."""
        policy = self.config.remat
        constrain = self._constrain if self.activation_sharding is not None else no_constraint

        def layer(block, x, kv, i, layer_cache=None):
            return block(x, cos, sin, attn_mask, kv, index, constrain, i, layer_cache)

        if policy != "none":
            layer = nnx.remat(layer, policy=_REMAT_POLICIES[policy], prevent_cse=False)

        def body(carry, block):
            x, kv, i = carry
            x, kv = layer(block, x, kv, i)
            if kv is not None:
                kv = tuple(constrain(c, kv_cache.CACHE_AXES.k) for c in kv)  # [L, B, S, K, H]
            return x, kv, i + 1

        if kv is not None and x.shape[1] == 1:
            return self._run_layers_decode(layer, x, kv, index, constrain)

        scan = nnx.scan(
            body,
            in_axes=(nnx.Carry, 0),
            out_axes=nnx.Carry,
            transform_metadata=_LAYERS,
            graph=False,
        )
        x, kv, _ = scan((x, kv, jnp.zeros((), jnp.int32)), self.layers)
        return x, kv

    def _run_layers_decode(self, layer, x, kv, index, constrain):
        """One decode token (T = 1) through the layers, then its keys/values into the cache.

        Each layer's [B, S, K, H] cache goes in as a scan input (read only: the cache as it was
        before this step) and the token's key/value [B, 1, K, H] come out as scan outputs; one
        dynamic_update_slice per stacked cache then writes the [L, B, 1, K, H] slot, in place
        inside the sampler's while_loop. (Carrying the stacked cache through the scan and
        writing it per layer, then reading the layer back, made XLA copy whole caches every
        step, and dot_product_attention transposed each layer's cache: decode time grew with
        S.) Unrolling the layers instead of scanning brought the whole-cache copies back.
        """
        ck, cv = kv  # [L, B, S, K, H]

        def body(x, block, k_l, v_l):
            return layer(block, x, None, 0, (k_l, v_l))  # x, (k, v) [B, 1, K, H]

        scan = nnx.scan(
            body,
            in_axes=(nnx.Carry, 0, 0, 0),
            out_axes=(nnx.Carry, 0),
            transform_metadata=_LAYERS,
            graph=False,
        )
        x, (k_new, v_new) = scan(x, self.layers, ck, cv)  # [L, B, 1, K, H] each
        start = (0, 0, index, 0, 0)
        ck = jax.lax.dynamic_update_slice(ck, k_new, start)
        cv = jax.lax.dynamic_update_slice(cv, v_new, start)
        kv = tuple(constrain(c, kv_cache.CACHE_AXES.k) for c in (ck, cv))
        return x, kv
