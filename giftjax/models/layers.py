"""Building blocks of the Llama/Qwen decoder: RMSNorm, RoPE, attention, SwiGLU MLP, one layer.

Shape letters: B batch, T query length, S key length (the cache length when decoding),
D model width, N query heads, K key/value heads, H head dim, F MLP width.

Every parameter is an `nnx.Param` whose `out_sharding` metadata holds *logical* axis names
(`embed`, `vocab`, `heads`, `kv_heads`, `head_dim`, `mlp`; the layer stack adds `layers`);
`giftjax.sharding` maps them to mesh axes with a rules table. `eager_sharding=False` keeps flax
from placing the value at creation (logical names are not mesh axes).

Parameters live in `param_dtype` (float32); each matmul casts them to the activations' dtype
(the compute dtype, bfloat16 by default). Norms, RoPE angles and the attention softmax run in
float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from giftjax.models.config import ModelConfig

_INIT = jax.nn.initializers.normal(stddev=0.02)


Constrain = Callable[[jax.Array, tuple[str | None, ...]], jax.Array]


def no_constraint(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
    """The default activation constraint: none (see Decoder.set_sharding)."""
    del names
    return x


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


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm in float32: `x / sqrt(mean(x^2) + eps) * weight`, cast back to x's dtype.

    Zhang & Sennrich, "Root Mean Square Layer Normalization" (2019). The weight multiplies
    after the cast back, as transformers' LlamaRMSNorm does.

    Args:
      x: [..., D].
      weight: [D].
      eps: added to the mean square.
    """
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight.astype(x.dtype) * y.astype(x.dtype)


class RMSNorm(nnx.Module):
    """RMSNorm over the last axis, weight initialised to ones."""

    def __init__(self, dim: int, eps: float, names: tuple[str, ...], *, param_dtype, rngs):
        del rngs
        self.eps = eps
        self.weight = nnx.Param(
            jnp.ones((dim,), param_dtype), out_sharding=names, eager_sharding=False
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return rms_norm(x, self.weight[...], self.eps)


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
    """RoPE inverse frequencies [H/2] (float32), with llama3 scaling when configured.

    Default (Su et al., "RoFormer", 2021): `inv_freq_i = theta^(-2i/H)`.
    llama3 (Llama 3.1): wavelengths `2 pi / inv_freq` longer than `orig / low_freq_factor` are
    divided by `factor`, shorter than `orig / high_freq_factor` kept, and the band between
    interpolated with `s = (orig / wavelen - low) / (high - low)`:
    `(1 - s) inv_freq / factor + s inv_freq`. Computed in float32 as transformers does.
    """
    h = config.head_dim
    exponent = np.arange(0, h, 2, dtype=np.int64).astype(np.float32) / np.float32(h)
    inv_freq = (1.0 / (np.float32(config.rope_theta) ** exponent)).astype(np.float32)
    if config.rope_type == "llama3":
        factor = config.rope_factor
        low, high = config.rope_low_freq_factor, config.rope_high_freq_factor
        orig = config.rope_original_max_len
        wavelen = (2 * math.pi / inv_freq).astype(np.float32)
        scaled = np.where(wavelen > orig / low, inv_freq / factor, inv_freq).astype(np.float32)
        smooth = ((orig / wavelen - low) / (high - low)).astype(np.float32)
        smoothed = ((1 - smooth) * scaled / factor + smooth * scaled).astype(np.float32)
        medium = ~(wavelen < orig / high) & ~(wavelen > orig / low)
        inv_freq = np.where(medium, smoothed, scaled).astype(np.float32)
    return inv_freq


def rope_cos_sin(positions: jax.Array, inv_freq: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """cos and sin tables [B, T, H] (float32) for integer `positions` [B, T].

    Uses the half-split layout of transformers (`cat(freqs, freqs)`), not interleaved pairs.
    """
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, T, H/2]
    angles = jnp.concatenate([angles, angles], axis=-1)  # [B, T, H]
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates `x` [B, T, heads, H] by the angles in cos/sin [B, T, H]: `x cos + rot(x) sin`,
    `rot([x1, x2]) = [-x2, x1]` (half split)."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos = cos[:, :, None, :].astype(x.dtype)
    sin = sin[:, :, None, :].astype(x.dtype)
    return x * cos + rotated * sin


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
    qg = q.reshape(b, 1, kh, n // kh, h).astype(f32)  # [B, 1, K, G, H]
    k_new = k_new.astype(f32)[:, :, :, None, :]  # [B, 1, K, 1, H]
    v_new = v_new.astype(f32)[:, :, :, None, :]
    neg = jnp.finfo(f32).min
    keep = mask[:, 0, 0, :] & (jnp.arange(s) != index)[None]  # [B, S]: old slots only
    keep_self = jax.lax.dynamic_index_in_dim(mask[:, 0, 0, :], index, axis=1)  # [B, 1]
    # Block-diagonal queries [B, K*H, K*G] (zero off the own-kv-head blocks), so that both
    # products are plain batched matmuls over the cache's [B, S, K*H] rows (no transpose).
    g = n // kh
    eye = jnp.eye(kh, dtype=f32)
    q_bd = jnp.einsum("bkgh,kj->bkhjg", qg[:, 0], eye).reshape(b, kh * h, kh * g)
    kc = k_cache.reshape(b, s, kh * h).astype(f32)
    scores = jnp.einsum("bsx,bxy->bsy", kc, q_bd).reshape(b, s, kh, g) * scale  # [B, S, K, G]
    scores = jnp.where(keep[:, :, None, None], scores, neg)
    self_score = jnp.sum(qg * k_new, axis=-1) * scale  # [B, 1, K, G]
    self_score = jnp.where(keep_self[:, :, None, None], self_score, neg)
    top = jnp.maximum(jnp.max(scores, axis=1, keepdims=True), self_score)  # [B, 1, K, G]
    w = jnp.exp(scores - top)  # [B, S, K, G]
    w_self = jnp.exp(self_score - top)  # [B, 1, K, G]
    denom = jnp.sum(w, axis=1, keepdims=True) + w_self  # [B, 1, K, G]
    probs, p_self = w / denom, w_self / denom  # softmax over the S old slots and the token
    vc = v_cache.reshape(b, s, kh * h).astype(f32)
    out = jnp.einsum("bsy,bsx->byx", probs.reshape(b, s, kh * g), vc)  # [B, K*G, K*H]
    out = jnp.einsum("bkgjh,kj->bkgh", out.reshape(b, kh, g, kh, h), eye)[:, None]
    out = out + p_self[..., None] * v_new  # [B, 1, K, G, H]
    return out.reshape(b, 1, n, h).astype(q.dtype)


class Attention(nnx.Module):
    """Grouped-query self-attention with RoPE, optional q/k/v/o bias and q/k RMSNorm.

    Weights: q [D, N, H], k and v [D, K, H], o [N, H, D]; the softmax runs in float32 inside
    `jax.nn.dot_product_attention`, with `scale = H^-1/2` and a boolean mask [B, 1, T, S].
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

    def __call__(
        self,
        x: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        mask: jax.Array,
        cache: tuple[jax.Array, jax.Array] | None = None,
        index: jax.Array | None = None,
        constrain: Constrain = no_constraint,
        layer: jax.Array | int = 0,
        layer_cache: tuple[jax.Array, jax.Array] | None = None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        """Attention of x over itself, or over the cache after writing x's keys into it.

        Args:
          x: [B, T, D] in the compute dtype.
          cos, sin: [B, T, H] RoPE tables of the T query positions.
          mask: [B, 1, T, S] bool, True where query t may attend key slot s.
          cache: optional (k, v), each [L, B, S, K, H]: the whole cache. x's keys and values
            are written to layer `layer`, slots index .. index+T-1, and attention runs over
            all S slots of that layer.
          index: () int32 slot of x's first token (with cache only).
          layer: () int32 index of this layer in the cache.
          layer_cache: optional (k, v), each [B, S, K, H]: this layer's cache BEFORE this
            call, for a one-token decode step (T = 1; `cache` is then None). Attention runs
            over its slots other than `index` plus x's own key/value (`decode_attention`),
            and the returned pair is x's (key, value), each [B, 1, K, H], for the caller to
            write at slot `index`.
          constrain: applies a sharding constraint by logical names to an activation.

        Returns:
          ([B, T, D], the updated whole-cache (k, v) or None).
        """
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
        new_cache = None
        if layer_cache is not None:
            # Decode: attend over this layer's cache as it was plus the new token; the caller
            # writes (k, v) into the stacked cache after all layers (in place, one slot).
            k_old, v_old = layer_cache  # [B, S, K, H] each
            out = decode_attention(q, k, v, k_old, v_old, mask, index, c.head_dim**-0.5)
            new_cache = (k.astype(k_old.dtype), v.astype(v_old.dtype))  # [B, 1, K, H]
        elif cache is not None:
            # Write only this call's T slots into the stacked [L, B, S, K, H] cache (in place
            # inside a loop), then read this layer's [B, S, K, H] back.
            ck, cv = cache
            start = (layer, 0, index, 0, 0)
            ck = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype)[None], start)
            cv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype)[None], start)
            new_cache = (ck, cv)
            k = jax.lax.dynamic_index_in_dim(ck, layer, keepdims=False).astype(dt)
            v = jax.lax.dynamic_index_in_dim(cv, layer, keepdims=False).astype(dt)
            k = constrain(k, ("batch", "length", "kv_heads", "head_dim"))  # [B, S, K, H]
            v = constrain(v, ("batch", "length", "kv_heads", "head_dim"))
        if layer_cache is None:
            out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=c.head_dim**-0.5)
        out = constrain(out, ("batch", "length", "heads", "head_dim"))  # [B, T, N, H]
        y = jnp.einsum("btnh,nhd->btd", out, self.o_proj[...].astype(dt))  # [B, T, D]
        if c.o_bias:
            y = y + self.o_bias[...].astype(dt)
        return y, new_cache


class MLP(nnx.Module):
    """SwiGLU MLP (Shazeer, "GLU Variants Improve Transformer", 2020):
    `down(silu(x gate) * (x up))`, gate and up [D, F], down [F, D]."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        c = config
        pd = jnp.dtype(c.param_dtype)
        d, f = c.hidden_size, c.intermediate_size
        self.config = c
        self.gate_proj = param(rngs, (d, f), ("embed", "mlp"), pd)
        self.up_proj = param(rngs, (d, f), ("embed", "mlp"), pd)
        self.down_proj = param(rngs, (f, d), ("mlp", "embed"), pd)
        if c.mlp_bias:
            zeros = jax.nn.initializers.zeros
            self.gate_bias = param(rngs, (f,), ("mlp",), pd, zeros)
            self.up_bias = param(rngs, (f,), ("mlp",), pd, zeros)
            self.down_bias = param(rngs, (d,), ("embed",), pd, zeros)

    def __call__(self, x: jax.Array, constrain: Constrain = no_constraint) -> jax.Array:
        """x [B, T, D] -> [B, T, D].

        The three matmuls run on the tokens flattened to [B*T, .] rows, so that the weight
        gradients in the backward pass contract ONE axis (`x2^T @ g2`), which the CPU matmul
        reads transposed in place. With [B, T, .] operands they contract two axes (B, T), and
        XLA:CPU materialised a transposed [F, B*T] copy of each gate/up gradient, fused with
        the SiLU backward in strided order: that copy cost more than the matmuls and made the
        backward of the decoder ~5x its forward (issue 11). Same arithmetic, same results.
        """
        dt = x.dtype
        b, t, d = x.shape
        x2 = x.reshape(b * t, d)  # [B*T, D]
        gate = x2 @ self.gate_proj[...].astype(dt)  # [B*T, F]
        up = x2 @ self.up_proj[...].astype(dt)  # [B*T, F]
        if self.config.mlp_bias:
            gate = gate + self.gate_bias[...].astype(dt)
            up = up + self.up_bias[...].astype(dt)
        hidden = (jax.nn.silu(gate) * up).reshape(b, t, -1)  # [B, T, F]
        hidden = constrain(hidden, ("batch", "length", "mlp"))
        y = hidden.reshape(b * t, -1) @ self.down_proj[...].astype(dt)  # [B*T, D]
        if self.config.mlp_bias:
            y = y + self.down_bias[...].astype(dt)
        return y.reshape(b, t, d)


class Block(nnx.Module):
    """One pre-norm decoder layer: `x + attn(norm(x))`, then `x + mlp(norm(x))`."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        pd = jnp.dtype(config.param_dtype)
        eps = config.rms_norm_eps
        d = config.hidden_size
        self.input_norm = RMSNorm(d, eps, ("embed",), param_dtype=pd, rngs=rngs)
        self.attn = Attention(config, rngs=rngs)
        self.post_attn_norm = RMSNorm(d, eps, ("embed",), param_dtype=pd, rngs=rngs)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(
        self,
        x,
        cos,
        sin,
        mask,
        cache=None,
        index=None,
        constrain=no_constraint,
        layer=0,
        layer_cache=None,
    ):
        """x [B, T, D] -> ([B, T, D], updated cache, new (k, v) or None); arguments as in
        Attention."""
        h, cache = self.attn(
            self.input_norm(x), cos, sin, mask, cache, index, constrain, layer, layer_cache
        )
        x = constrain(x + h, ("batch", "length", None))
        x = x + self.mlp(self.post_attn_norm(x), constrain)
        return constrain(x, ("batch", "length", None)), cache
