"""Pure loss functions: GIFT, the GRPO family, DPO, UNA and SFT.

Every loss takes log-probabilities (never a model) and returns ``(loss, aux)`` with
``aux["numerator"]`` and ``aux["denominator"]`` for exact micro-batch accumulation.
Imports only jax, optax and ``giftjax.kernels``.
"""

from giftjax.losses.advantages import ADVANTAGE_METHODS, ADVANTAGE_SCALES, group_advantages
from giftjax.losses.common import AGG_MODES, aggregate, sequence_logps
from giftjax.losses.gift import gift_loss

__all__ = [
    "ADVANTAGE_METHODS",
    "ADVANTAGE_SCALES",
    "AGG_MODES",
    "aggregate",
    "gift_loss",
    "group_advantages",
    "sequence_logps",
]
