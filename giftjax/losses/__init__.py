"""Pure loss functions: GIFT, the GRPO family, DPO, UNA and SFT.

Every loss takes log-probabilities (never a model) and returns ``(loss, aux)`` with
``aux["numerator"]`` and ``aux["denominator"]`` for exact micro-batch accumulation.
Imports only jax, optax and ``giftjax.kernels``.
"""

from giftjax.losses.advantages import ADVANTAGE_METHODS, ADVANTAGE_SCALES, group_advantages
from giftjax.losses.common import AGG_MODES, aggregate, sequence_logps
from giftjax.losses.dpo import dpo_loss
from giftjax.losses.gift import gift_loss
from giftjax.losses.grpo import (
    dapo_loss,
    dr_grpo_loss,
    grpo_loss,
    gspo_loss,
    kl_penalty,
    truncated_is_weights,
)
from giftjax.losses.sft import sft_loss
from giftjax.losses.una import una_loss

__all__ = [
    "ADVANTAGE_METHODS",
    "ADVANTAGE_SCALES",
    "AGG_MODES",
    "aggregate",
    "dapo_loss",
    "dpo_loss",
    "dr_grpo_loss",
    "gift_loss",
    "group_advantages",
    "grpo_loss",
    "gspo_loss",
    "kl_penalty",
    "sequence_logps",
    "sft_loss",
    "truncated_is_weights",
    "una_loss",
]
