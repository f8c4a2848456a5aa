"""The run plan: the Trainer and the abstract programs behind ``giftjax.aot`` run the same passes.

For every algorithm x ``rollout.old_logps`` x updates per rollout, a Trainer runs one step
after its warm-up with every device program replaced by a recorder (the sampler returns rows of
the right shapes; nothing is compiled), and ``programs.programs`` builds the abstract programs
of the same config. Both must agree with each other and with the RunPlan: the sampler runs iff
a ``sampler`` program exists, a log-prob pass runs iff a ``logps`` program exists (as many
calls as the plan counts), and each update gets batches with the train program's keys and row
counts, ``plan.updates_per_step`` times.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import hybrid_gac_cpu, smoke_cpu
from giftjax import sharding as sharding_lib
from giftjax.train import config as config_lib
from giftjax.train import loop, objectives, programs
from giftjax.train import rollout as rollout_lib
from giftjax.train.plan import PLAN_ROWS, RunPlan

COMBOS = list(itertools.product(config_lib.ALGOS, config_lib.OLD_LOGPS, (1, 2)))


def _config(name: str, old_logps: str, updates: int, **algo):
    c = (hybrid_gac_cpu if name == "hybrid" else smoke_cpu).get_config("short")
    c.algo.name = name
    c.rollout.old_logps = old_logps
    c.rollout.prompts_per_step = 16
    c.rollout.group_size = 2
    c.rollout.max_new_tokens = 6
    c.train.updates_per_rollout = updates
    c.train.micro_batches = 2
    c.train.steps = 2
    c.train.warmup_sft_steps = 1
    c.data.eval_size = 8
    c.eval.every = 0
    c.log.samples = 0
    c.log.tensorboard = False
    c.log.progress = False
    for key, value in algo.items():
        section, field = key.split("__")
        c.algo[section][field] = value
    return c


def _fake_rollout(config, rows, **_):
    """A rollout of the right shapes (P*G rows), instead of sampling and scoring."""
    b, tp, m = len(rows) * config.rollout.group_size, config.data.max_prompt_len, 6
    z = np.zeros
    return rollout_lib.Rollout(
        tokens=jnp.ones((b, tp + m), jnp.int32),
        attn_mask=jnp.ones((b, tp + m), jnp.int32),
        resp_mask=jnp.ones((b, m), jnp.float32),
        sampler_logps=jnp.zeros((b, m), jnp.float32),
        rewards=jnp.zeros((b,), jnp.float32),
        host_rewards=z(b, np.float32),
        host_lengths=z(b, np.int64),
        prompts=[""] * len(rows),
        completions=[""] * b,
        columns={},
        per_fn={},
        reward_errors=0,
        seconds={"rollout": 0.0, "reward": 0.0},
    )


def _trainer_passes(trainer: loop.Trainer, monkeypatch) -> list[tuple]:
    """The passes the Trainer's post-warm-up step runs, in order: ``("sampler",)``,
    ``(logps pass, rows)``, ``("update", ((keys, rows), ...))``."""
    calls: list[tuple] = []

    def rollout(graphdef, params, rows, *, config, **kw):
        calls.append(("sampler",))
        return _fake_rollout(config, rows)

    def logps(name):
        def fn(params, tokens, attn):
            calls.append((name, tokens.shape[0]))
            tp = trainer.config.data.max_prompt_len
            return jnp.zeros((tokens.shape[0], tokens.shape[1] - tp))

        return fn

    def update(state, *batches):
        calls.append(("update", tuple((tuple(b), _rows(b)) for b in batches)))
        return state, {}

    monkeypatch.setattr(rollout_lib, "generate_rollout", rollout)
    trainer.logps, trainer.ref_logps = logps("old_logps"), logps("ref_logps")
    trainer.demo_ref_logps = logps("ref_pairs")
    trainer.update = update
    trainer.step(trainer.warmup)
    return calls


def _rows(batch) -> int:
    (rows,) = {int(x.shape[0]) for x in jax.tree.leaves(dict(batch))}
    return rows


@pytest.mark.parametrize(("name", "old_logps", "updates"), COMBOS)
def test_trainer_and_programs_run_the_same_passes(tmp_path, monkeypatch, name, old_logps, updates):
    c = _config(name, old_logps, updates)
    trainer = loop.Trainer(c, str(tmp_path))
    try:
        calls = _trainer_passes(trainer, monkeypatch)
    finally:
        trainer.close()
    mesh = sharding_lib.make_mesh(config_lib.mesh_shape(c, jax.device_count()))
    progs = {p.name: p for p in programs.programs(c, mesh)}
    plan = trainer.plan
    assert plan == RunPlan.from_config(c, jax.device_count())

    # The sampler and the log-prob passes.
    ran = [call[0] for call in calls if call[0] != "update"]
    assert ("sampler" in ran) == ("sampler" in progs) == plan.samples_rollouts
    passes = [p for p in ran if p != "sampler"]
    assert bool(passes) == ("logps" in progs), (passes, sorted(progs))
    assert len(passes) == plan.logps_calls
    assert tuple(dict.fromkeys(passes)) == plan.logps_passes
    assert (*dict.fromkeys(ran), "update") == plan.passes
    if "logps" in progs:
        rows = {r for call in calls if call[0] != "update" and len(call) > 1 for r in call[1:]}
        assert rows == {progs["logps"].args[1].shape[0]}

    # The updates: as many as the plan says, each with the train program's batches.
    updates_run = [call[1] for call in calls if call[0] == "update"]
    assert len(updates_run) == plan.updates_per_step
    train_batches = tuple((tuple(b), _rows(b)) for b in progs["train"].args[1:])
    for batches in updates_run:
        assert [(sorted(k), r) for k, r in batches] == [(sorted(k), r) for k, r in train_batches]
    assert tuple(tuple(k) for k, _ in train_batches) == plan.update_batches


@pytest.mark.parametrize("reference", ["old", "initial"])
def test_sampler_pi_old_keeps_the_pass_a_kl_to_pi_old_needs(reference):
    """GRPO with a KL term and the sampler's pi_old: the pi_old pass runs only as the KL's
    reference (algo.reference="old"); with the initial model as reference it is skipped."""
    c = _config("grpo", "sampler", 2, grpo__kl_coef=0.04)
    c.algo.reference = reference
    plan = RunPlan.from_config(c, jax.device_count())
    assert plan.needs_old == (reference == "old") == plan.ref_from_old
    assert plan.needs_ref == (reference == "initial")
    assert "ref_logps" in plan.batch_keys
    assert ("old_logps" in plan.batch_keys) == (reference == "old")


def test_plan_rows_cover_the_config_choices():
    """Adding an algorithm: a plan row, an objective (RL) and the config's choice lists agree."""
    assert set(PLAN_ROWS) == set(config_lib.ALGOS)
    rl = {n for n, (family, _) in PLAN_ROWS.items() if family in ("rl", "hybrid")}
    assert rl == set(config_lib.RL_ALGOS)
    assert {n for n, (family, _) in PLAN_ROWS.items() if family in ("dpo", "sft")} == set(
        config_lib.OFFLINE_ALGOS
    )
    named = {loss for _, loss in PLAN_ROWS.values() if loss is not None}
    assert named == set(objectives.RL_OBJECTIVES) == {"gift", *config_lib.GRPO_FAMILY}
    grpo = {n for n, o in objectives.RL_OBJECTIVES.items() if o.sampler_pi_old}
    assert grpo == set(config_lib.GRPO_FAMILY)


def test_unknown_algorithm_names_the_known_ones():
    c = _config("gift", "recompute", 1)
    c.algo.name = "ppo"
    with pytest.raises(config_lib.ConfigError, match=r"'ppo'.*'gift'"):
        RunPlan.from_config(c, jax.device_count())


def test_sampler_pi_old_with_several_updates_compiles_no_logps_program():
    """GRPO with the sampler's pi_old, two updates per rollout and no KL (the grpo preset's
    0.04 set to 0): the Trainer runs no
    pi_old pass, so the abstract programs (what ``giftjax.aot`` compiles) hold none either;
    with the trainer's own pi_old ("recompute") both have it."""
    mesh = sharding_lib.make_mesh(config_lib.mesh_shape(_config("grpo", "sampler", 2), 8))
    for old_logps, expected in (("sampler", ["train", "sampler"]), ("recompute", None)):
        c = _config("grpo", old_logps, 2, grpo__kl_coef=0.0)
        plan = RunPlan.from_config(c, jax.device_count())
        names = [p.name for p in programs.programs(c, mesh)]
        assert names == (expected or ["train", "logps", "sampler"])
        assert plan.needs_old == (old_logps == "recompute")
        assert ("old_logps" in plan.batch_keys) == plan.needs_old
