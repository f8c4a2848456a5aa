"""Loss-side statistics for GAC's ``proxy`` estimator (the published one).

Computed from tensors a hybrid loss already holds, so they cost no extra pass: per-token
log-probabilities of demonstrations and rollouts, the response mask, the advantages, and which
rows are demonstrations. Shape letters: ``B`` sequences (demonstrations and rollouts mixed in
any order), ``T`` response tokens.

References:
  [GAC](https://arxiv.org/abs/2605.26184), 2026.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from giftjax.losses.sft import chord_phi
from giftjax.optim.gac_stats import GacStats

Array = jax.Array


def _check(logps: Array, mask: Array, advantages: Array, is_demo: Array) -> None:
    if not hasattr(logps, "ndim") or logps.ndim != 2:
        raise ValueError(
            f"logps must have shape [B, T], got {getattr(logps, 'shape', type(logps).__name__)}."
        )
    if not jnp.issubdtype(logps.dtype, jnp.floating):
        raise TypeError(f"logps must be a floating-point array, got dtype {logps.dtype}.")
    shape = tuple(logps.shape)
    if tuple(jnp.shape(mask)) != shape:
        raise ValueError(f"mask must have the shape of logps {shape}, got {jnp.shape(mask)}.")
    if tuple(jnp.shape(advantages)) not in (shape, shape[:1]):
        raise ValueError(
            f"advantages must have shape [B]={shape[:1]} (one per sequence) or [B, T]={shape} "
            f"(per token), got {jnp.shape(advantages)}."
        )
    if tuple(jnp.shape(is_demo)) != shape[:1]:
        raise ValueError(
            f"is_demo must have shape [B]={shape[:1]} (True on demonstration rows), got "
            f"{jnp.shape(is_demo)}."
        )


def _masked_var(x: Array, w: Array, ddof: int) -> Array:
    """Variance of ``x[w > 0]`` with ``ddof``; 0 when fewer than ``ddof + 1`` values."""
    n = jnp.sum(w)
    mean = jnp.sum(w * x) / jnp.maximum(n, 1.0)
    ss = jnp.sum(w * jnp.square(x - mean))
    return jnp.where(n > ddof, ss / jnp.maximum(n - ddof, 1.0), 0.0)


def trimmed_var(x: Array, valid: Array, *, trim: float = 0.1, ddof: int = 1) -> Array:
    """Variance of the valid values of ``x`` after dropping the ``floor(trim n)`` smallest and
    the ``floor(trim n)`` largest (``n`` valid values; the cut of ``scipy.stats.trim_mean``).

    Args:
      x: ``[B]`` values (one per sequence).
      valid: ``[B]`` bool, which values count (traced: ``n`` may change from step to step).
      trim: the fraction cut from each end, in [0, 0.5).
      ddof: delta degrees of freedom of the variance of the kept values.

    Returns:
      float32 scalar; 0 when at most ``ddof`` values are kept.
    """
    x = x.astype(jnp.float32)
    valid = valid.astype(bool)
    n = jnp.sum(valid.astype(jnp.int32))
    cut = jnp.floor(trim * n.astype(jnp.float32)).astype(jnp.int32)
    order = jnp.argsort(jnp.where(valid, x, jnp.inf))  # valid values first, ascending
    ranks = jnp.zeros_like(order).at[order].set(jnp.arange(x.shape[0], dtype=order.dtype))
    keep = valid & (ranks >= cut) & (ranks < n - cut)
    return _masked_var(x, keep.astype(jnp.float32), ddof)


def gac_proxy_stats(
    logps: Array,
    mask: Array,
    advantages: Array,
    is_demo: Array,
    *,
    trim: float = 0.1,
    ddof: int = 1,
) -> GacStats:
    """The three ``proxy`` statistics of GAC, as ``GacStats(sft_var, rl_var, disagreement)``.

    With ``n_i = sum_t mask[i,t]`` and only rows with ``n_i > 0`` counted:

    - ``s_rl^2``: variance over the rollout rows (``~is_demo``) of each rollout's mean
      advantage ``abar_i = sum_t mask A / n_i`` (``A_i`` itself when advantages are ``[B]``).
    - ``s_sft^2``: ``trim``-trimmed variance over the demonstration rows of the per-sequence
      mean NLL ``-sum_t mask logps / n_i``.
    - ``D^2 = mean_i mean_t (c_sft - c_rl)^2`` over all rows, with ``c_sft = -phi(p)``,
      ``phi(p) = p (1 - p)``, ``p = exp(logps)`` on every response token, and ``c_rl = -A`` on
      rollout tokens, 0 on demonstration tokens: the per-token coefficients of the CHORD-
      weighted SFT gradient and of the policy gradient, whose mismatch stands in for
      ``|g_sft - g_rl|^2``.

    Everything is under ``stop_gradient``. Missing rows give 0 (no rollouts: ``s_rl^2 = 0``;
    fewer than ``ddof + 1`` kept demonstrations: ``s_sft^2 = 0``).

    Args:
      logps: ``[B, T]`` per-token log-probabilities under the current (or rollout) policy.
      mask: ``[B, T]`` response mask (bool, int or float 0/1).
      advantages: ``[B]`` per sequence or ``[B, T]`` per token; ignored on demonstration rows.
      is_demo: ``[B]`` bool, True on demonstration rows.
      trim: fraction trimmed from each end for ``s_sft^2`` (published: 0.1).
      ddof: delta degrees of freedom of both variances (1: the sample variance).

    Returns:
      ``GacStats(sft_var=..., rl_var=..., disagreement=...)``, float32 scalars.
    """
    _check(logps, mask, advantages, is_demo)
    if not isinstance(trim, (int, float)) or not 0.0 <= trim < 0.5:
        raise ValueError(f"trim must be a number in [0, 0.5), got {trim!r}.")
    if not isinstance(ddof, int) or ddof < 0:
        raise ValueError(f"ddof must be a non-negative int, got {ddof!r}.")
    logps = jax.lax.stop_gradient(logps.astype(jnp.float32))
    adv = jax.lax.stop_gradient(jnp.asarray(advantages, jnp.float32))
    m = mask.astype(jnp.float32)  # [B, T]
    demo = is_demo.astype(bool)  # [B]
    tokens = jnp.sum(m, axis=-1)  # [B]
    has_tokens = tokens > 0  # [B]
    per_seq_mean = lambda v: jnp.sum(v * m, axis=-1) / jnp.maximum(tokens, 1.0)  # [B, T] -> [B]

    adv_bt = adv[:, None] * jnp.ones_like(m) if adv.ndim == 1 else adv  # [B, T]
    rollout_rows = (~demo & has_tokens).astype(jnp.float32)
    rl_var = _masked_var(per_seq_mean(adv_bt), rollout_rows, ddof)

    nll = -per_seq_mean(logps)  # [B]
    sft_var = trimmed_var(nll, demo & has_tokens, trim=trim, ddof=ddof)

    c_sft = -chord_phi(logps)  # [B, T]
    c_rl = jnp.where(demo[:, None], 0.0, -adv_bt)  # [B, T]
    per_seq_d2 = per_seq_mean(jnp.square(c_sft - c_rl))  # [B]
    rows = has_tokens.astype(jnp.float32)
    disagreement = jnp.sum(per_seq_d2 * rows) / jnp.maximum(jnp.sum(rows), 1.0)
    return GacStats(sft_var=sft_var, rl_var=rl_var, disagreement=disagreement)
