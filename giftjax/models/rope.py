"""Rotary position embeddings (Su et al., "RoFormer", 2021), with Llama 3.1 frequency scaling.

Shape letters: B rows, T tokens, H head dim. Angles are computed in float32, in the half-split
layout of transformers (`cat(freqs, freqs)`), not interleaved pairs.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from giftjax.models.config import ModelConfig


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
    """RoPE inverse frequencies [H/2] (float32), with llama3 scaling when configured.

    Default: `inv_freq_i = theta^(-2i/H)`.
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
    """cos and sin tables [B, T, H] (float32) for integer `positions` [B, T]."""
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
