"""The GRPO family of clipped policy-gradient losses: GRPO, DAPO, Dr.GRPO and GSPO.

One function, [`grpo_loss`][giftjax.losses.grpo_loss], covers the four methods; they differ only in
the clip range, the KL term, the importance ratio (per token or per sequence) and how per-token
losses are aggregated. ``preset=`` sets each paper's published values, and the thin
wrappers [`dapo_loss`][giftjax.losses.dapo_loss], [`dr_grpo_loss`][giftjax.losses.dr_grpo_loss] and
[`gspo_loss`][giftjax.losses.gspo_loss] name them.

Shape letters: ``B`` sequences (``P`` prompts x ``G`` samples), ``T`` response tokens.
The advantages are computed beforehand (``giftjax.losses.group_advantages``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from giftjax.losses._hyper import check_scalar, is_number
from giftjax.losses.common import (
    AGG_MODES,
    aggregate,
    apply_preset,
    as_float_mask,
    check_choice,
    check_per_sequence,
    check_token_inputs,
    finish,
    masked_mean,
    safe_divide,
)

Array = jax.Array

IMPORTANCE_MODES = ("token", "sequence")
KL_ESTIMATORS = ("k1", "k2", "k3")

# Log-ratios (log pi - log pi_old for the importance ratio, ref - log pi inside k3) are
# clamped to [-MAX_LOG_RATIO, MAX_LOG_RATIO] before exponentiation, as verl does. exp(20)
# is about 4.9e8, so ratios, losses and gradients stay finite in float32 for any finite
# input (log-ratios of +-50 included), while |log-ratio| <= 20 is never touched. Beyond
# the clamp the value is held at its bound and the gradient through it is 0.
MAX_LOG_RATIO = 20.0

# Published defaults, by preset name.
GRPO_PRESETS: dict[str, dict[str, object]] = {
    # Shao et al. 2024 (DeepSeekMath, arXiv 2402.03300): objective 1/G sum_i 1/|o_i| sum_t
    # (per-sequence token mean, then the mean over sequences), the KL term with the
    # unbiased estimator pi_ref/pi - log(pi_ref/pi) - 1 (k3) and coefficient 0.04. The
    # paper states no clip epsilon; 0.2 is PPO's value, which GRPO implementations use.
    "grpo": {
        "clip_low": 0.2,
        "clip_high": 0.2,
        "kl_coef": 0.04,
        "kl_estimator": "k3",
        "importance": "token",
        "agg": "seq-mean-token-mean",
    },
    # Yu et al. 2025 (DAPO, arXiv 2503.14476): clip-higher (eps_low 0.2, eps_high 0.28),
    # no KL term, token-level loss 1 / sum_i |o_i|.
    "dapo": {
        "clip_low": 0.2,
        "clip_high": 0.28,
        "kl_coef": 0.0,
        "importance": "token",
        "agg": "token-mean",
    },
    # Liu et al. 2025 (Dr.GRPO, arXiv 2503.20783): no 1/|o_i| length normalisation (a
    # constant generation budget instead, ``max_len``), no KL term, clip 0.2.
    "dr_grpo": {
        "clip_low": 0.2,
        "clip_high": 0.2,
        "kl_coef": 0.0,
        "importance": "token",
        "agg": "seq-mean-token-sum-norm",
    },
    # Zheng et al. 2025 (GSPO, arXiv 2507.18071): sequence-level ratio, 1/G over the
    # sequences, clipping ranges 3e-4 (left) and 4e-4 (right) in its experiments; the
    # GSPO objective has no KL term.
    "gspo": {
        "clip_low": 3e-4,
        "clip_high": 4e-4,
        "kl_coef": 0.0,
        "importance": "sequence",
        "agg": "seq-mean-token-mean",
    },
}


def kl_penalty(logps: Array, ref_logps: Array, estimator: str = "k3") -> Array:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi.

    With ``x = logps - ref_logps`` (log pi - log pi_ref) and ``d = -x``:

    - ``k1 = x`` (unbiased, high variance, can be negative);
    - ``k2 = x^2 / 2`` (biased, low variance);
    - ``k3 = exp(d) - d - 1`` (unbiased, low variance, >= 0; the GRPO estimator).

    ``d`` is clamped to ``[-MAX_LOG_RATIO, MAX_LOG_RATIO]`` in k3, so the value stays finite.

    Args:
      logps: ``[B, T]`` log-probs of the current policy.
      ref_logps: ``[B, T]`` log-probs of the reference policy.
      estimator: ``"k1"``, ``"k2"`` or ``"k3"``.

    Returns:
      ``[B, T]`` float32.

    References:
      Schulman, [Approximating KL Divergence](http://joschu.net/blog/kl-approx.html), 2020.
    """
    check_choice("kl_estimator", estimator, KL_ESTIMATORS)
    x = logps.astype(jnp.float32) - ref_logps.astype(jnp.float32)  # [B, T]
    if estimator == "k1":
        return x
    if estimator == "k2":
        return 0.5 * jnp.square(x)
    d = jnp.clip(-x, -MAX_LOG_RATIO, MAX_LOG_RATIO)
    return jnp.exp(d) - d - 1.0


def grpo_loss(
    logps: Array,
    old_logps: Array,
    mask: Array,
    advantages: Array,
    *,
    ref_logps: Array | None = None,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    importance: str = "token",
    agg: str = "token-mean",
    max_len: int | None = None,
    preset: str | None = None,
    is_weights: Array | None = None,
) -> tuple[Array, dict[str, Array]]:
    r"""Clipped surrogate policy loss of GRPO and its variants (DAPO, Dr.GRPO, GSPO).

    Per response token ``t`` of sequence ``i`` (``A_i`` is the sequence's advantage):

    $$
    \rho_{i,t} = \exp(\log\pi_\theta - \log\pi_{old}), \quad
    \ell_{i,t} = -\min(\rho_{i,t} A_i,\ \mathrm{clip}(\rho_{i,t}, 1-\epsilon_{low},
    1+\epsilon_{high}) A_i) + \beta_{KL}\, \mathrm{KL}_{i,t}
    $$

    - ``importance="token"``: ``rho_{i,t}`` is the token ratio (PPO/GRPO/DAPO). The
      log-ratio is computed in float32 and clamped to ``[-20, 20]`` (``MAX_LOG_RATIO``).
    - ``importance="sequence"`` (GSPO): every token of sequence ``i`` uses the
      length-normalised sequence ratio ``s_i = exp(mean_t (log pi - log pi_old))`` over its
      response tokens, written as ``sg[s_i] * exp(log pi_t - sg[log pi_t])`` so that the
      value is ``s_i`` and, with ``agg="seq-mean-token-mean"``, the gradient is GSPO's
      ``s_i A_i mean_t grad log pi_t`` (the GSPO-token form with a shared advantage).
    - ``dual_clip=c`` (Ye et al. 2020, arXiv 1912.09729; verl's ``clip_ratio_c``): where
      ``A_i < 0`` the policy term is capped at ``c |A_i|``; ``c`` must be > 1.
    - KL term (when ``kl_coef != 0``): ``kl_coef * KL_{i,t}`` with the estimator
      ``kl_estimator`` of [`kl_penalty`][giftjax.losses.kl_penalty] against ``ref_logps``.
    - ``is_weights`` (optional, ``[B, T]``, held constant): multiplies the policy term of
      each token, ``l = w * pg + kl``; the trainer passes the truncated importance weights
      of [`truncated_is_weights`][giftjax.losses.truncated_is_weights] when it takes pi_old from the
      sampler.
    - ``agg`` reduces ``l`` over the mask with [`aggregate`][giftjax.losses.aggregate]:
      ``token-mean``, ``seq-mean-token-mean``, ``seq-mean-token-sum`` or
      ``seq-mean-token-sum-norm`` (divided by ``max_len``, default ``T``).

    Presets (``preset=``) set each paper's values; an explicitly passed argument that
    disagrees with the preset raises (`giftjax.losses.common.apply_preset`):

    | preset | clip_low | clip_high | kl_coef | estimator | importance | agg |
    |---|---|---|---|---|---|---|
    | ``grpo`` | 0.2 | 0.2 | 0.04 | k3 | token | seq-mean-token-mean |
    | ``dapo`` | 0.2 | 0.28 | 0 | (any) | token | token-mean |
    | ``dr_grpo`` | 0.2 | 0.2 | 0 | (any) | token | seq-mean-token-sum-norm |
    | ``gspo`` | 3e-4 | 4e-4 | 0 | (any) | sequence | seq-mean-token-mean |

    Args:
      logps: ``[B, T]`` log-probs of the sampled tokens under the current policy (float32
        or bfloat16; computed in float32).
      old_logps: ``[B, T]`` log-probs under the rollout policy pi_old.
      mask: ``[B, T]`` response mask (bool, int or float 0/1).
      advantages: ``[B]`` one advantage per sequence.
      ref_logps: ``[B, T]`` reference log-probs, needed when ``kl_coef != 0``.
      clip_low: ``epsilon_low >= 0``; ratios below ``1 - clip_low`` are clipped.
      clip_high: ``epsilon_high >= 0``; ratios above ``1 + clip_high`` are clipped.
      dual_clip: ``None`` or ``c > 1``, the cap on the loss of negative advantages.
      kl_coef: weight of the KL term (>= 0).
      kl_estimator: ``"k1"``, ``"k2"`` or ``"k3"``.
      importance: ``"token"`` or ``"sequence"`` (GSPO).
      agg: one of ``AGG_MODES``.
      max_len: the constant length of ``seq-mean-token-sum-norm`` (default ``T``); set it
        to the generation budget so that micro-batches of different ``T`` agree.
      preset: ``None``, ``"grpo"``, ``"dapo"``, ``"dr_grpo"`` or ``"gspo"``.
      is_weights: ``None`` or ``[B, T]`` per-token weights of the policy term (no gradient).

    Returns:
      ``(loss, aux)``: ``loss = aux["numerator"] / aux["denominator"]`` (0 if nothing is
      masked in). ``aux`` also holds, over the masked tokens of this batch (under
      ``grpo/`` for every preset and wrapper):
      ``grpo/clip_fraction`` (share of tokens whose clipped term is the active one, i.e. the
      gradient is cut), ``grpo/dual_clip_fraction`` (share capped by the dual clip),
      ``grpo/kl_mean`` (mean KL estimate; 0 without ``ref_logps``), ``grpo/ratio_mean``
      (mean importance ratio), ``grpo/pg_loss`` (the policy term alone, aggregated like the
      loss) and ``grpo/advantage_mean`` (mean of ``advantages`` over the B sequences).

    References:
      Shao et al., [DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open
      Language Models](https://arxiv.org/abs/2402.03300), 2024.
      Yu et al., [DAPO: An Open-Source LLM Reinforcement Learning System at
      Scale](https://arxiv.org/abs/2503.14476), 2025.
      Liu et al., [Understanding R1-Zero-Like Training: A Critical
      Perspective](https://arxiv.org/abs/2503.20783), 2025.
      Zheng et al., [Group Sequence Policy
      Optimization](https://arxiv.org/abs/2507.18071), 2025.
      Ye et al., [Mastering Complex Control in MOBA Games with Deep Reinforcement
      Learning](https://arxiv.org/abs/1912.09729), 2020 (dual clip).
    """
    given = {
        "clip_low": clip_low,
        "clip_high": clip_high,
        "kl_coef": kl_coef,
        "kl_estimator": kl_estimator,
        "importance": importance,
        "agg": agg,
    }
    args = apply_preset(grpo_loss, preset, GRPO_PRESETS, given)
    clip_low, clip_high = args["clip_low"], args["clip_high"]
    kl_coef, kl_estimator = args["kl_coef"], args["kl_estimator"]
    importance, agg = args["importance"], args["agg"]

    # Trace-time checks.
    check_token_inputs(
        logps, mask, {"old_logps": old_logps, "ref_logps": ref_logps, "is_weights": is_weights}
    )
    check_per_sequence("advantages", advantages, logps.shape[0])
    check_choice("importance", importance, IMPORTANCE_MODES)
    check_choice("kl_estimator", kl_estimator, KL_ESTIMATORS)
    check_choice("agg", agg, AGG_MODES)
    check_scalar("clip_low", clip_low, low=0.0, high=1.0, high_inclusive=False)
    check_scalar("clip_high", clip_high, low=0.0)
    check_scalar("kl_coef", kl_coef, low=0.0)
    if dual_clip is not None:
        check_scalar("dual_clip", dual_clip, low=1.0, low_inclusive=False)
    use_kl = not (is_number(kl_coef) and kl_coef == 0)
    if use_kl and ref_logps is None:
        where = f" (set by preset={preset!r})" if preset is not None else ""
        raise ValueError(
            f"kl_coef={kl_coef!r}{where} needs ref_logps [B, T], the reference policy's "
            "log-probs; pass ref_logps or set kl_coef=0."
        )

    m = as_float_mask(mask)  # [B, T]
    logps32 = logps.astype(jnp.float32)
    log_ratio = logps32 - old_logps.astype(jnp.float32)  # [B, T]
    adv = advantages.astype(jnp.float32)[:, None]  # [B, 1]

    if importance == "token":
        ratio = jnp.exp(jnp.clip(log_ratio, -MAX_LOG_RATIO, MAX_LOG_RATIO))  # [B, T]
    else:
        tokens = jnp.sum(m, axis=-1)  # [B]
        seq_log_ratio = jnp.sum(log_ratio * m, axis=-1) / jnp.maximum(tokens, 1.0)  # [B]
        seq_log_ratio = jnp.clip(seq_log_ratio, -MAX_LOG_RATIO, MAX_LOG_RATIO)
        # Value s_i on every token; gradient s_i * grad log pi_t (GSPO-token form).
        log_ratio_tok = logps32 - jax.lax.stop_gradient(logps32)  # [B, T], all 0
        ratio = jnp.exp(jax.lax.stop_gradient(seq_log_ratio)[:, None] + log_ratio_tok)

    unclipped = -ratio * adv  # [B, T]
    clipped = -jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv  # [B, T]
    pg = jnp.maximum(unclipped, clipped)  # [B, T]
    clip_active = clipped > unclipped  # [B, T]
    if dual_clip is not None:
        cap = -dual_clip * adv  # [B, 1], = c |A| where A < 0
        dual_active = (adv < 0) & (pg > cap)  # [B, T]
        pg = jnp.where(dual_active, cap, pg)
    else:
        dual_active = jnp.zeros_like(clip_active)
    if is_weights is not None:
        pg = pg * jax.lax.stop_gradient(is_weights.astype(jnp.float32))

    per_token = pg
    if ref_logps is not None:
        kl = kl_penalty(logps32, ref_logps, kl_estimator)  # [B, T]
        kl_mean = masked_mean(kl, m)
        if use_kl:
            per_token = pg + kl_coef * kl
    else:
        kl_mean = jnp.zeros((), jnp.float32)

    numerator, denominator = aggregate(per_token, m, agg=agg, max_len=max_len)
    pg_num, _ = aggregate(pg, m, agg=agg, max_len=max_len)
    metrics = {
        "grpo/pg_loss": safe_divide(pg_num, denominator),
        "grpo/clip_fraction": masked_mean(clip_active.astype(jnp.float32), m),
        "grpo/dual_clip_fraction": masked_mean(dual_active.astype(jnp.float32), m),
        "grpo/kl_mean": kl_mean,
        "grpo/ratio_mean": masked_mean(ratio, m),
        "grpo/advantage_mean": jnp.mean(advantages.astype(jnp.float32)),
    }
    return finish(numerator, denominator, metrics)


def truncated_is_weights(
    trainer_logps: Array, sampler_logps: Array, mask: Array, *, cap: float
) -> tuple[Array, dict[str, Array]]:
    r"""Truncated importance weights from the sampler to the trainer (TIS).

    $$
    w_{i,t} = \min(\exp(\log\pi_{trainer} - \log\pi_{sampler}), C)
    $$

    computed as ``exp(min(d, log C))`` (no overflow for any finite ``d``), with no gradient.
    The sampler's log-probs differ from the trainer's by numerics (another kernel, dtype or
    batch shape: the training-inference mismatch) and, once the policy has moved, by the
    updates since sampling; the weight corrects both, truncated at ``C`` as verl's and
    tunix's TIS do (Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You
    Off-Policy RL Training").

    Args:
      trainer_logps: ``[B, T]`` the trainer's log-probs of the sampled tokens.
      sampler_logps: ``[B, T]`` the sampler's log-probs of the same tokens.
      mask: ``[B, T]`` response mask.
      cap: ``C >= 1``.

    Returns:
      ``(w [B, T] float32, aux)`` with ``aux["logprob/tis_truncated"]``, the share of
      response tokens whose weight was capped, and ``aux["logprob/tis_weight_mean"]``.
    """
    check_scalar("cap", cap, low=1.0)
    check_token_inputs(trainer_logps, mask, {"sampler_logps": sampler_logps})
    m = as_float_mask(mask)
    d = jax.lax.stop_gradient(trainer_logps.astype(jnp.float32) - sampler_logps.astype(jnp.float32))
    log_cap = math.log(cap)
    w = jnp.exp(jnp.clip(d, -MAX_LOG_RATIO, log_cap))
    aux = {
        "logprob/tis_truncated": masked_mean((d > log_cap).astype(jnp.float32), m),
        "logprob/tis_weight_mean": masked_mean(w, m),
    }
    return w, aux


def _wrapper(preset: str):
    def loss_fn(
        logps: Array, old_logps: Array, mask: Array, advantages: Array, **kwargs: object
    ) -> tuple[Array, dict[str, Array]]:
        if "preset" in kwargs:
            raise TypeError(f"{preset}_loss sets preset={preset!r}; do not pass preset=.")
        return grpo_loss(logps, old_logps, mask, advantages, preset=preset, **kwargs)

    loss_fn.__name__ = loss_fn.__qualname__ = f"{preset}_loss"
    return loss_fn


dapo_loss = _wrapper("dapo")
dapo_loss.__doc__ = """DAPO loss: :func:`grpo_loss` with ``preset="dapo"``.

Clip-higher (``clip_low=0.2``, ``clip_high=0.28``), no KL term, ``agg="token-mean"``
(Yu et al. 2025, `DAPO <https://arxiv.org/abs/2503.14476>`_). Same positional arguments
(``logps, old_logps, mask, advantages``) and keywords as :func:`grpo_loss`, except
``preset``. Dynamic sampling and overlong shaping belong to the trainer and the rewards.
"""

dr_grpo_loss = _wrapper("dr_grpo")
dr_grpo_loss.__doc__ = """Dr.GRPO loss: :func:`grpo_loss` with ``preset="dr_grpo"``.

``agg="seq-mean-token-sum-norm"`` (token sums divided by the constant ``max_len``, default
``T``: pass the generation budget), no KL term, clip 0.2 (Liu et al. 2025,
`Understanding R1-Zero-Like Training <https://arxiv.org/abs/2503.20783>`_). Pair it with
``group_advantages(..., method="dr_grpo")`` (no std scaling). Same positional arguments
and keywords as :func:`grpo_loss`, except ``preset``.
"""

gspo_loss = _wrapper("gspo")
gspo_loss.__doc__ = """GSPO loss: :func:`grpo_loss` with ``preset="gspo"``.

Sequence-level importance ratio ``exp(mean_t (log pi - log pi_old))``, clipping ranges
3e-4 / 4e-4, ``agg="seq-mean-token-mean"``, no KL term (Zheng et al. 2025,
`Group Sequence Policy Optimization <https://arxiv.org/abs/2507.18071>`_). Same
positional arguments and keywords as :func:`grpo_loss`, except ``preset``.
"""
