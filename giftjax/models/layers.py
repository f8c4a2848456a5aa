"""The decoder layer: a SwiGLU MLP and one pre-norm block (attention lives in attention.py).

Shape letters: B rows, T query tokens, S key slots, D model width, F MLP width, L layers,
K kv heads, H head dim.

Parameters live in `param_dtype` (float32); each matmul casts them to the activations' dtype
(the compute dtype, bfloat16 by default). Norms, RoPE angles and the attention softmax run in
float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from giftjax.models.attention import Attention
from giftjax.models.config import ModelConfig
from giftjax.models.norm import RMSNorm
from giftjax.models.params import Constrain, matmul, no_constraint, param


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
        backward of the decoder ~5x its forward (the MLP was written on [B, T, .] operands until
        the RL-step speed work; benchmarks/model_backward.py --mlp-3d times that form). Same
        arithmetic, same results.
        """
        dt = x.dtype
        b, t, d = x.shape
        x2 = x.reshape(b * t, d)  # [B*T, D]
        gate = matmul(x2, self.gate_proj[...])  # [B*T, F]
        up = matmul(x2, self.up_proj[...])  # [B*T, F]
        if self.config.mlp_bias:
            gate = gate + self.gate_bias[...].astype(dt)
            up = up + self.up_bias[...].astype(dt)
        hidden = (jax.nn.silu(gate) * up).reshape(b, t, -1)  # [B, T, F]
        hidden = constrain(hidden, ("batch", "length", "mlp"))
        y = matmul(hidden.reshape(b * t, -1), self.down_proj[...])  # [B*T, D]
        if self.config.mlp_bias:
            y = y + self.down_bias[...].astype(dt)
        return y.reshape(b, t, d)


class Block(nnx.Module):
    """One pre-norm decoder layer: `x + attn(norm(x))`, then `x + mlp(norm(x))`.

    The four methods mirror Attention's modes (`__call__`, `shared_prefix`, `extend`,
    `decode`); arguments as there, with x [B, T, D] the layer input.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        pd = jnp.dtype(config.param_dtype)
        eps = config.rms_norm_eps
        d = config.hidden_size
        self.input_norm = RMSNorm(d, eps, ("embed",), param_dtype=pd, rngs=rngs)
        self.attn = Attention(config, rngs=rngs)
        self.post_attn_norm = RMSNorm(d, eps, ("embed",), param_dtype=pd, rngs=rngs)
        self.mlp = MLP(config, rngs=rngs)

    def _finish(self, x: jax.Array, h: jax.Array, constrain: Constrain) -> jax.Array:
        """Residual add of the attention output h, then the MLP half: [B, T, D]."""
        x = constrain(x + h, ("batch", "length", None))
        x = x + self.mlp(self.post_attn_norm(x), constrain)
        return constrain(x, ("batch", "length", None))

    def __call__(self, x, cos, sin, mask, *, constrain=no_constraint):
        """x [B, T, D] -> [B, T, D], attention over x itself."""
        h = self.attn(self.input_norm(x), cos, sin, mask, constrain=constrain)
        return self._finish(x, h, constrain)

    def shared_prefix(self, xp, xs, rope_p, rope_s, mask_p, mask_s, *, group_size, constrain):
        """Prefix rows [P, Tp, D] and suffix rows [P*G, Ts, D] through the layer (see
        `Attention.shared_prefix`)."""
        hp, hs = self.attn.shared_prefix(
            self.input_norm(xp),
            self.input_norm(xs),
            rope_p,
            rope_s,
            mask_p,
            mask_s,
            group_size=group_size,
            constrain=constrain,
        )
        return self._finish(xp, hp, constrain), self._finish(xs, hs, constrain)

    def extend(self, x, cos, sin, mask, *, cache, index, layer, constrain=no_constraint):
        """x [B, T, D] -> ([B, T, D], the whole cache with x's keys/values written)."""
        h, cache = self.attn.extend(
            self.input_norm(x),
            cos,
            sin,
            mask,
            cache=cache,
            index=index,
            layer=layer,
            constrain=constrain,
        )
        return self._finish(x, h, constrain), cache

    def decode(self, x, cos, sin, mask, *, layer_cache, index, constrain=no_constraint):
        """x [B, 1, D] -> ([B, 1, D], the token's (key, value), each [B, 1, K, H])."""
        h, kv = self.attn.decode(
            self.input_norm(x),
            cos,
            sin,
            mask,
            layer_cache=layer_cache,
            index=index,
            constrain=constrain,
        )
        return self._finish(x, h, constrain), kv
