"""RMSNorm (Zhang & Sennrich, "Root Mean Square Layer Normalization", 2019), in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm in float32: `x / sqrt(mean(x^2) + eps) * weight`, cast back to x's dtype.

    The weight multiplies after the cast back, as transformers' LlamaRMSNorm does.

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

    def gain(self) -> jax.Array:
        """The gain [D]: ``weight``, or with LoRA norm tuning (giftjax.models.lora,
        ``train_norms``) ``weight + weight_delta``, summed in float32 and cast to ``weight``'s
        dtype (``weight`` stays frozen; the offset starts at zero). A merged checkpoint stores
        this same array."""
        w = self.weight[...]
        delta = getattr(self, "weight_delta", None)
        if delta is None:
            return w
        return (w.astype(jnp.float32) + delta[...].astype(jnp.float32)).astype(w.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return rms_norm(x, self.gain(), self.eps)
