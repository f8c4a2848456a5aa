"""``python -m giftjax.main`` as a user runs it: learning, kill -9 and resume, SIGTERM, errors.

Each run is a fresh process on one CPU device with the smoke recipe's short variant
(``configs/smoke_cpu.py:short``: the SFT warm-up steps, then 40 GIFT steps). A resumed run is
the same program on the same machine as an uninterrupted one, so parameters and metrics must
be bit-identical (time measurements excepted).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest
from processes import xla_flags

from configs import smoke_cpu
from giftjax.workdir import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
_SHORT = smoke_cpu.get_config("short")
WARMUP, RL_STEPS = _SHORT.train.warmup_sft_steps, _SHORT.train.steps
TOTAL = WARMUP + RL_STEPS  # steps of the short run, warm-up included
SHORT = "--config=configs/smoke_cpu.py:short"
TIMED = ("time/", "tokens/per_sec")  # wall-clock measurements differ between runs

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = xla_flags(env.get("XLA_FLAGS", ""))  # one CPU device, as on a laptop
    env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    return env


def _cmd(workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "giftjax.main", SHORT, f"--workdir={workdir}", *extra]


def run(workdir: Path, *extra: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        _cmd(workdir, *extra), cwd=ROOT, env=_env(), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def start(workdir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        _cmd(workdir), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, "the run ended before the condition was met"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def checkpoint_steps(workdir: Path) -> list[int]:
    folder = workdir / "checkpoints"
    if not folder.exists():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def final_params(workdir: Path):
    step = checkpoint_steps(workdir)[-1]
    with ocp.StandardCheckpointer() as ck:
        tree = ck.restore(workdir / "checkpoints" / str(step) / "state")
    return step, tree["params"]


def untimed(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith(TIMED)}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One uninterrupted run of the short smoke recipe."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    out = run(workdir)
    assert out.returncode == 0, out.stderr[-3000:]
    return workdir, out


def test_smoke_run_learns(reference_run):
    workdir, out = reference_run
    rows = read_jsonl(str(workdir / "metrics.jsonl"))
    assert [r["step"] for r in rows] == list(range(1, TOTAL + 1))
    rewards = [r["reward/mean"] for r in rows if "reward/mean" in r]
    assert len(rewards) == RL_STEPS
    first, last = np.mean(rewards[:10]), np.mean(rewards[-10:])
    assert last > first + 0.05, (first, last)
    assert "metrics.jsonl" in out.stdout
    # No libtpu start-up errors on a CPU run.
    assert "TPU" not in out.stderr, out.stderr[:2000]
    for name in ("config.json", "samples.jsonl", "tensorboard", "checkpoints"):
        assert (workdir / name).exists(), name


def test_sigkill_then_rerun_equals_an_uninterrupted_run(reference_run, tmp_path):
    ref_dir, _ = reference_run
    proc = start(tmp_path)
    try:
        # Killed in the RL phase, after at least one checkpoint there.
        wait_for(lambda: any(s >= WARMUP + 10 for s in checkpoint_steps(tmp_path)), proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert max(checkpoint_steps(tmp_path)) < TOTAL
    out = run(tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]

    rows, ref_rows = (read_jsonl(str(d / "metrics.jsonl")) for d in (tmp_path, ref_dir))
    assert [r["step"] for r in rows] == list(range(1, TOTAL + 1))  # each step once
    assert [untimed(r) for r in rows] == [untimed(r) for r in ref_rows]
    step, params = final_params(tmp_path)
    ref_step, ref_params = final_params(ref_dir)
    assert step == ref_step == TOTAL
    import jax

    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sigterm_saves_once_and_exits_zero(tmp_path):
    proc = start(tmp_path)
    metrics = tmp_path / "metrics.jsonl"

    def in_rl_phase():
        return metrics.exists() and len(metrics.read_text().splitlines()) >= WARMUP + 5

    try:
        wait_for(in_rl_phase, proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    rows = read_jsonl(str(metrics))
    last = rows[-1]["step"]
    assert last < TOTAL
    assert checkpoint_steps(tmp_path)[-1] == last  # saved at the step it stopped


def test_changed_config_on_resume_names_the_key(reference_run):
    workdir, _ = reference_run
    out = run(workdir, "--config.algo.gift.beta=2.0")
    assert out.returncode != 0
    assert "algo.gift.beta" in out.stderr


@pytest.mark.parametrize(
    "flag, needle",
    [("--config.train.stepz=3", "stepz"), ("--config.train.steps=abc", "train.steps")],
)
def test_bad_flags_name_the_key(tmp_path, flag, needle):
    out = run(tmp_path, flag, timeout=120)
    assert out.returncode != 0
    assert needle in out.stderr
