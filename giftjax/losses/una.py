"""UNA: alignment by matching an implicit score to binary feedback or a real-valued reward.

Shape letters: ``B`` sequences, ``T`` response tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from giftjax.losses._hyper import check_scalar
from giftjax.losses.common import (
    check_choice,
    check_per_sequence,
    check_token_inputs,
    finish,
    implicit_reward,
)

Array = jax.Array

UNA_KINDS = ("binary_mse", "binary_bce", "score_mse")


def una_loss(
    logps: Array,
    ref_logps: Array,
    mask: Array,
    target: Array,
    *,
    beta: float,
    kind: str = "binary_mse",
) -> tuple[Array, dict[str, Array]]:
    r"""UNA loss: the implicit score of each response regressed onto its feedback.

    The implicit reward is the policy/reference log-ratio summed over response tokens,
    squashed into a score in (0, 1):

    $$
    k_i = \sum_t m_{i,t} (\log\pi_{i,t} - \log\pi_{ref,i,t}), \qquad
    s_i = \sigma(\beta k_i)
    $$

    and the per-sequence loss, by ``kind``, with ``y_i = target[i]``:

    - ``binary_mse``: ``(s_i - y_i)^2`` with ``y_i in {0, 1}``, i.e. ``(s_i - 1)^2`` for a
      good response and ``s_i^2`` for a bad one;
    - ``binary_bce``: ``-y_i log s_i - (1 - y_i) log(1 - s_i)``, computed from the logit
      ``beta k_i`` with ``log_sigmoid`` so it is finite for any ``k_i``;
    - ``score_mse``: ``(s_i - sigma(r_i))^2`` with ``r_i = target[i]`` a real-valued reward.

    Binary kinds take the target as given (0/1 labels; soft labels in between are accepted
    and used as they are).

    Args:
      logps: ``[B, T]`` log-probs of the response tokens under the policy.
      ref_logps: ``[B, T]`` log-probs under the reference policy.
      mask: ``[B, T]`` response mask.
      target: ``[B]`` float: 0/1 feedback (binary kinds) or the reward ``r`` (score_mse).
      beta: scale of the implicit reward (> 0), required.
      kind: ``"binary_mse"``, ``"binary_bce"`` or ``"score_mse"``.

    Returns:
      ``(loss, aux)``: ``loss = aux["numerator"] / aux["denominator"]``, the sum of
      per-sequence losses over ``B``. ``aux`` also has ``una/implicit_reward_mean`` (mean
      of ``k``), ``una/score_mean`` (mean of ``s``) and ``una/target_mean``.

    References:
      Wang et al., [UNA: Unifying Alignments of RLHF/PPO, DPO and KTO by a Generalized
      Implicit Reward Function](https://arxiv.org/abs/2408.15339), 2024.
    """
    check_token_inputs(logps, mask, {"ref_logps": ref_logps})
    batch = logps.shape[0]
    check_per_sequence("target", target, batch)
    check_choice("kind", kind, UNA_KINDS)
    check_scalar("beta", beta, low=0.0, low_inclusive=False)

    k = implicit_reward(logps, ref_logps, mask)  # [B]
    logit = beta * k  # [B]
    s = jax.nn.sigmoid(logit)  # [B]
    y = target.astype(jnp.float32)  # [B]

    if kind == "binary_mse":
        per_seq = jnp.square(s - y)
    elif kind == "binary_bce":
        per_seq = -y * jax.nn.log_sigmoid(logit) - (1.0 - y) * jax.nn.log_sigmoid(-logit)
    else:
        per_seq = jnp.square(s - jax.nn.sigmoid(y))

    metrics = {
        "una/implicit_reward_mean": jnp.mean(k),
        "una/score_mean": jnp.mean(s),
        "una/target_mean": jnp.mean(y),
    }
    return finish(jnp.sum(per_seq), jnp.asarray(batch, jnp.float32), metrics)
