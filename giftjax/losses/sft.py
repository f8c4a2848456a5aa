"""Supervised fine-tuning losses: token NLL and the CHORD phi-weighted NLL.

Shape letters: ``B`` sequences, ``T`` response tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from giftjax.losses.common import (
    aggregate,
    as_float_mask,
    check_choice,
    check_token_inputs,
    finish,
    masked_mean,
)

Array = jax.Array

SFT_WEIGHTINGS = ("none", "chord")


def chord_phi(logps: Array) -> Array:
    """CHORD's token weight ``phi(p) = p (1 - p)``, ``p = exp(logps)``, with no gradient.

    Args:
      logps: per-token log-probs, any shape.

    Returns:
      float32 of the same shape, in [0, 1/4], under ``stop_gradient``.
    """
    p = jnp.exp(jax.lax.stop_gradient(logps.astype(jnp.float32)))
    return p * (1.0 - p)


def sft_loss(
    logps: Array,
    mask: Array,
    *,
    weighting: str = "none",
    agg: str = "token-mean",
    max_len: int | None = None,
) -> tuple[Array, dict[str, Array]]:
    r"""Negative log-likelihood of demonstration tokens, optionally CHORD-weighted.

    Per token, with ``p = exp(log p)`` the probability of the demonstrated token:

    - ``weighting="none"``: ``l_t = -log p_t``;
    - ``weighting="chord"``: ``l_t = -sg[phi(p_t)] log p_t`` with ``phi(p) = p (1 - p)``,
      held constant in the gradient (``stop_gradient``), so tokens the model already
      finds certain (``p -> 1``) or hopeless (``p -> 0``) weigh little.

    ``l`` is reduced over the mask by ``agg`` (default ``token-mean``, the usual SFT loss;
    see [`aggregate`][giftjax.losses.aggregate]).

    Args:
      logps: ``[B, T]`` log-probs of the demonstration tokens (float32 or bfloat16).
      mask: ``[B, T]`` mask of the tokens to learn.
      weighting: ``"none"`` or ``"chord"``.
      agg: one of ``AGG_MODES``.
      max_len: the constant length for ``agg="seq-mean-token-sum-norm"`` (default ``T``).

    Returns:
      ``(loss, aux)`` with ``loss = aux["numerator"] / aux["denominator"]``. ``aux`` also
      has ``sft/nll_mean`` (mean ``-log p`` over masked tokens, whatever the weighting) and
      ``sft/phi_mean`` (mean ``phi(p)`` over masked tokens, reported for both weightings).

    References:
      Zhang et al., [On-Policy RL Meets Off-Policy Experts: Harmonizing Supervised
      Fine-Tuning and Reinforcement Learning via Dynamic
      Weighting](https://arxiv.org/abs/2508.11408), 2025 (CHORD).
    """
    check_token_inputs(logps, mask)
    check_choice("weighting", weighting, SFT_WEIGHTINGS)

    m = as_float_mask(mask)  # [B, T]
    logp = logps.astype(jnp.float32)  # [B, T]
    nll = -logp  # [B, T]
    phi = chord_phi(logp)  # [B, T], constant in the gradient
    per_token = nll if weighting == "none" else phi * nll

    numerator, denominator = aggregate(per_token, m, agg=agg, max_len=max_len)
    metrics = {"sft/nll_mean": masked_mean(nll, m), "sft/phi_mean": masked_mean(phi, m)}
    return finish(numerator, denominator, metrics)
