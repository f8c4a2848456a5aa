"""Prior schedules for the GAC mixing weight.

A prior is an optax schedule ``step -> mu_prior(step)`` (the SFT weight the recipe would use
without any noise estimate). GAC pulls its estimate towards it (``blend``); ``gac(mode="prior")``
uses it alone, which is the CHORD baseline.

References:
  Zhang et al., [On-Policy RL Meets Off-Policy Experts: Harmonizing Supervised Fine-Tuning and
  Reinforcement Learning via Dynamic Weighting](https://arxiv.org/abs/2508.11408), 2025 (CHORD).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax

from giftjax.losses.common import check_unit


def _check_nonneg_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}.")


def chord_prior(
    warmup: int = 200, decay: int = 800, peak: float = 0.85, valley: float = 0.15
) -> optax.Schedule:
    """The CHORD schedule of the SFT weight: linear warm-up, then cosine decay.

    $$
    \\mu_{prior}(t) = \\begin{cases}
      peak \\cdot t / warmup & t < warmup \\\\
      valley + (peak - valley) \\tfrac{1}{2}(1 + \\cos(\\pi (t - warmup) / decay))
        & warmup \\le t < warmup + decay \\\\
      valley & t \\ge warmup + decay
    \\end{cases}
    $$

    ``t`` is the number of updates made before this one (0 on the first), as in every optax
    schedule.

    Written in closed form rather than as ``optax.join_schedules([linear_schedule,
    cosine_decay_schedule], [warmup])``: that composition is the same function mathematically
    but not in float32. ``linear_schedule`` evaluates ``(0 - peak)(1 - t / warmup) + peak``,
    which cancels near ``t = 0`` (``t = 1``: 0.00424999 instead of 0.00425), and
    ``cosine_decay_schedule`` forms ``pi t / decay`` in another order; with the defaults 261
    of the steps 0..1299 differ, by up to 1.2e-7 (2 ulps of 0.85).

    Args:
      warmup: steps of the linear rise from 0 to ``peak`` (0: start at ``peak``).
      decay: steps of the cosine decay from ``peak`` to ``valley`` (0: jump to ``valley``).
      peak: the weight reached at the end of the warm-up, in [0, 1].
      valley: the final weight, in [0, 1].

    Returns:
      An optax schedule: ``step`` (int scalar, traced or not) -> float32 scalar.

    Examples:
      >>> from giftjax import optim
      >>> prior = optim.chord_prior()
      >>> [round(float(prior(t)), 4) for t in (0, 100, 200, 600, 1000)]
      [0.0, 0.425, 0.85, 0.5, 0.15]
    """
    _check_nonneg_int("warmup", warmup)
    _check_nonneg_int("decay", decay)
    check_unit("peak", peak)
    check_unit("valley", valley)

    def schedule(step):
        t = jnp.asarray(step, jnp.float32)
        rise = peak * t / max(warmup, 1)
        phase = jnp.clip((t - warmup) / max(decay, 1), 0.0, 1.0)
        fall = valley + (peak - valley) * 0.5 * (1.0 + jnp.cos(math.pi * phase))
        value = jnp.where(t < warmup, rise, jnp.where(t < warmup + decay, fall, valley))
        return value.astype(jnp.float32)

    return schedule
