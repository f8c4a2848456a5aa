"""The run plan: which passes a step runs, decided once from the config.

`RunPlan.from_config` reads the config and the device count and decides everything the
Trainer (``giftjax.train.loop``) and the abstract programs (``giftjax.train.programs``, behind
``giftjax.aot``) must agree on: the family of ``algo.name``, the RL objective, whether a pi_old
or a reference log-prob pass runs, whether the train state keeps a reference copy, the number
of optimiser updates, the keys of each update's batches and how many prompt rows the sampler
runs. Neither of them branches on ``algo.name`` again.

**Adding an algorithm** is one row in `PLAN_ROWS` here (its family and RL objective), one
`giftjax.train.objectives.Objective` entry in ``objectives.RL_OBJECTIVES`` (for an RL
objective), and its name in the config's choice list (``giftjax.train.config.ALGOS``).

Shape letters: P prompts per step, G samples per prompt; u = ``train.updates_per_rollout`` (a
count without a shape letter: U is the micro-batch count).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import ml_collections
from jax.sharding import Mesh

from giftjax import sharding as sharding_lib
from giftjax.train import config as config_lib
from giftjax.train.objectives import get_objective

Family = Literal["rl", "dpo", "sft", "hybrid"]

# algo.name -> (family, RL objective). "hybrid" takes its RL objective from algo.hybrid.rl.
PLAN_ROWS: dict[str, tuple[Family, str | None]] = {
    "gift": ("rl", "gift"),
    "grpo": ("rl", "grpo"),
    "dapo": ("rl", "dapo"),
    "dr_grpo": ("rl", "dr_grpo"),
    "gspo": ("rl", "gspo"),
    "hybrid": ("hybrid", None),
    "dpo": ("dpo", None),
    "sft": ("sft", None),
}

# The keys of each kind of batch an update takes (after the train state).
ROLLOUT_KEYS = ("tokens", "attn_mask", "resp_mask", "rewards", "sampler_logps")
DEMO_KEYS = ("tokens", "attn_mask", "resp_mask")
DPO_KEYS = (
    *(f"{side}_{k}" for side in ("chosen", "rejected") for k in ("tokens", "attn", "mask")),
    "ref_chosen",
    "ref_rejected",
)


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What one run does, step by step (frozen, hashable).

    Attributes:
      algo: ``algo.name``.
      family: ``"rl"`` (sample, score, update), ``"hybrid"`` (RL plus an SFT branch under
        GAC), ``"dpo"`` (preference pairs) or ``"sft"`` (demonstrations).
      rl_loss: the RL objective (``algo.name``, or ``algo.hybrid.rl``); None for dpo and sft.
      needs_old: a pi_old log-prob pass over the rollout rows before the first update (several
        updates per rollout, unless pi_old is the sampler's and no KL to pi_old needs it).
      needs_ref: a reference log-prob pass under the initial model (RL rows, or DPO's pairs).
      ref_from_old: the RL reference is pi_old (``algo.reference="old"``): ``ref_logps`` are
        the pi_old pass's log-probs.
      keeps_reference: the train state keeps a frozen copy of the initial weights (not with
        LoRA, whose reference is the base with the adapters off).
      lora: only LoRA adapters train (``model.lora.rank > 0``).
      advantage: the group-advantage method of the batch's ``advantages``; None: no key.
      warmup_steps, steps: SFT warm-up steps, then ``train.steps`` steps of ``algo``.
      updates_per_step: optimiser updates per step after the warm-up (u for rl and hybrid).
      logps_group_size: the group size log-prob passes over rollout rows share prompts over.
      update_batches: the keys of each batch the update takes after the state: rollout rows
        (rl), rollout rows and demonstrations (hybrid), pairs (dpo), demonstrations (sft).
      prompts, samples: P and G of a rollout (G is 1 for dpo and sft).
      data_ways: the mesh's data x fsdp size (how many ways batch rows split).
    """

    algo: str
    family: Family
    rl_loss: str | None
    needs_old: bool
    needs_ref: bool
    ref_from_old: bool
    keeps_reference: bool
    lora: bool
    advantage: str | None
    warmup_steps: int
    steps: int
    updates_per_step: int
    logps_group_size: int
    update_batches: tuple[tuple[str, ...], ...]
    prompts: int
    samples: int
    data_ways: int

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, num_devices: int) -> RunPlan:
        """The plan of ``config`` on ``num_devices`` devices (``config.mesh``, -1 resolved)."""
        sizes = config_lib.mesh_shape(config, num_devices)
        return cls._build(config, data_ways=sizes["data"] * sizes["fsdp"])

    @classmethod
    def for_mesh(cls, config: ml_collections.ConfigDict, mesh: Mesh) -> RunPlan:
        """The plan of ``config`` on an explicit ``mesh`` (whatever ``config.mesh`` says)."""
        return cls._build(config, data_ways=sharding_lib.data_ways(mesh))

    @classmethod
    def _build(cls, config: ml_collections.ConfigDict, *, data_ways: int) -> RunPlan:
        c = config
        name = c.algo.name
        if name not in PLAN_ROWS:
            raise config_lib.ConfigError(
                f"config.algo.name={name!r} has no run plan; choose one of {tuple(PLAN_ROWS)}."
            )
        family, rl_loss = PLAN_ROWS[name]
        if family == "hybrid":
            rl_loss = c.algo.hybrid.rl
        sampling = family in ("rl", "hybrid")
        u = c.train.updates_per_rollout if sampling else 1
        needs_old = needs_ref = ref_from_old = False
        advantage = None
        if rl_loss is not None:
            obj = get_objective(rl_loss)
            wants_ref = obj.uses_reference(c)
            sampler_old = c.rollout.old_logps == "sampler" and obj.sampler_pi_old
            ref_is_old = wants_ref and c.algo.reference == "old"
            # With one update per rollout the policy is pi_old (ratio 1, no pass); a sampler
            # pi_old needs the pass only as the reference of a KL to pi_old.
            needs_old = u > 1 and (not sampler_old or ref_is_old)
            needs_ref = wants_ref and c.algo.reference == "initial"
            ref_from_old = ref_is_old and needs_old
            advantage = obj.advantage(c)
        # DPO's implicit reward is always measured against the initial model.
        initial = family == "dpo" or (c.algo.reference == "initial" and sampling)
        needs_ref = needs_ref or family == "dpo"
        lora = c.model.lora.rank > 0
        rollout_keys = ROLLOUT_KEYS + tuple(
            k
            for k, on in (
                ("advantages", advantage is not None),
                ("old_logps", needs_old),
                ("ref_logps", needs_ref or ref_from_old),
            )
            if on
        )
        batches = {
            "rl": (rollout_keys,),
            "hybrid": (rollout_keys, DEMO_KEYS),
            "dpo": (DPO_KEYS,),
            "sft": (DEMO_KEYS,),
        }[family]
        return cls(
            algo=name,
            family=family,
            rl_loss=rl_loss,
            needs_old=needs_old,
            needs_ref=needs_ref,
            ref_from_old=ref_from_old,
            keeps_reference=initial and not lora,
            lora=lora,
            advantage=advantage,
            warmup_steps=int(c.train.warmup_sft_steps),
            steps=int(c.train.steps),
            updates_per_step=int(u),
            logps_group_size=int(c.rollout.group_size) if c.train.share_prompts else 1,
            update_batches=batches,
            prompts=int(c.rollout.prompts_per_step),
            samples=int(c.rollout.group_size) if sampling else 1,
            data_ways=int(data_ways),
        )

    # --- derived -----------------------------------------------------------------------

    @property
    def samples_rollouts(self) -> bool:
        """Whether each step samples a rollout (rl and hybrid)."""
        return self.family in ("rl", "hybrid")

    @property
    def batch_keys(self) -> tuple[str, ...]:
        """The keys of the update's first batch (rollout rows, pairs or demonstrations)."""
        return self.update_batches[0]

    @property
    def total_steps(self) -> int:
        return self.warmup_steps + self.steps

    @property
    def total_updates(self) -> int:
        """Optimiser updates of the whole run (the learning-rate schedule's length)."""
        return self.updates_before(self.total_steps)

    def updates_before(self, step: int) -> int:
        """Optimiser updates made before ``step`` (warm-up steps make one each)."""
        w = min(step, self.warmup_steps)
        return w + max(step - self.warmup_steps, 0) * self.updates_per_step

    @property
    def sampled_prompt_rows(self) -> int:
        """The prompt rows the sampler runs in a single-process run: P, padded with dummy
        prompts to a multiple of data x fsdp when the P x G rows do not divide over it."""
        return sharding_lib.sampled_prompts(self.prompts, self.samples, self.data_ways)

    @property
    def rows_per_update(self) -> tuple[int, ...]:
        """Rows of each of the update's batches: P*G/u rollout rows, P/u demonstrations
        (hybrid); P pairs or demonstrations (dpo, sft)."""
        u = self.updates_per_step
        rows = {"rl": (self.prompts * self.samples // u,)}
        rows["hybrid"] = (*rows["rl"], self.prompts // u)
        return rows.get(self.family, (self.prompts,))

    @property
    def logps_passes(self) -> tuple[str, ...]:
        """The no-gradient log-prob passes of a step after the warm-up, in order:
        ``old_logps`` (rollout rows, policy), ``ref_logps`` (rollout rows, initial model) and
        ``ref_pairs`` (DPO's chosen and rejected rows, initial model)."""
        if self.family == "dpo":
            return ("ref_pairs",)
        return tuple(
            k for k, on in (("old_logps", self.needs_old), ("ref_logps", self.needs_ref)) if on
        )

    @property
    def logps_calls(self) -> int:
        """How many times a step calls the log-prob program: once per rollout pass, twice for
        DPO's reference (the chosen and the rejected rows)."""
        return 2 if self.family == "dpo" else len(self.logps_passes)

    @property
    def passes(self) -> tuple[str, ...]:
        """Every device pass of a step after the warm-up, in order (``sampler``, the log-prob
        passes, ``update``); the warm-up steps run ``("update",)`` of SFT."""
        return (*(("sampler",) if self.samples_rollouts else ()), *self.logps_passes, "update")

    def check_processes(self, count: int) -> None:
        """In a run of ``count`` processes each reads P / count prompts per step and must hold
        whole rows of every batch: data x fsdp must divide by ``count`` and P by data x fsdp."""
        if count == 1:
            return
        p, ways = self.prompts, self.data_ways
        if ways % count or p % ways:
            raise config_lib.ConfigError(
                f"rollout.prompts_per_step={p} with data x fsdp = {ways} on {count} processes: "
                f"a multi-host run needs data x fsdp to be a multiple of the process count and "
                "prompts_per_step a multiple of data x fsdp, so that each host samples, "
                "decodes and scores whole prompts of its own (config.mesh)."
            )

    @property
    def builds_sft_update(self) -> bool:
        """Whether the run needs the SFT update (the sft algorithm, or a warm-up)."""
        return self.family == "sft" or self.warmup_steps > 0
