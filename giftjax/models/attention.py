"""Grouped-query self-attention of the decoder, in three explicit modes.

Shape letters: B rows, T query tokens, S key slots (the cache length when a cache is used),
D model width, N query heads, K key/value heads, R = N/K query heads per key/value head,
H head dim, L layers.

- `Attention.__call__`: x attends over itself (training, scoring); no cache.
- `Attention.extend`: x's T keys/values are written into the stacked [L, B, S, K, H] cache at
  slots `index .. index+T-1` of layer `layer`, then x attends over all S slots (prefill, or
  any chunk of tokens).
- `Attention.decode`: ONE token per row attends over this layer's cache as it was before the
  step plus its own key/value (`decode_attention`); the caller writes the returned key/value
  into the cache after all layers.

The softmax runs in float32 with `scale = H^-1/2`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from giftjax.models.config import ModelConfig
from giftjax.models.norm import RMSNorm
from giftjax.models.params import Constrain, no_constraint, param
from giftjax.models.rope import apply_rope


def decode_attention(
    q: jax.Array,
    k_new: jax.Array,
    v_new: jax.Array,
    k_cache: jax.Array,
    v_cache: jax.Array,
    mask: jax.Array,
    index: jax.Array,
    scale: float,
) -> jax.Array:
    """Grouped-query attention of ONE new token per row over the cache and itself, no matmuls.

    `softmax_s(scale q.k_s) v_s` over the allowed slots s, per row and query head, query head
    n reading kv head `n // (N/K)` (GQA, Ainslie et al. 2023), in float32. The slots are the S
    slots of the cache *before* this token is written (slot `index` excluded) plus the token's
    own key and value, so the caller writes the new key/value into the stacked cache after the
    reads, and XLA updates the cache in place (reading the just-written buffer back made XLA
    copy the whole [L, B, S, K, H] cache every layer). Scores and the weighted sum are
    broadcast multiplies and reductions over the cache's own [B, S, K, H] layout instead of
    `dot_product_attention`, whose batched matmuls want [B, K, S, H] and made XLA transpose
    every layer's cache every step. A decode step then reads each cache slot once.

    Args:
      q: [B, 1, N, H] query (after RoPE).
      k_new, v_new: [B, 1, K, H] this token's key (after RoPE) and value.
      k_cache, v_cache: [B, S, K, H] this layer's cache before the write (a slice of the
        stacked cache is fine: XLA fuses the slice into the reductions).
      mask: [B, 1, 1, S] bool, True where the query may attend the slot (slot `index` is the
        new token itself). A row with no allowed slot gets a uniform average over all slots,
        as `jax.nn.dot_product_attention` does.
      index: () int32, the slot the new token goes to.
      scale: multiplies the scores (H^-1/2).

    Returns:
      [B, 1, N, H] in q's dtype.
    """
    b, t, n, h = q.shape
    s, kh = k_cache.shape[1], k_cache.shape[2]
    if t != 1:
        raise ValueError(f"decode_attention takes one query token; received q shape {q.shape}.")
    f32 = jnp.float32
    qg = q.reshape(b, 1, kh, n // kh, h).astype(f32)  # [B, 1, K, R, H]
    k_new = k_new.astype(f32)[:, :, :, None, :]  # [B, 1, K, 1, H]
    v_new = v_new.astype(f32)[:, :, :, None, :]
    neg = jnp.finfo(f32).min
    keep = mask[:, 0, 0, :] & (jnp.arange(s) != index)[None]  # [B, S]: old slots only
    keep_self = jax.lax.dynamic_index_in_dim(mask[:, 0, 0, :], index, axis=1)  # [B, 1]
    # Block-diagonal queries [B, K*H, K*R] (zero off the own-kv-head blocks), so that both
    # products are plain batched matmuls over the cache's [B, S, K*H] rows (no transpose).
    r = n // kh
    eye = jnp.eye(kh, dtype=f32)
    q_bd = jnp.einsum("bkrh,kj->bkhjr", qg[:, 0], eye).reshape(b, kh * h, kh * r)
    kc = k_cache.reshape(b, s, kh * h).astype(f32)
    scores = jnp.einsum("bsx,bxy->bsy", kc, q_bd).reshape(b, s, kh, r) * scale  # [B, S, K, R]
    scores = jnp.where(keep[:, :, None, None], scores, neg)
    self_score = jnp.sum(qg * k_new, axis=-1) * scale  # [B, 1, K, R]
    self_score = jnp.where(keep_self[:, :, None, None], self_score, neg)
    top = jnp.maximum(jnp.max(scores, axis=1, keepdims=True), self_score)  # [B, 1, K, R]
    w = jnp.exp(scores - top)  # [B, S, K, R]
    w_self = jnp.exp(self_score - top)  # [B, 1, K, R]
    denom = jnp.sum(w, axis=1, keepdims=True) + w_self  # [B, 1, K, R]
    probs, p_self = w / denom, w_self / denom  # softmax over the S old slots and the token
    vc = v_cache.reshape(b, s, kh * h).astype(f32)
    out = jnp.einsum("bsy,bsx->byx", probs.reshape(b, s, kh * r), vc)  # [B, K*R, K*H]
    out = jnp.einsum("bkrjh,kj->bkrh", out.reshape(b, kh, r, kh, h), eye)[:, None]
    out = out + p_self[..., None] * v_new  # [B, 1, K, R, H]
    return out.reshape(b, 1, n, h).astype(q.dtype)


class Attention(nnx.Module):
    """Grouped-query self-attention with RoPE, optional q/k/v/o bias and q/k RMSNorm.

    Weights: q [D, N, H], k and v [D, K, H], o [N, H, D]. See the module docstring for the
    three modes (`__call__`, `extend`, `decode`); they share the projections (`_qkv`) and the
    output projection (`_out`).
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        c = config
        pd = jnp.dtype(c.param_dtype)
        d, n, k, h = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
        self.config = c
        self.q_proj = param(rngs, (d, n, h), ("embed", "heads", "head_dim"), pd)
        self.k_proj = param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), pd)
        self.v_proj = param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), pd)
        self.o_proj = param(rngs, (n, h, d), ("heads", "head_dim", "embed"), pd)
        zeros = jax.nn.initializers.zeros
        if c.qkv_bias:
            self.q_bias = param(rngs, (n, h), ("heads", "head_dim"), pd, zeros)
            self.k_bias = param(rngs, (k, h), ("kv_heads", "head_dim"), pd, zeros)
            self.v_bias = param(rngs, (k, h), ("kv_heads", "head_dim"), pd, zeros)
        if c.o_bias:
            self.o_bias = param(rngs, (d,), ("embed",), pd, zeros)
        if c.qk_norm:
            self.q_norm = RMSNorm(h, c.rms_norm_eps, ("head_dim",), param_dtype=pd, rngs=rngs)
            self.k_norm = RMSNorm(h, c.rms_norm_eps, ("head_dim",), param_dtype=pd, rngs=rngs)

    def _qkv(
        self, x: jax.Array, cos: jax.Array, sin: jax.Array, constrain: Constrain
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x [B, T, D] -> q [B, T, N, H], k and v [B, T, K, H] (biases, q/k norm, RoPE)."""
        c, dt = self.config, x.dtype
        q = jnp.einsum("btd,dnh->btnh", x, self.q_proj[...].astype(dt))  # [B, T, N, H]
        k = jnp.einsum("btd,dkh->btkh", x, self.k_proj[...].astype(dt))  # [B, T, K, H]
        v = jnp.einsum("btd,dkh->btkh", x, self.v_proj[...].astype(dt))  # [B, T, K, H]
        # Named so that remat="save_qkv_proj" keeps these projections for the backward pass.
        q, k, v = (checkpoint_name(a, "qkv_proj") for a in (q, k, v))
        if c.qkv_bias:
            q = q + self.q_bias[...].astype(dt)
            k = k + self.k_bias[...].astype(dt)
            v = v + self.v_bias[...].astype(dt)
        if c.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q = constrain(q, ("batch", "length", "heads", "head_dim"))
        k = constrain(k, ("batch", "length", "kv_heads", "head_dim"))
        v = constrain(v, ("batch", "length", "kv_heads", "head_dim"))
        return q, k, v

    def _out(self, out: jax.Array, constrain: Constrain) -> jax.Array:
        """Attention output [B, T, N, H] -> [B, T, D] through the output projection."""
        dt = out.dtype
        out = constrain(out, ("batch", "length", "heads", "head_dim"))  # [B, T, N, H]
        y = jnp.einsum("btnh,nhd->btd", out, self.o_proj[...].astype(dt))  # [B, T, D]
        if self.config.o_bias:
            y = y + self.o_bias[...].astype(dt)
        return y

    def __call__(
        self,
        x: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        mask: jax.Array,
        *,
        constrain: Constrain = no_constraint,
    ) -> jax.Array:
        """Attention of x over itself (no cache).

        Args:
          x: [B, T, D] in the compute dtype.
          cos, sin: [B, T, H] RoPE tables of the T positions.
          mask: [B, 1, T, T] bool, True where query t may attend key t'.
          constrain: applies a sharding constraint by logical names to an activation.

        Returns:
          [B, T, D].
        """
        q, k, v = self._qkv(x, cos, sin, constrain)
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=self.config.head_dim**-0.5)
        return self._out(out, constrain)

    def shared_prefix(
        self,
        xp: jax.Array,
        xs: jax.Array,
        rope_p: tuple[jax.Array, jax.Array],
        rope_s: tuple[jax.Array, jax.Array],
        mask_p: jax.Array,
        mask_s: jax.Array,
        *,
        group_size: int,
        constrain: Constrain = no_constraint,
    ) -> tuple[jax.Array, jax.Array]:
        """Attention of rows that share a prefix in groups of G (no cache, one call).

        Row i of the batch is prefix ``i // G`` followed by suffix i. The prefixes attend
        over themselves; each suffix attends over its group's prefix keys/values (computed
        once per group, repeated G times) and its own. Same result, up to float rounding, as
        `__call__` on the concatenated rows.

        Args:
          xp: [P, Tp, D] prefix inputs, in the compute dtype.
          xs: [P*G, Ts, D] suffix inputs.
          rope_p, rope_s: (cos, sin) RoPE tables, [P, Tp, H] and [P*G, Ts, H].
          mask_p: [P, 1, Tp, Tp] bool, the prefixes' causal mask.
          mask_s: [P*G, 1, Ts, Tp+Ts] bool, the suffixes' mask over prefix then suffix keys.
          group_size: G.
          constrain: applies a sharding constraint by logical names to an activation.

        Returns:
          ([P, Tp, D], [P*G, Ts, D]).
        """
        scale = self.config.head_dim**-0.5
        qp, kp, vp = self._qkv(xp, *rope_p, constrain)
        qs, ks, vs = self._qkv(xs, *rope_s, constrain)
        out_p = jax.nn.dot_product_attention(qp, kp, vp, mask=mask_p, scale=scale)
        k_all = jnp.concatenate([jnp.repeat(kp, group_size, axis=0), ks], axis=1)
        v_all = jnp.concatenate([jnp.repeat(vp, group_size, axis=0), vs], axis=1)
        k_all = constrain(k_all, ("batch", "length", "kv_heads", "head_dim"))  # [P*G, Tp+Ts, K, H]
        v_all = constrain(v_all, ("batch", "length", "kv_heads", "head_dim"))
        out_s = jax.nn.dot_product_attention(qs, k_all, v_all, mask=mask_s, scale=scale)
        return self._out(out_p, constrain), self._out(out_s, constrain)

    def extend(
        self,
        x: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        mask: jax.Array,
        *,
        cache: tuple[jax.Array, jax.Array],
        index: jax.Array,
        layer: jax.Array | int,
        constrain: Constrain = no_constraint,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """Writes x's keys/values into the whole cache, then attends over that layer's S slots.

        Args:
          x: [B, T, D] in the compute dtype.
          cos, sin: [B, T, H] RoPE tables of the T query positions.
          mask: [B, 1, T, S] bool, True where query t may attend key slot s.
          cache: (k, v), each [L, B, S, K, H]: the whole stacked cache. x's keys and values
            go to layer `layer`, slots index .. index+T-1.
          index: () int32 slot of x's first token.
          layer: () int32 index of this layer in the cache.
          constrain: applies a sharding constraint by logical names to an activation.

        Returns:
          ([B, T, D], the updated whole cache (k, v)).
        """
        dt = x.dtype
        q, k, v = self._qkv(x, cos, sin, constrain)
        # Write only this call's T slots into the stacked [L, B, S, K, H] cache (in place
        # inside a loop), then read this layer's [B, S, K, H] back.
        ck, cv = cache
        start = (layer, 0, index, 0, 0)
        ck = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype)[None], start)
        cv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype)[None], start)
        k = jax.lax.dynamic_index_in_dim(ck, layer, keepdims=False).astype(dt)
        v = jax.lax.dynamic_index_in_dim(cv, layer, keepdims=False).astype(dt)
        k = constrain(k, ("batch", "length", "kv_heads", "head_dim"))  # [B, S, K, H]
        v = constrain(v, ("batch", "length", "kv_heads", "head_dim"))
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=self.config.head_dim**-0.5)
        return self._out(out, constrain), (ck, cv)

    def decode(
        self,
        x: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        mask: jax.Array,
        *,
        layer_cache: tuple[jax.Array, jax.Array],
        index: jax.Array,
        constrain: Constrain = no_constraint,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """One new token per row over this layer's cache as it was, plus its own key/value.

        Args:
          x: [B, 1, D] in the compute dtype.
          cos, sin: [B, 1, H] RoPE tables of the token's position.
          mask: [B, 1, 1, S] bool, True where the token may attend slot s (slot `index` is
            the token itself).
          layer_cache: (k, v), each [B, S, K, H]: this layer's cache BEFORE this step.
          index: () int32, the slot the token goes to.
          constrain: applies a sharding constraint by logical names to an activation.

        Returns:
          ([B, 1, D], the token's (key, value), each [B, 1, K, H] in the cache dtype, for the
          caller to write at slot `index`).
        """
        q, k, v = self._qkv(x, cos, sin, constrain)
        # The caller writes (k, v) into the stacked cache after all layers (in place, one slot).
        k_old, v_old = layer_cache  # [B, S, K, H] each
        out = decode_attention(q, k, v, k_old, v_old, mask, index, self.config.head_dim**-0.5)
        new_kv = (k.astype(k_old.dtype), v.astype(v_old.dtype))  # [B, 1, K, H]
        return self._out(out, constrain), new_kv
