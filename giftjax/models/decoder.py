"""The Llama/Qwen decoder in Flax NNX, with a full-sequence path and a KV-cache path.

Calling convention (shape letters: B rows, T tokens in this call, S cache slots, V vocab,
D width, L layers, K kv heads, H head dim):

```
model = Decoder(config, rngs=nnx.Rngs(0))        # or giftjax.models.load_hf(path, ...)

# 1. Full forward (training, scoring):
logits = model(tokens, attention_mask)             # tokens [B, T] int, mask [B, T] (1 = real)
hidden = model(tokens, attention_mask, return_hidden=True)   # [B, T, D] after the final norm
lm_head = model.lm_head_weight()                   # [D, V] (embedding.T when tied)

# 2. Generation with a preallocated cache:
cache = model.init_cache(batch=B, max_len=S)       # KVCache, all slots empty
logits, cache = model(prompt_ids, prompt_mask, cache=cache)      # prefill, T = prompt length
logits, cache = model.decode_step(next_ids[:, None], cache=cache)  # decode, T = 1
# ... repeat decode; each call writes T slots.
```

- `model(tokens, mask, cache=cache)` takes any T >= 1 (prefill, a chunk, or one token): every
  layer writes the T keys/values into the stacked cache and attends over all S slots.
  `model.decode_step(tokens, mask, cache=cache)` is the fast path for exactly one token per row
  (T = 1, same arguments and results, equal up to float rounding): every layer reads its cache
  as it was and the L new keys/values are written once after the last layer, so a step reads
  each cache slot once and XLA updates the cache in place (no whole-cache copy per layer).

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
  with `return_hidden=True`); with cache (and from `decode_step`), `(logits or hidden,
  new_cache)`.
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
from giftjax.models.layers import Block
from giftjax.models.norm import RMSNorm
from giftjax.models.params import no_constraint, param
from giftjax.models.rope import rope_cos_sin, rope_inv_freq

_LAYERS = {nnx.PARTITION_NAME: "layers"}

_REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole layer in the backward pass
    # save matmul outputs (no recompute of any dot; most memory):
    "dots": jax.checkpoint_policies.dots_saveable,
    # save matmuls without batch dims, i.e. the projections, not attention scores:
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # save only the q/k/v projections (named with checkpoint_name in Attention._qkv):
    "save_qkv_proj": jax.checkpoint_policies.save_only_these_names("qkv_proj"),
}


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
        """Runs the decoder over T tokens; see the module docstring.

        Args:
          tokens: [B, T] int token ids.
          attention_mask: [B, T] bool/int, 1 for real tokens, 0 for (left) padding; None = all 1.
          cache: a KVCache to write the T tokens into and attend over (prefill or any chunk).
          positions: [B, T] int RoPE positions; default from the cumulative sum of the mask.
          return_hidden: return the final-norm hidden states [B, T, D] instead of logits.

        Returns:
          logits [B, T, V] float32 (or hidden [B, T, D]); with cache, a pair (that, new cache).
        """
        mask = self._check_inputs(tokens, attention_mask, positions)
        if cache is None:
            if positions is None:
                positions = jnp.maximum(kv_cache.offsets(mask), 0)
            attn_mask = kv_cache.causal_mask(mask, 0, tokens.shape[1])  # [B, 1, T, T]
            x, cos, sin = self._embed(tokens, positions)
            x = self._run_layers(x, cos, sin, attn_mask)
            return self._head(x, return_hidden)
        key_mask, attn_mask, positions = kv_cache.write_masks(cache, mask, positions)
        x, cos, sin = self._embed(tokens, positions)
        x, kv = self._run_layers_extend(x, cos, sin, attn_mask, (cache.k, cache.v), cache.index)
        return self._head(x, return_hidden), kv_cache.advance(cache, kv, key_mask, mask)

    def shared_prefix_hidden(
        self,
        prefix: jax.Array,
        prefix_mask: jax.Array,
        suffix: jax.Array,
        suffix_mask: jax.Array,
        *,
        group_size: int,
    ) -> tuple[jax.Array, jax.Array]:
        """Final hidden states of rows that share a prefix in groups, each prefix run once.

        Row i is `prefix[i // G] ++ suffix[i]` (G = group_size, groups contiguous, as the G
        samples of one prompt in an RL batch). The prefix tokens do not depend on what
        follows them (causal attention), so they go through the layers once per group instead
        of G times; the suffixes attend over their group's prefix keys/values. The result
        equals, up to float rounding, `model(concat, concat_mask, return_hidden=True)` split
        at Tp: positions, masks and attention are those of the concatenated rows. In the
        trainer's log-prob passes (prompt Tp, response M, G samples) this saves
        `(G - 1) / G * Tp / (Tp + M)` of the decoder body's work, forward and backward.

        Args:
          prefix: [P, Tp] int token ids (left-padded prompts).
          prefix_mask: [P, Tp] bool/int, 1 for real tokens.
          suffix: [P*G, Ts] int token ids (Ts >= 1).
          suffix_mask: [P*G, Ts] bool/int, 1 for real tokens.
          group_size: G >= 1.

        Returns:
          (prefix hidden [P, Tp, D], suffix hidden [P*G, Ts, D]), final-normed, compute dtype.
        """
        g = int(group_size)
        p, tp = prefix.shape if prefix.ndim == 2 else (None, None)
        if p is None or suffix.ndim != 2 or suffix.shape[0] != p * g or g < 1:
            raise ValueError(
                f"prefix must be [P, Tp] and suffix [P*G, Ts] with G = group_size = "
                f"{group_size}; received {prefix.shape} and {suffix.shape}."
            )
        pmask = self._check_inputs(prefix, prefix_mask, None)  # [P, Tp]
        smask = self._check_inputs(suffix, suffix_mask, None)  # [P*G, Ts]
        ts = suffix.shape[1]
        key_mask_s = jnp.concatenate([jnp.repeat(pmask, g, axis=0), smask], axis=1)
        mask_p = kv_cache.causal_mask(pmask, 0, tp)  # [P, 1, Tp, Tp]
        mask_s = kv_cache.causal_mask(key_mask_s, tp, ts)  # [P*G, 1, Ts, Tp+Ts]
        prefix_len = jnp.repeat(jnp.sum(pmask, axis=1, dtype=jnp.int32), g)  # [P*G]
        xp, cos_p, sin_p = self._embed(prefix, jnp.maximum(kv_cache.offsets(pmask), 0))
        pos_s = jnp.maximum(prefix_len[:, None] + kv_cache.offsets(smask), 0)  # [P*G, Ts]
        xs, cos_s, sin_s = self._embed(suffix, pos_s)
        constrain = self._layer_constrain()

        def layer(block, xp, xs):
            return block.shared_prefix(
                xp, xs, (cos_p, sin_p), (cos_s, sin_s), mask_p, mask_s,
                group_size=g, constrain=constrain,
            )  # fmt: skip

        layer = self._remat(layer)

        xp, xs = self._scan_layers(lambda carry, block: layer(block, *carry), (xp, xs))
        return self.final_norm(xp), self.final_norm(xs)

    def decode_step(
        self,
        tokens: jax.Array,
        attention_mask: jax.Array | None = None,
        *,
        cache: KVCache,
        positions: jax.Array | None = None,
        return_hidden: bool = False,
    ):
        """One decode step: ONE token per row into the cache (the sampler's inner loop).

        Same arguments and results as `__call__` with `cache=` and T = 1, through the decode
        path (see the module docstring and `_run_layers_decode`).

        Args:
          tokens: [B, 1] int token ids.
          attention_mask: [B, 1] bool/int, or None (a real token in every row).
          cache: the KVCache to attend over and write slot `cache.index` of.
          positions: [B, 1] int RoPE positions; default `cache.positions` (for real tokens).
          return_hidden: return the final-norm hidden states [B, 1, D] instead of logits.

        Returns:
          (logits [B, 1, V] float32 or hidden [B, 1, D], new cache).
        """
        if tokens.ndim != 2 or tokens.shape[1] != 1:
            raise ValueError(
                f"decode_step takes one token per row, tokens [B, 1]; received shape "
                f"{tokens.shape}. Use model(tokens, mask, cache=cache) for longer chunks."
            )
        mask = self._check_inputs(tokens, attention_mask, positions)
        key_mask, attn_mask, positions = kv_cache.write_masks(cache, mask, positions)
        x, cos, sin = self._embed(tokens, positions)
        x, kv = self._run_layers_decode(x, cos, sin, attn_mask, (cache.k, cache.v), cache.index)
        return self._head(x, return_hidden), kv_cache.advance(cache, kv, key_mask, mask)

    def _check_inputs(
        self, tokens: jax.Array, attention_mask: jax.Array | None, positions: jax.Array | None
    ) -> jax.Array:
        """Validates the shapes and dtypes of a call; returns the bool mask [B, T]."""
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [B, T]; received shape {tokens.shape}.")
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"tokens must be integer ids; received dtype {tokens.dtype}.")
        b, t = tokens.shape
        if positions is not None and positions.shape != (b, t):
            raise ValueError(f"positions must be [B, T] = {(b, t)}; received {positions.shape}.")
        if attention_mask is None:
            return jnp.ones((b, t), bool)
        if attention_mask.shape != (b, t):
            raise ValueError(
                f"attention_mask must have the tokens' shape {(b, t)}; "
                f"received {attention_mask.shape}."
            )
        return attention_mask.astype(bool)

    def _embed(
        self, tokens: jax.Array, positions: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Token embeddings [B, T, D] in the compute dtype, and RoPE cos, sin [B, T, H]."""
        c = self.config
        x = jnp.take(self.embed[...], tokens, axis=0).astype(jnp.dtype(c.dtype))  # [B, T, D]
        x = self._constrain(x, ("batch", "length", None))
        cos, sin = rope_cos_sin(positions, rope_inv_freq(c))  # [B, T, H] each
        return x, cos, sin

    def lm_head_logits(self, hidden: jax.Array) -> jax.Array:
        """Logits [..., V] float32 of final-normed hidden states [..., D]: the compute-dtype
        matmul with `lm_head_weight()`, accumulated in float32 (the one LM head; the sampler
        projects only the last prompt column with it)."""
        w = self.lm_head_weight().astype(jnp.dtype(self.config.dtype))  # [D, V]
        return jnp.einsum("...d,dv->...v", hidden, w, preferred_element_type=jnp.float32)

    def _head(self, x: jax.Array, return_hidden: bool) -> jax.Array:
        """Final norm, then logits [B, T, V] float32 (or the normed hidden [B, T, D])."""
        x = self.final_norm(x)
        if return_hidden:
            return x
        return self._constrain(self.lm_head_logits(x), ("batch", "length", "vocab"))

    def _layer_constrain(self):
        return self._constrain if self.activation_sharding is not None else no_constraint

    def _remat(self, fn):
        """fn under the configured rematerialisation policy (unchanged for remat="none")."""
        policy = self.config.remat
        if policy == "none":
            return fn
        return nnx.remat(fn, policy=_REMAT_POLICIES[policy], prevent_cse=False)

    def _scan_layers(self, body, carry, *per_layer, out_axes=nnx.Carry):
        """`nnx.scan` of `body(carry, block, *per_layer[l])` over the L stacked layers and the
        leading L axis of each of `per_layer`: one layer is compiled whatever the depth."""
        scan = nnx.scan(
            body,
            in_axes=(nnx.Carry, 0, *(0 for _ in per_layer)),
            out_axes=out_axes,
            transform_metadata=_LAYERS,
            graph=False,
        )
        return scan(carry, self.layers, *per_layer)

    def _run_layers(self, x, cos, sin, attn_mask):
        """Scans the L stacked layers over x [B, T, D] (no cache)."""
        constrain = self._layer_constrain()
        layer = self._remat(lambda block, x: block(x, cos, sin, attn_mask, constrain=constrain))
        return self._scan_layers(lambda x, block: layer(block, x), x)

    def _run_layers_extend(self, x, cos, sin, attn_mask, kv, index):
        """Scans the L layers over x [B, T, D], each writing its T slots into the stacked
        cache kv = ([L, B, S, K, H], [L, B, S, K, H]) carried through the scan."""
        constrain = self._layer_constrain()

        def layer(block, x, kv, i):
            return block.extend(
                x, cos, sin, attn_mask, cache=kv, index=index, layer=i, constrain=constrain
            )

        # No remat on the cache paths: they run in the sampler, never under a gradient, where
        # recomputation saves nothing (and nnx.remat inside the decode scan raised
        # TraceContextError, so a model with remat != "none" could not sample).

        def body(carry, block):
            x, kv, i = carry
            x, kv = layer(block, x, kv, i)
            kv = tuple(constrain(c, kv_cache.CACHE_AXES.k) for c in kv)  # [L, B, S, K, H]
            return x, kv, i + 1

        x, kv, _ = self._scan_layers(body, (x, kv, jnp.zeros((), jnp.int32)))
        return x, kv

    def _run_layers_decode(self, x, cos, sin, attn_mask, kv, index):
        """One decode token (T = 1) through the layers, then its keys/values into the cache.

        Each layer's [B, S, K, H] cache goes in as a scan input (read only: the cache as it was
        before this step) and the token's key/value [B, 1, K, H] come out as scan outputs; one
        dynamic_update_slice per stacked cache then writes the [L, B, 1, K, H] slot, in place
        inside the sampler's while_loop. (Carrying the stacked cache through the scan and
        writing it per layer, then reading the layer back, made XLA copy whole caches every
        step, and dot_product_attention transposed each layer's cache: decode time grew with
        S.) Unrolling the layers instead of scanning brought the whole-cache copies back.
        """
        constrain = self._layer_constrain()
        ck, cv = kv  # [L, B, S, K, H]

        def body(x, block, k_l, v_l):  # no remat here either (see _run_layers_extend)
            return block.decode(
                x, cos, sin, attn_mask, layer_cache=(k_l, v_l), index=index, constrain=constrain
            )  # x, (k, v) [B, 1, K, H]

        x, (k_new, v_new) = self._scan_layers(body, x, ck, cv, out_axes=(nnx.Carry, 0))
        start = (0, 0, index, 0, 0)
        ck = jax.lax.dynamic_update_slice(ck, k_new, start)
        cv = jax.lax.dynamic_update_slice(cv, v_new, start)
        kv = tuple(constrain(c, kv_cache.CACHE_AXES.k) for c in (ck, cv))
        return x, kv
