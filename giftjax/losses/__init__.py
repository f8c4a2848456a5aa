"""Pure loss functions: GIFT, the GRPO family, DPO, UNA and SFT.

Every loss takes log-probabilities (never a model) and returns ``(loss, aux)`` with
``aux["numerator"]`` and ``aux["denominator"]`` for exact micro-batch accumulation.
Imports only jax, optax and ``giftjax.kernels``.
"""

from giftjax.losses.common import AGG_MODES, aggregate, sequence_logps

__all__ = ["AGG_MODES", "aggregate", "sequence_logps"]
