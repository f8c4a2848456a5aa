"""GAC: the noise-aware controller that mixes SFT and RL gradients, as an optax transformation.

Hybrid post-training combines a supervised gradient ``g_sft`` (demonstrations) with a
reinforcement-learning gradient ``g_rl`` (rollouts): ``g = (1 - mu) g_rl + mu g_sft``, where
``mu`` is the weight on SFT. GAC sets ``mu`` from online estimates of each signal's noise and of
their disagreement, smoothed, pulled towards a prior schedule and moved in bounded steps.

Model each branch as truth plus independent noise, ``g_b = g_b* + n_b`` with
``E|n_b|^2 = s_b^2``, and aim at ``alpha g_sft* + (1 - alpha) g_rl*``. The weight minimising the
expected squared error is

    mu* = (alpha D^2 + s_rl^2) / (D^2 + s_sft^2 + s_rl^2),   D^2 = |g_sft* - g_rl*|^2,

inverse-variance weighting when the two signals agree (``D^2 = 0``) and ``alpha`` when they
disagree strongly.

References:
  [GAC, noise-aware mixing of SFT and RL gradients in hybrid
  post-training](https://arxiv.org/abs/2605.26184), 2026.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from giftjax.losses._hyper import is_number
from giftjax.losses.common import check_choice, check_unit, is_scalar_array
from giftjax.optim.gac_stats import (
    GacStats,
    check_stats,
    measure_gradient,
    measure_proxy,
    split_updates,
)
from giftjax.optim.schedules import chord_prior

Array = jax.Array

SMOOTHINGS = ("separate", "anchored")
ESTIMATORS = ("gradient", "proxy")
MODES = ("adaptive", "fixed", "prior")


class GacState(NamedTuple):
    """State of [`gac`][giftjax.optim.gac.gac]: scalars of fixed dtype only (jit- and
    orbax-friendly)."""

    count: Array  # () int32: updates made so far (t of the next update)
    mu: Array  # () float32: SFT weight in force (applied at the last update; `init` before any)
    mu_raw: Array  # () float32: closed-form weight from the EMA statistics (0.5 before any)
    mu_smooth: Array  # () float32: smoothed mu_raw (`separate`: own EMA; `anchored`: see gac)
    sft_var: Array  # () float32: EMA of s_sft^2 (bias-corrected; 0 before any refresh)
    rl_var: Array  # () float32: EMA of s_rl^2 (bias-corrected)
    disagreement: Array  # () float32: EMA of D^2 (bias-corrected)
    num_refreshes: Array  # () int32: measurements folded into the EMA so far
    last_refresh: Array  # () int32: step of the last refresh, -1 before any
    prior: Array  # () float32: prior(t) at the last update (prior(0) before any)


def closed_form_mu(
    sft_var: Array, rl_var: Array, disagreement: Array, *, alpha: float, eps: float
) -> Array:
    """``mu_raw = (alpha D^2 + s_rl^2) / (D^2 + s_sft^2 + s_rl^2 + eps)`` (float32)."""
    return (alpha * disagreement + rl_var) / (disagreement + sft_var + rl_var + eps)


# --------------------------------------------------------------------------------------
# The transformation.
# --------------------------------------------------------------------------------------


def gac(
    *,
    alpha: float = 0.5,
    prior: optax.ScalarOrSchedule = chord_prior(),  # noqa: B008  (a pure function)
    blend: float = 0.5,
    ema: float = 0.99,
    refresh_every: int = 10,
    max_step: float = 0.01,
    bounds: tuple[float, float] = (0.05, 0.90),
    init: float = 0.5,
    smoothing: str = "separate",
    estimator: str = "gradient",
    mode: str = "adaptive",
    smooth: float = 0.99,
    eps: float = 1e-8,
    disagreement_cap: float | None = None,
) -> optax.GradientTransformationExtraArgs:
    """GAC: mix SFT and RL gradients with a noise-aware, prior-guided, bounded weight.

    ``update({"sft": g_sft, "rl": g_rl}, state, params, gac_stats=GacStats(...))`` returns
    ``(1 - mu_t) g_rl + mu_t g_sft`` (a tree of the parameters' structure, each leaf in the
    dtype of ``g_sft``'s) and the new state; ``state.mu`` is ``mu_t``. Chain it first:
    ``optax.chain(gac(...), optax.clip_by_global_norm(1.0), optax.adamw(lr))``.

    Update ``t`` (``t = state.count``, 0 on the first call) runs, in this order:

    1. **Statistics.** The measurement ``m = (s_sft^2, s_rl^2, D^2)`` (from ``gac_stats``, see
       ``estimator``) is folded into an exponential moving average with coefficient ``ema``
       only when a refresh is due: at the first update that brings valid statistics and then
       whenever ``t - last_refresh >= refresh_every`` (so at t = 0, 10, 20, ... when statistics
       come every step). Measurements on other steps are ignored. The EMA advances once per
       *refresh*, so ``ema=0.99`` with ``refresh_every=10`` averages over about 100 refreshes
       (about 1000 steps). It is bias-corrected as in Adam (``ema_hat = ema_n / (1 -
       ema^n)`` after n refreshes), which also makes the first refresh's value the estimate.
    2. **Closed form.** ``mu_raw = (alpha D^2 + s_rl^2) / (D^2 + s_sft^2 + s_rl^2 + eps)`` from
       the EMA statistics (``D^2`` first capped at ``disagreement_cap * (s_sft^2 + s_rl^2)``
       if given); ``mu_raw = 0.5`` while no statistics have arrived.
    3. **Smoothing** (coefficient ``smooth``, every step):

       - ``"separate"`` (default): ``mu_smooth_t = smooth mu_smooth_{t-1} + (1 - smooth)
         mu_raw``, its own EMA started at ``init``: the noise estimate steers mu by up to
         ``blend * |mu_raw - prior|`` (about ±0.2 with the defaults).
       - ``"anchored"`` (the published code): ``mu_smooth_t = smooth mu_{t-1} + (1 - smooth)
         mu_raw``, anchored on the previous *final* mu. Combined with step 4 the fixed point
         is ``mu ~ 0.99 prior + 0.01 mu_raw``: mu tracks the prior and the estimate moves it
         by under 0.01.
    4. **Prior guidance.** ``mu_cand = (1 - blend) prior(t) + blend mu_smooth_t``.
    5. **Bounded step, then bounds.** ``mu_t = clip(clip(mu_cand, mu_{t-1} - max_step,
       mu_{t-1} + max_step), *bounds)``; ``mu_{-1} = init``.

    The weight that multiplies this step's gradients is ``mu_t``, the one updated with this
    step's statistics: the published description computes mu from the batch's statistics
    and then forms ``(1 - mu_t) L_RL + mu_t L_SFT`` for the same batch. (For the ``gradient``
    estimator the statistics need this step's gradients, which ``update`` holds.)

    $$
    \\mu_t = \\Pi_{[lo, hi]}\\Big(\\Pi_{[\\mu_{t-1} \\pm \\delta]}\\big((1 - \\lambda)
      \\pi(t) + \\lambda \\bar\\mu_t\\big)\\Big), \\qquad
    g_t = (1 - \\mu_t)\\, g_{rl} + \\mu_t\\, g_{sft}
    $$

    Every numeric hyperparameter (``alpha``, ``blend``, ``ema``, ``refresh_every``,
    ``max_step``, ``init``, ``smooth``, ``eps``, ``disagreement_cap``, and ``prior`` as a
    constant) may also be a scalar array, so ``optax.inject_hyperparams(optim.gac)(alpha=0.5,
    ...)`` works and the injected values can be changed in the state between updates: Python
    numbers are validated here, arrays pass unchecked. ``bounds`` and the string options stay
    static.

    Args:
      alpha: the SFT share of the target ``alpha g_sft* + (1 - alpha) g_rl*``; ``mu_raw``
        tends to it when the signals disagree strongly.
      prior: an optax schedule ``step -> mu`` (or a constant), default
        [`chord_prior`][giftjax.optim.chord_prior].
      blend: ``lambda``, the weight of the smoothed estimate against the prior.
      ema: EMA coefficient of the statistics, per refresh.
      refresh_every: steps between refreshes of the statistics.
      max_step: the largest change of mu in one step.
      bounds: ``(lo, hi)``, hard bounds on mu after the step cap.
      init: ``mu_0``, and the start of the ``separate`` EMA; the constant of ``mode="fixed"``.
      smoothing: ``"separate"`` or ``"anchored"`` (above).
      estimator: ``"gradient"``: from K micro-batch gradients per branch; ``gac_stats`` holds
        ``sft_sq_norm_sum``, ``rl_sq_norm_sum`` and ``num_microbatches`` (and
        ``rl_num_microbatches`` if it differs), ``s^2 = (sum_k |g_k|^2 - K |g_mean|^2) / (K
        (K - 1))`` with ``g_mean`` the tree passed in, ``D^2 = |g_sft - g_rl|^2 - s_sft^2 -
        s_rl^2`` clamped at 0; needs K >= 2. ``"proxy"``: ``gac_stats`` holds ``sft_var``,
        ``rl_var`` and ``disagreement`` from [`gac_proxy_stats`][giftjax.optim.gac_proxy_stats].
      mode: ``"adaptive"`` (the controller above), ``"fixed"`` (``mu = init`` always) or
        ``"prior"`` (``mu = prior(t)`` alone, without smoothing, cap or bounds: the CHORD
        baseline). The baselines still track statistics, ``mu_raw`` and ``mu_smooth`` when
        given ``gac_stats`` (what GAC would have chosen), at the cost of the reductions.
      smooth: coefficient of the smoothing in step 3.
      eps: added to the denominator of ``mu_raw``.
      disagreement_cap: if given, ``D^2`` is capped at this multiple of ``s_sft^2 + s_rl^2``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. Missing statistics (``gac_stats=None``,
      K < 2, or a non-finite or negative value) skip the refresh: the EMA is held, and before
      any refresh ``mu_raw = 0.5``.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> from giftjax import optim
      >>> params = {"w": jnp.zeros(3)}
      >>> tx = optax.chain(optim.gac(estimator="proxy"), optax.sgd(0.1))
      >>> state = tx.init(params)
      >>> grads = {"sft": {"w": jnp.ones(3)}, "rl": {"w": -jnp.ones(3)}}
      >>> stats = optim.GacStats(sft_var=1.0, rl_var=3.0, disagreement=0.0)
      >>> updates, state = tx.update(grads, state, params, gac_stats=stats)
      >>> float(state[0].mu_raw), round(float(state[0].mu), 4)
      (0.75, 0.49)

    References:
      [GAC](https://arxiv.org/abs/2605.26184), 2026 (the controller, the ``proxy``
      estimator and the ``anchored`` smoothing of its code); Zhang et al., [On-Policy RL
      Meets Off-Policy Experts](https://arxiv.org/abs/2508.11408), 2025 (CHORD, the prior).
    """
    check_unit("alpha", alpha)
    check_unit("blend", blend)
    check_unit("ema", ema, upper_open=True)
    check_unit("smooth", smooth, upper_open=True)
    check_unit("init", init)
    check_choice("smoothing", smoothing, SMOOTHINGS)
    check_choice("estimator", estimator, ESTIMATORS)
    check_choice("mode", mode, MODES)
    if not is_scalar_array("refresh_every", refresh_every) and (
        not isinstance(refresh_every, int) or isinstance(refresh_every, bool) or refresh_every < 1
    ):
        raise ValueError(f"refresh_every must be a positive int, got {refresh_every!r}.")
    if not is_scalar_array("max_step", max_step) and (not is_number(max_step) or max_step <= 0):
        raise ValueError(f"max_step must be a positive number, got {max_step!r}.")
    if (
        not isinstance(bounds, (tuple, list))
        or len(bounds) != 2
        or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
        or not 0.0 <= bounds[0] <= bounds[1] <= 1.0
    ):
        raise ValueError(f"bounds must be (lo, hi) with 0 <= lo <= hi <= 1, got {bounds!r}.")
    if not is_scalar_array("eps", eps) and (not is_number(eps) or eps < 0):
        raise ValueError(f"eps must be a non-negative number, got {eps!r}.")
    if (
        disagreement_cap is not None
        and not is_scalar_array("disagreement_cap", disagreement_cap)
        and (not is_number(disagreement_cap) or disagreement_cap < 0)
    ):
        raise ValueError(
            f"disagreement_cap must be None or a non-negative number, got {disagreement_cap!r}."
        )
    if callable(prior):
        prior_fn: Callable[[Array], Array] = prior
    elif is_scalar_array("prior", prior) or (is_number(prior) and 0 <= prior <= 1):
        # A constant; under optax.inject_hyperparams a schedule arrives here already
        # evaluated at the update count, which is also this transformation's t.
        prior_fn = lambda step: jnp.full((), prior, jnp.float32)
    else:
        raise ValueError(
            f"prior must be an optax schedule (step -> mu) or a number in [0, 1], got {prior!r}."
        )
    lo, hi = float(bounds[0]), float(bounds[1])

    def init_fn(params: Any) -> GacState:
        del params
        f32 = lambda x: jnp.asarray(x, jnp.float32)
        i32 = lambda x: jnp.asarray(x, jnp.int32)
        return GacState(
            count=i32(0),
            mu=f32(init),
            mu_raw=f32(0.5),
            mu_smooth=f32(init),
            sft_var=f32(0.0),
            rl_var=f32(0.0),
            disagreement=f32(0.0),
            num_refreshes=i32(0),
            last_refresh=i32(-1),
            prior=jnp.asarray(prior_fn(jnp.zeros((), jnp.int32)), jnp.float32),
        )

    def update_fn(
        updates: Any,
        state: GacState,
        params: Any = None,
        *,
        gac_stats: GacStats | None = None,
        **extra_args: Any,
    ) -> tuple[Any, GacState]:
        del params, extra_args
        g_sft, g_rl = split_updates(updates)
        check_stats(gac_stats, estimator)
        t = state.count

        # 1. Statistics: fold a valid measurement into the EMA when a refresh is due.
        sft_var, rl_var, disagreement = state.sft_var, state.rl_var, state.disagreement
        num_refreshes, last_refresh = state.num_refreshes, state.last_refresh
        if gac_stats is not None:
            if estimator == "gradient":
                m_sft, m_rl, m_d2, valid = measure_gradient(g_sft, g_rl, gac_stats)
            else:
                m_sft, m_rl, m_d2, valid = measure_proxy(gac_stats)
            valid = valid & jnp.isfinite(m_sft) & jnp.isfinite(m_rl) & jnp.isfinite(m_d2)
            due = (last_refresh < 0) | (t - last_refresh >= refresh_every)
            refresh = valid & due
            n_new = num_refreshes + 1
            # Bias-corrected EMA, written as a gain: ema_hat_n = ema_hat_(n-1) + (1 - b) /
            # (1 - b^n) (m - ema_hat_(n-1)), equal to (plain EMA from 0) / (1 - b^n). The gain
            # is exactly 1 on the first refresh (ema_hat_1 = m) and tends to 1 - b.
            gain = (1.0 - ema) / (1.0 - jnp.power(jnp.float32(ema), n_new.astype(jnp.float32)))
            gain = jnp.where(n_new == 1, 1.0, gain)
            fold = lambda old, m: old + gain * (m - old)
            sft_var = jnp.where(refresh, fold(sft_var, m_sft), sft_var)
            rl_var = jnp.where(refresh, fold(rl_var, m_rl), rl_var)
            disagreement = jnp.where(refresh, fold(disagreement, m_d2), disagreement)
            num_refreshes = jnp.where(refresh, n_new, num_refreshes)
            last_refresh = jnp.where(refresh, t, last_refresh)

        # 2. Closed form (0.5 until the first refresh).
        d2 = disagreement
        if disagreement_cap is not None:
            d2 = jnp.minimum(d2, disagreement_cap * (sft_var + rl_var))
        mu_raw = jnp.where(
            num_refreshes > 0,
            closed_form_mu(sft_var, rl_var, d2, alpha=alpha, eps=eps),
            jnp.float32(0.5),
        )

        # 3. Smoothing.
        anchor = state.mu_smooth if smoothing == "separate" else state.mu
        mu_smooth = smooth * anchor + (1.0 - smooth) * mu_raw

        # 4. Prior guidance; 5. bounded step, then hard bounds.
        prior_t = jnp.asarray(prior_fn(t), jnp.float32)
        if mode == "adaptive":
            mu_cand = (1.0 - blend) * prior_t + blend * mu_smooth
            mu = jnp.clip(mu_cand, state.mu - max_step, state.mu + max_step)
            mu = jnp.clip(mu, lo, hi)
        elif mode == "fixed":
            mu = jnp.full((), init, jnp.float32)
        else:
            mu = prior_t

        combined = jax.tree.map(
            lambda s, r: ((1.0 - mu) * r.astype(jnp.float32) + mu * s.astype(jnp.float32)).astype(
                s.dtype
            ),
            g_sft,
            g_rl,
        )
        new_state = GacState(
            count=(t + 1).astype(jnp.int32),
            mu=mu.astype(jnp.float32),
            mu_raw=mu_raw.astype(jnp.float32),
            mu_smooth=mu_smooth.astype(jnp.float32),
            sft_var=sft_var.astype(jnp.float32),
            rl_var=rl_var.astype(jnp.float32),
            disagreement=disagreement.astype(jnp.float32),
            num_refreshes=num_refreshes.astype(jnp.int32),
            last_refresh=last_refresh.astype(jnp.int32),
            prior=prior_t,
        )
        return combined, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# --------------------------------------------------------------------------------------
# Logging.
# --------------------------------------------------------------------------------------


def find_gac_state(opt_state: Any, *, required: bool = True) -> GacState | None:
    """The one [`GacState`][giftjax.optim.GacState] inside an optimiser state (e.g. an
    ``optax.chain``'s).

    Args:
      opt_state: any optimiser state pytree (a [`GacState`][giftjax.optim.GacState] itself
        included).
      required: raise when there is none (else return None). More than one always raises.
    """
    found = [
        s
        for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, GacState))
        if isinstance(s, GacState)
    ]
    if not found and not required:
        return None
    if len(found) != 1:
        raise ValueError(
            f"Expected exactly one GacState in the optimiser state, found {len(found)}: "
            "build the optimiser as optax.chain(optim.gac(...), ...)."
        )
    return found[0]


def gac_metrics(opt_state: Any) -> dict[str, Array]:
    """Scalars to log every step from a state holding a [`GacState`][giftjax.optim.GacState].

    Returns ``gac/mu`` (the weight applied at the last update), ``gac/mu_raw``,
    ``gac/mu_smooth``, ``gac/prior``, ``gac/sft_var``, ``gac/rl_var``, ``gac/disagreement``
    (the EMA statistics) and ``gac/num_refreshes``.
    """
    s = find_gac_state(opt_state)
    return {
        "gac/mu": s.mu,
        "gac/mu_raw": s.mu_raw,
        "gac/mu_smooth": s.mu_smooth,
        "gac/prior": s.prior,
        "gac/sft_var": s.sft_var,
        "gac/rl_var": s.rl_var,
        "gac/disagreement": s.disagreement,
        "gac/num_refreshes": s.num_refreshes,
    }
