"""The objectives a step can train: ``name -> Objective`` and the micro-batch losses.

**Adding an algorithm** is one `Objective` entry in `RL_OBJECTIVES` here (its loss
on ``logps [b, M]`` and a micro-batch, and whether it reads reference log-probs and group
advantages), one row in `giftjax.train.plan.PLAN_ROWS` (its family), and its name in the
config's choice list (``giftjax.train.config.ALGOS``). The Trainer, the AOT programs and the
update builders then follow the run plan; nothing else branches on the name.

Every loss is exact under micro-batching: it returns ``aux["numerator"]`` and
``aux["denominator"]``, and [`accumulate_grads`][giftjax.train.accumulate_grads] divides once over
the whole batch (micro-batches hold whole groups, so GIFT's and GRPO's group statistics are
unchanged).

``rollout.old_logps`` picks pi_old of the GRPO family. ``"recompute"`` (default): the
trainer's log-probs of the rollout batch, one extra forward pass before the first update when
``train.updates_per_rollout > 1`` (with one update the policy IS pi_old and the ratio is
exactly 1: no pass). ``"sampler"``: the sampler's log-probs, no pass: each token's policy term
is weighted by the truncated importance weight ``w = min(exp(logp - sampler_logp), C)`` (``C =
rollout.tis_cap``, no gradient through ``w``) with the ratio taken at the current weights
(value 1, gradient ``grad log pi``), i.e. the gradient ``w A grad log pi``. On the first
update after sampling ``logp`` is the trainer's pi_old, so ``w`` corrects the
training-inference mismatch alone; on later updates it also carries the policy's own drift
since sampling, bounded by ``C`` in place of PPO's clip. GIFT's implicit reward always uses the
trainer's own log-probs. Metrics: ``logprob/mismatch`` and ``logprob/tis_truncated``.

Shape letters: b rows of one micro-batch, T = Tp + M tokens per row, M response tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import Mesh

from giftjax import losses
from giftjax.train.logprobs import logps_fn

Array = jax.Array
Batch = Mapping[str, Array]
LossOut = tuple[Array, dict[str, Array]]
RLLoss = Callable[[Array, Batch, ml_collections.FrozenConfigDict], LossOut]


@dataclasses.dataclass(frozen=True)
class Objective:
    """An RL objective: its loss and what its batch must carry.

    Attributes:
      loss: ``(logps [b, M], mb, settings) -> (loss, aux)``; ``mb`` holds ``resp_mask`` [b, M],
        ``rewards`` [b], and whichever of ``advantages`` [b], ``old_logps``, ``ref_logps``,
        ``sampler_logps`` [b, M] the run plan puts in the batch.
      uses_reference: ``config -> bool``, whether the loss reads reference log-probs (GIFT's
        implicit reward; a GRPO-family KL term).
      advantage: ``config -> str | None``, the ``losses.group_advantages`` method of the
        batch's ``advantages`` (None: the loss takes none).
      sampler_pi_old: with ``rollout.old_logps="sampler"`` pi_old is the sampler's log-probs,
        so no pi_old pass runs for the ratio.
    """

    loss: RLLoss
    uses_reference: Callable[[ml_collections.ConfigDict], bool]
    advantage: Callable[[ml_collections.ConfigDict], str | None]
    sampler_pi_old: bool


def _gift(logps: Array, mb: Batch, s: ml_collections.FrozenConfigDict) -> LossOut:
    # The implicit reward k = sum_t (logps - ref) always uses the trainer's own log-probs
    # (the recomputed pi_old, the initial model, or the current policy), never the sampler's,
    # whatever rollout.old_logps says: no importance weight enters GIFT's regression.
    kw: dict[str, Any] = {"group_size": s.rollout.group_size, "beta": s.algo.gift.beta}
    if s.algo.gift.preset:
        kw["preset"] = s.algo.gift.preset
    if s.algo.gift.std_floor is not None:
        kw["std_floor"] = s.algo.gift.std_floor
    ref = mb["ref_logps"] if "ref_logps" in mb else jax.lax.stop_gradient(logps)
    return losses.gift_loss(logps, ref, mb["resp_mask"], mb["rewards"], **kw)


def grpo_uses_kl(config: ml_collections.ConfigDict, preset: str) -> bool:
    """Whether the GRPO-family loss ``preset`` has a KL term (``algo.grpo.kl_coef``, else the
    preset's)."""
    kl = config.algo.grpo.kl_coef
    if kl is None:
        kl = losses.grpo.GRPO_PRESETS[preset].get("kl_coef", 0.0)
    return bool(kl)


def _grpo_family(preset: str) -> RLLoss:
    def loss(logps: Array, mb: Batch, s: ml_collections.FrozenConfigDict) -> LossOut:
        g = s.algo.grpo
        # The preset's published values, then the config's explicit ones on top. (Passing
        # both to grpo_loss(preset=...) would drop an override equal to grpo_loss's own
        # default, e.g. agg="token-mean" or kl_coef=0.0 under the grpo preset.)
        kw: dict[str, Any] = {
            **losses.grpo.GRPO_PRESETS[preset],
            "max_len": s.rollout.max_new_tokens,
        }
        for key in ("clip_low", "clip_high", "kl_coef", "agg"):
            if g[key] is not None:
                kw[key] = g[key]
        # pi_old: recomputed before the first update, or the current policy itself when there
        # is one update per rollout batch (the ratio is then exactly 1; no extra pass).
        old = mb["old_logps"] if "old_logps" in mb else jax.lax.stop_gradient(logps)
        extra: dict[str, Array] = {}
        if s.rollout.old_logps == "sampler":
            # pi_old is the sampler: the ratio is taken at the current weights (value 1) and
            # the truncated weight min(exp(trainer - sampler), C) carries the correction from
            # the sampler to the trainer's policy (module docstring).
            old = jax.lax.stop_gradient(logps)
            kw["is_weights"], extra = losses.truncated_is_weights(
                logps, mb["sampler_logps"], mb["resp_mask"], cap=s.rollout.tis_cap
            )
        if "ref_logps" in mb:
            kw["ref_logps"] = mb["ref_logps"]
        elif kw.get("kl_coef"):
            kw["ref_logps"] = jax.lax.stop_gradient(logps)
        loss_value, aux = losses.grpo_loss(logps, old, mb["resp_mask"], mb["advantages"], **kw)
        return loss_value, {**aux, **extra}

    return loss


def _grpo_objective(preset: str, default_advantage: str = "grpo") -> Objective:
    return Objective(
        loss=_grpo_family(preset),
        uses_reference=lambda c: grpo_uses_kl(c, preset),
        advantage=lambda c: c.algo.grpo.advantage or default_advantage,
        sampler_pi_old=True,
    )


RL_OBJECTIVES: dict[str, Objective] = {
    "gift": Objective(
        loss=_gift, uses_reference=lambda c: True, advantage=lambda c: None, sampler_pi_old=False
    ),
    "grpo": _grpo_objective("grpo"),
    "dapo": _grpo_objective("dapo"),
    "dr_grpo": _grpo_objective("dr_grpo", default_advantage="dr_grpo"),  # mean-centred, unscaled
    "gspo": _grpo_objective("gspo"),
}


def get_objective(name: str) -> Objective:
    """The RL objective called ``name``; an unknown name lists the known ones."""
    if name not in RL_OBJECTIVES:
        raise ValueError(f"unknown RL objective {name!r}; known: {sorted(RL_OBJECTIVES)}.")
    return RL_OBJECTIVES[name]


# ------------------------------------------------------------------------------------------
# Micro-batch losses: (params, mb) -> (loss, aux), what accumulate_grads differentiates.
# ------------------------------------------------------------------------------------------


def _mismatch(logps: Array, mb: Batch) -> dict[str, Array]:
    """``logprob/mismatch``: mean |sampler log-prob - trainer log-prob| over response tokens
    (meaningful on the first update of a rollout batch, while the weights are the sampler's)."""
    if "sampler_logps" not in mb:
        return {}
    m = mb["resp_mask"]
    diff = jnp.abs(jax.lax.stop_gradient(logps) - mb["sampler_logps"]) * m
    return {"logprob/mismatch": jnp.sum(diff) / jnp.maximum(jnp.sum(m), 1.0)}


def rl_microbatch_loss(
    graphdef: nnx.GraphDef,
    config: ml_collections.ConfigDict,
    *,
    name: str,
    mesh: Mesh,
    prompt_len: int,
) -> Callable[[Any, Batch], LossOut]:
    """``(params, mb) -> (loss, aux)``: the RL objective ``name`` on one micro-batch of rollout
    rows (``tokens``, ``attn_mask`` [b, T]; ``resp_mask`` [b, M]; ``rewards`` [b]; the
    GRPO family's ``advantages`` [b]; optional ``old_logps``, ``ref_logps``,
    ``sampler_logps`` [b, M]), with ``logprob/mismatch`` added when ``sampler_logps`` is given.
    """
    settings = ml_collections.FrozenConfigDict(config.to_dict())  # hashable, read-only
    loss_fn = get_objective(name).loss
    logps_of = logps_fn(
        graphdef,
        prompt_len=prompt_len,
        temperature=config.rollout.temperature,
        mesh=mesh,
        rules=config.mesh.rules,
        group_size=config.rollout.group_size if config.train.share_prompts else 1,
    )

    def mb_loss(params, mb):
        logps = logps_of(params, mb["tokens"], mb["attn_mask"])
        loss, aux = loss_fn(logps, mb, settings)
        return loss, {**aux, **_mismatch(logps, mb)}

    return mb_loss


def sft_microbatch_loss(
    graphdef: nnx.GraphDef,
    *,
    prompt_len: int,
    weighting: str,
    mesh: Mesh,
    rules: Any,
) -> Callable[[Any, Batch], LossOut]:
    """``(params, mb) -> sft_loss`` on demonstration rows (``tokens``, ``attn_mask``,
    ``resp_mask``), teacher-forced at temperature 1."""
    logps_of = logps_fn(graphdef, prompt_len=prompt_len, temperature=1.0, mesh=mesh, rules=rules)

    def loss(params, mb):
        logps = logps_of(params, mb["tokens"], mb["attn_mask"])
        return losses.sft_loss(logps, mb["resp_mask"], weighting=weighting)

    return loss


def dpo_microbatch_loss(
    graphdef: nnx.GraphDef,
    config: ml_collections.ConfigDict,
    *,
    mesh: Mesh,
    prompt_len: int,
) -> Callable[[Any, Batch], LossOut]:
    """``(params, mb) -> dpo_loss`` on preference pairs: ``chosen_tokens``, ``chosen_attn``,
    ``rejected_tokens``, ``rejected_attn`` [b, T]; ``chosen_mask``, ``rejected_mask`` [b, M];
    ``ref_chosen``, ``ref_rejected`` [b] (sequence log-probs under the reference)."""
    d = config.algo.dpo
    logps_of = logps_fn(
        graphdef, prompt_len=prompt_len, temperature=1.0, mesh=mesh, rules=config.mesh.rules
    )

    def seq_logps(params, mb, side):
        lp = logps_of(params, mb[f"{side}_tokens"], mb[f"{side}_attn"])
        return losses.sequence_logps(lp, mb[f"{side}_mask"])

    def loss(params, mb):
        return losses.dpo_loss(
            seq_logps(params, mb, "chosen"),
            seq_logps(params, mb, "rejected"),
            mb["ref_chosen"],
            mb["ref_rejected"],
            beta=d.beta,
            loss_type=d.loss_type,
            label_smoothing=d.label_smoothing,
        )

    return loss
