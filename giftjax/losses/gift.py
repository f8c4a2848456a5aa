"""GIFT: Group-relative Implicit Fine-Tuning (arXiv 2510.23868).

GIFT samples G responses per prompt (as GRPO does), takes DPO's implicit reward
``beta * log pi/pi_ref`` and UNA's reward matching, and z-scores both the explicit and
the implicit rewards within each group. Normalising cancels the intractable
``log Z(x)`` of the implicit reward, and the loss is a mean squared error between them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from giftjax import kernels
from giftjax.losses import common

Array = jax.Array

ZERO_VAR_MODES = ("keep", "drop")

# The released GIFT code (README, "GIFT's safe default"): sample std, eps 1e-6 added to the std,
# stop-gradient on the implicit rewards' mean and std, zero-variance reward groups kept
# (target 0), and no floor on the std.
_PRESETS = {
    "author": {
        "eps": 1e-6,
        "ddof": 1,
        "stop_grad_stats": True,
        "std_floor": 0.0,
        "zero_var_groups": "keep",
    }
}

# Safe default floor on std_g(k), in nats of summed log-ratio. Spreads of implicit reward
# seen after a real update are about 0.1 to 10 nats (hundreds of tokens, per-token
# log-ratios of 1e-3 to 1e-2), so 0.01 leaves them untouched and only bounds the
# degenerate groups (all k equal: the first update with pi_old as the reference).
DEFAULT_STD_FLOOR = 1e-2


def gift_loss(
    logps: Array,
    ref_logps: Array,
    mask: Array,
    rewards: Array,
    *,
    group_size: int,
    beta: float = 1.0,
    eps: float = 1e-6,
    ddof: int = 1,
    stop_grad_stats: bool = True,
    preset: str | None = None,
    std_floor: float = DEFAULT_STD_FLOOR,
    zero_var_groups: str = "keep",
) -> tuple[Array, dict[str, Array]]:
    r"""The GIFT loss: squared error between normalised explicit and implicit rewards.

    For a batch of ``B = P * G`` sequences (prompt ``g`` owns rows ``g*G .. g*G+G-1``):

    $$
    A_i = \frac{r_i - \mathrm{mean}_g r}{\mathrm{std}_g r + \epsilon}, \qquad
    k_i = \sum_t m_{it} (\log\pi(y_{it}) - \log\pi_{ref}(y_{it})),
    $$

    $$
    z_i = \frac{k_i - \mathrm{mean}_g k}{\max(\mathrm{std}_g k, f) + \epsilon}, \qquad
    L = \frac{1}{B} \sum_i (A_i - \beta z_i)^2,
    $$

    with ``std`` over the ``G`` members using ``ddof`` (1: sample std) and ``f`` the
    ``std_floor``. ``k`` is a sum over tokens (no length normalisation). Which policy is
    ``pi_ref`` is the caller's choice: the rollout policy ``pi_old`` (the released code) or
    the frozen initial model (the paper's DPO-style definition).

    Population minimisers: ``L`` is minimised by the GRPO/RLHF family
    ``pi(y|x) ∝ pi_ref(y|x) exp(r(x, y) / beta(x))`` with a prompt-adaptive temperature
    ``beta(x) = std(r) / std(k)``: any such policy gives ``z = A / beta`` exactly.

    Safe default (``preset=None``): with ``pi_old`` as reference, ``k = 0`` for every
    sequence on the first update of a step, ``std_g k = 0`` and the released code's
    gradient is scaled by ``1/eps`` (10^6). Here the denominator uses
    ``max(std_g k, std_floor)``, which bounds it: at ``logps == ref_logps``,

    $$
    \|\nabla_{\log\pi} L\|_2 \le \frac{2 \beta}{f + \epsilon} \sqrt{T / B},
    $$

    with ``T`` the number of token positions (the bound holds with or without
    ``stop_grad_stats``; with ddof=1, ``sum_i A_i^2 <= B``). A floor changes nothing for a
    group whose implicit rewards spread more than ``std_floor`` nats. With one update per
    rollout batch and ``pi_old`` as reference every update is this degenerate case and
    GIFT is a rescaled GRPO step: take several updates per rollout batch (the released
    code takes 4) or use the initial model as reference.

    Micro-batches must hold whole groups (the statistics are per group); then summing
    ``aux["numerator"]`` and ``aux["denominator"]`` over micro-batches is exact.

    Args:
      logps: ``[B, T]`` per-token log-probs of the responses under the current policy.
      ref_logps: ``[B, T]`` the same under the reference policy (no gradient needed).
      mask: ``[B, T]`` response-token mask (bool, int or float 0/1).
      rewards: ``[B]`` explicit rewards.
      group_size: ``G``, samples per prompt; ``B`` must be a multiple.
      beta: weight of the normalised implicit reward.
      eps: added to both stds.
      ddof: 1 (sample std) or 0 (population std), for both normalisations.
      stop_grad_stats: stop the gradient through ``mean_g k`` and ``std_g k``.
      preset: ``None`` (safe default) or ``"author"`` (the released code exactly:
        ``std_floor=0``, ``eps=1e-6``, ``ddof=1``, stop-gradient statistics, zero-variance
        reward groups kept). An argument that conflicts with the preset raises.
      std_floor: ``f``, the floor on ``std_g k`` in the denominator (0 disables it).
      zero_var_groups: ``"keep"`` (their ``A`` are 0, the loss pulls ``z`` towards 0, as
        the released code does) or ``"drop"`` (excluded from numerator and denominator).

    Returns:
      ``(loss, aux)``; ``aux`` holds ``numerator``, ``denominator`` (rows counted),
      ``gift/implicit_reward_mean`` (mean of ``beta k``), ``gift/implicit_reward_group_std``
      (mean over groups of ``std_g k``), ``gift/reward_group_std`` (mean over groups of
      ``std_g r``), ``gift/alignment`` (mean of
      ``A z``: 1 when the two rankings agree with ddof=0), ``gift/floored_frac``
      (fraction of groups whose ``std_g k`` is below the floor) and
      ``gift/zero_var_frac`` (fraction of groups whose rewards are all equal).

    References:
      Wang, [GIFT: Group-relative Implicit Fine Tuning](https://arxiv.org/abs/2510.23868),
      2025.
      Rafailov et al., [Direct Preference Optimization](https://arxiv.org/abs/2305.18290),
      2023. Wang et al., [UNA](https://arxiv.org/abs/2408.15339), 2024.
    """
    common.check_token_inputs(logps, mask, {"ref_logps": ref_logps})
    common.check_per_sequence("rewards", rewards, logps.shape[0])
    common.check_group_size(group_size, logps.shape[0])
    given = {
        "eps": eps,
        "ddof": ddof,
        "stop_grad_stats": stop_grad_stats,
        "std_floor": std_floor,
        "zero_var_groups": zero_var_groups,
    }
    opts = common.apply_preset(gift_loss, preset, _PRESETS, given)
    common.check_choice("zero_var_groups", opts["zero_var_groups"], ZERO_VAR_MODES)
    if opts["std_floor"] < 0:
        raise ValueError(f"std_floor must be >= 0, got {opts['std_floor']!r}.")

    k = common.implicit_reward(logps, jax.lax.stop_gradient(ref_logps), mask)  # [B]
    rewards = jax.lax.stop_gradient(rewards.astype(jnp.float32))

    adv, _, reward_std = kernels.group_normalize(
        rewards, group_size=group_size, eps=opts["eps"], ddof=opts["ddof"]
    )  # adv: [B], reward_std: [P]
    z, _, k_std = kernels.group_normalize(
        k,
        group_size=group_size,
        eps=opts["eps"],
        ddof=opts["ddof"],
        stop_grad_stats=opts["stop_grad_stats"],
        std_floor=opts["std_floor"],
    )  # z: [B], k_std: [P]

    zero_var = reward_std == 0  # [P]
    if opts["zero_var_groups"] == "drop":
        row_weight = jnp.repeat(1.0 - zero_var.astype(jnp.float32), group_size)  # [B]
    else:
        row_weight = jnp.ones_like(adv)
    sq_err = jnp.square(adv - beta * z)  # [B]
    numerator = jnp.sum(sq_err * row_weight)
    denominator = jnp.sum(row_weight)

    k_std = jax.lax.stop_gradient(k_std)
    metrics = {
        "gift/implicit_reward_mean": jax.lax.stop_gradient(beta * jnp.mean(k)),
        "gift/implicit_reward_group_std": jnp.mean(k_std),
        "gift/reward_group_std": jnp.mean(reward_std),
        "gift/alignment": jax.lax.stop_gradient(jnp.mean(adv * z)),
        "gift/floored_frac": jnp.mean((k_std < opts["std_floor"]).astype(jnp.float32)),
        "gift/zero_var_frac": jnp.mean(zero_var.astype(jnp.float32)),
    }
    return common.finish(numerator, denominator, metrics)
