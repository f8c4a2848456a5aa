"""Direct Preference Optimization on (chosen, rejected) pairs: sigmoid, IPO and hinge losses.

Shape letters: ``B`` preference pairs. Inputs are per-pair sequence log-probs (sum over
the response tokens, e.g. ``giftjax.losses.sequence_logps``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from giftjax.losses._hyper import check_scalar, is_number
from giftjax.losses.common import check_choice, check_float, check_per_sequence, finish

Array = jax.Array

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge")


def dpo_loss(
    chosen_logps: Array,
    rejected_logps: Array,
    ref_chosen_logps: Array,
    ref_rejected_logps: Array,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[Array, dict[str, Array]]:
    r"""DPO loss and its IPO and hinge variants, averaged over preference pairs.

    With the implicit-reward margin of pair ``i``

    $$
    h_i = (\log\pi(y^c_i) - \log\pi_{ref}(y^c_i)) - (\log\pi(y^r_i) - \log\pi_{ref}(y^r_i))
    $$

    the per-pair loss is

    - ``sigmoid`` (DPO; conservative DPO with ``label_smoothing = ls``):
      ``-(1 - ls) log sigmoid(beta h) - ls log sigmoid(-beta h)``, via ``log_sigmoid``
      so it is finite for any margin;
    - ``ipo``: ``(h - 1 / (2 beta))^2`` (here ``h`` uses the log-probs as given: pass
      per-token means for IPO's length-normalised form);
    - ``hinge`` (SLiC): ``relu(1 - beta h)``.

    Args:
      chosen_logps: ``[B]`` sequence log-probs of the chosen responses, current policy.
      rejected_logps: ``[B]`` the same for the rejected responses.
      ref_chosen_logps: ``[B]`` chosen responses under the reference policy.
      ref_rejected_logps: ``[B]`` rejected responses under the reference policy.
      beta: inverse temperature (> 0).
      loss_type: ``"sigmoid"``, ``"ipo"`` or ``"hinge"``.
      label_smoothing: ``ls`` in ``[0, 0.5]``, the assumed rate of flipped labels
        (``sigmoid`` only).

    Returns:
      ``(loss, aux)`` with ``loss = aux["numerator"] / aux["denominator"]``, the numerator
      the sum of per-pair losses and the denominator ``B``. ``aux`` also has
      ``dpo/reward_accuracy`` (share of pairs with ``h > 0``), ``dpo/chosen_reward`` and
      ``dpo/rejected_reward`` (means of the implicit rewards ``beta (log pi - log pi_ref)``)
      and ``dpo/margin`` (mean of ``beta h``).

    References:
      Rafailov et al., [Direct Preference Optimization: Your Language Model is Secretly a
      Reward Model](https://arxiv.org/abs/2305.18290), 2023.
      Mitchell, [A note on DPO with noisy preferences and relationship to
      IPO](https://ericmitchell.ai/cdpo.pdf), 2023 (conservative DPO).
      Azar et al., [A General Theoretical Paradigm to Understand Learning from Human
      Preferences](https://arxiv.org/abs/2310.12036), 2023 (IPO).
      Zhao et al., [SLiC-HF: Sequence Likelihood Calibration with Human
      Feedback](https://arxiv.org/abs/2305.10425), 2023 (hinge).
    """
    check_float("chosen_logps", chosen_logps, 1, shape_doc="[B]")
    batch = chosen_logps.shape[0]
    check_per_sequence("rejected_logps", rejected_logps, batch)
    check_per_sequence("ref_chosen_logps", ref_chosen_logps, batch)
    check_per_sequence("ref_rejected_logps", ref_rejected_logps, batch)
    check_choice("loss_type", loss_type, DPO_LOSS_TYPES)
    check_scalar("beta", beta, low=0.0, low_inclusive=False)
    check_scalar("label_smoothing", label_smoothing, low=0.0, high=0.5)
    if is_number(label_smoothing) and label_smoothing != 0 and loss_type != "sigmoid":
        raise ValueError(
            f"label_smoothing={label_smoothing!r} applies to loss_type='sigmoid' only, "
            f"got loss_type={loss_type!r}."
        )

    f32 = jnp.float32
    chosen_ratio = chosen_logps.astype(f32) - ref_chosen_logps.astype(f32)  # [B]
    rejected_ratio = rejected_logps.astype(f32) - ref_rejected_logps.astype(f32)  # [B]
    h = chosen_ratio - rejected_ratio  # [B]

    if loss_type == "sigmoid":
        per_pair = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(
            beta * h
        ) - label_smoothing * jax.nn.log_sigmoid(-beta * h)
    elif loss_type == "ipo":
        per_pair = jnp.square(h - 1.0 / (2.0 * beta))
    else:
        per_pair = jax.nn.relu(1.0 - beta * h)

    metrics = {
        "dpo/reward_accuracy": jnp.mean((h > 0).astype(f32)),
        "dpo/chosen_reward": jnp.mean(beta * chosen_ratio),
        "dpo/rejected_reward": jnp.mean(beta * rejected_ratio),
        "dpo/margin": jnp.mean(beta * h),
    }
    return finish(jnp.sum(per_pair), jnp.asarray(batch, f32), metrics)
