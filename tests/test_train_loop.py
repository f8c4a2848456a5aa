"""The training loop end to end: every algorithm on an FSDP mesh, bad input, reward failures.

In-process tests run on the 8 fake CPU devices of tests/conftest.py with an FSDP mesh
(fsdp = 8). The command-line tests (learning, SIGKILL + resume, SIGTERM) live in
tests/test_train_cli.py.
"""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest
import trainer_reward_fns

from configs import hybrid_gac_cpu, smoke_cpu
from giftjax.models import lora
from giftjax.train import config as config_lib
from giftjax.train import loop
from giftjax.workdir import read_jsonl


def tiny_config(name: str = "gift", **train):
    """The smoke recipe cut down to a few seconds of steps on 8 fake devices."""
    c = (hybrid_gac_cpu if name == "hybrid" else smoke_cpu).get_config("short")
    c.algo.name = name
    c.rollout.prompts_per_step = 16
    c.rollout.group_size = 2
    c.rollout.max_new_tokens = 6
    c.train.updates_per_rollout = 1
    c.train.micro_batches = 2
    c.train.steps = train.get("steps", 2)
    c.train.warmup_sft_steps = train.get("warmup", 1 if name != "hybrid" else 0)
    c.checkpoint.every = 100
    c.data.eval_size = 8
    c.eval.every = 0
    c.log.tensorboard = False
    c.log.progress = False
    return c


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["gift", "grpo", "dapo", "dr_grpo", "gspo", "hybrid", "dpo", "sft"]
)
def test_every_algorithm_trains_on_an_fsdp_mesh(tmp_path, name):
    assert jax.device_count() == 8
    c = tiny_config(name)
    c.mesh.fsdp = -1
    last = loop.train(c, str(tmp_path))
    rows = read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3][: c.train.steps + c.train.warmup_sft_steps]
    for r in rows:
        bad = {k: v for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)}
        assert not bad, (name, r["step"], bad)
    assert math.isfinite(last["loss"]) and last["params/norm"] > 0
    if name in config_lib.RL_ALGOS:
        assert 0.0 <= rows[-1]["reward/mean"] <= 1.0
        assert rows[-1]["grad/norm"] > 0
    if name == "hybrid":
        assert 0.05 <= rows[-1]["gac/mu"] <= 0.9 and "gac/prior" in rows[-1]
    # The final evaluation ran on both ranges of the synthetic task.
    assert {"eval/train/pass@1", "eval/heldout/pass@1"} <= set(last)


def test_failing_rewards_are_counted_logged_and_the_run_finishes(tmp_path):
    c = tiny_config("gift", steps=2, warmup=0)
    c.reward.weights["tests_flaky"] = 1.0  # besides "synthetic"
    c.reward.time_limit = 0.5
    try:
        loop.train(c, str(tmp_path))
    finally:
        trainer_reward_fns.RELEASE.set()
    rows = read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert len(rows) == 2 and all(r["reward/errors"] > 0 for r in rows)
    assert all(math.isfinite(r["reward/mean"]) for r in rows)
    assert "reward/tests_flaky" in rows[0] and "reward/synthetic" in rows[0]
    errors = [json.loads(x) for x in (tmp_path / "reward_errors.jsonl").read_text().splitlines()]
    kinds = {e["kind"] for e in errors}
    assert {"raised", "non_finite"} <= kinds, kinds
    assert all(e["reward"] == "tests_flaky" and "completion" in e for e in errors)
    # Every failed training call is in the log (the final evaluation's failures are too).
    assert len(errors) >= sum(r["reward/errors"] for r in rows)


def test_missing_data_file_names_the_path_and_key(tmp_path):
    c = tiny_config()
    c.data.source = "jsonl"
    c.data.path = str(tmp_path / "nope.jsonl")
    with pytest.raises((FileNotFoundError, ValueError), match=r"nope\.jsonl") as err:
        loop.Trainer(c, str(tmp_path / "run"))
    assert "data.path" in str(err.value)


def test_missing_checkpoint_folder_names_the_key_and_the_fix(tmp_path):
    c = tiny_config()
    c.model.hf_path = str(tmp_path / "no-checkpoint")
    needle = r"model\.hf_path=.*no-checkpoint.*giftjax\.export"
    with pytest.raises(config_lib.ConfigError, match=needle):
        loop.Trainer(c, str(tmp_path / "run"))


def test_empty_prompt_names_the_row(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "reverse 12 =", "answer": "21"}\n{"prompt": "", "answer": "1"}\n')
    c = tiny_config()
    c.data.source = "jsonl"
    c.data.path = str(path)
    with pytest.raises(ValueError, match="line 2") as err:
        loop.Trainer(c, str(tmp_path / "run"))
    assert "prompt" in str(err.value)


def test_tokenizer_without_pad_token_is_refused(tmp_path):
    from giftjax.data import build_tokenizer

    tok = build_tokenizer()
    tok.pad_token = None
    tok.save_pretrained(str(tmp_path / "tok"))
    c = tiny_config()
    c.model.tokenizer = str(tmp_path / "tok")
    with pytest.raises(ValueError, match="no pad token"):
        loop.Trainer(c, str(tmp_path / "run"))


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("algo.name", "ppo", "algo.name"),
        ("rollout.top_p", 1.5, "rollout.top_p"),
        ("train.updates_per_rollout", 3, "updates_per_rollout"),
        ("train.micro_batches", 3, "micro_batches"),
        ("rollout.temperature", 0.0, "temperature"),
    ],
)
def test_inconsistent_settings_name_the_key(key, value, match):
    c = tiny_config()
    section, field = key.split(".")
    c[section][field] = value
    with pytest.raises(config_lib.ConfigError, match=match):
        config_lib.validate(c, num_devices=8)


def test_rows_not_divisible_by_the_mesh_are_refused():
    c = tiny_config()
    c.rollout.prompts_per_step = 4  # 4 x 2 / 2 micro-batches = 4 rows on 8 data-parallel ways
    with pytest.raises(config_lib.ConfigError, match="data axes"):
        config_lib.validate(c, num_devices=8)


def test_evaluation_is_deterministic(tmp_path):
    c = tiny_config("gift", steps=1, warmup=0)
    trainer = loop.Trainer(c, str(tmp_path))
    first = trainer.evaluate(1)
    second = trainer.evaluate(1)
    trainer.close()
    assert first == second
    assert all(0.0 <= v <= 1.0 for v in first.values())
    assert np.isfinite(list(first.values())).all()


@pytest.mark.slow
def test_initial_reference_is_the_model_after_the_warm_up(tmp_path):
    c = tiny_config("gift", steps=1, warmup=2)
    c.algo.reference = "initial"
    tr = loop.Trainer(c, str(tmp_path))
    start = jax.device_get(tr.state.params)
    tr.step(0)
    np.testing.assert_array_equal(  # one warm-up step left: still the initial parameters
        jax.tree.leaves(jax.device_get(tr.state.ref_params))[0], jax.tree.leaves(start)[0]
    )
    tr.step(1)  # the last warm-up step: the reference becomes the warmed-up policy
    for ref, p in zip(
        jax.tree.leaves(jax.device_get(tr.state.ref_params)),
        jax.tree.leaves(jax.device_get(tr.state.params)),
        strict=True,
    ):
        np.testing.assert_array_equal(ref, p)
    tr.step(2)  # an RL step moves the policy, not the reference
    moved = [
        not np.array_equal(r, p)
        for r, p in zip(
            jax.tree.leaves(jax.device_get(tr.state.ref_params)),
            jax.tree.leaves(jax.device_get(tr.state.params)),
            strict=True,
        )
    ]
    assert any(moved)
    tr.close()


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_rollout_log_prob_passes_share_prompts(tmp_path, lora_rank):
    """The trainer's pi_old and reference passes over rollout rows run each prompt once per
    group (train.share_prompts): their compiled programs do fewer FLOPs than the same pass
    with group size 1. (With LoRA the reference is the base graphdef.)"""
    c = tiny_config("grpo")
    c.algo.reference = "initial"
    c.model.lora.rank = lora_rank
    trainer = loop.Trainer(c, str(tmp_path / "run"))
    b, t = c.rollout.prompts_per_step * c.rollout.group_size, c.data.max_prompt_len + 6
    args = (
        jax.ShapeDtypeStruct((b, t), np.int32),
        jax.ShapeDtypeStruct((b, t), np.int32),
    )

    def flops(fn, params):
        cost = fn.lower(params, *args).compile().cost_analysis()
        return (cost[0] if isinstance(cost, list) else cost)["flops"]

    state = trainer.state
    ref_params = state.ref_params if lora_rank == 0 else lora.base_state(state.params)
    shared = flops(trainer.ref_logps, ref_params)
    assert flops(trainer.logps, trainer.state.params) < 1.5 * shared  # the policy's pass too
    c.train.share_prompts = False
    unshared = loop.Trainer(c, str(tmp_path / "full"))
    assert shared < 0.9 * flops(unshared.ref_logps, ref_params)
    unshared.close()
    trainer.close()
