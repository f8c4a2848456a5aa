"""The reproduction benchmarks (benchmarks/convergence.py, benchmarks/hybrid.py) end to end in
--quick mode for one seed of two methods, and their reading rule on known numbers."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import _repro  # noqa: E402


def _run(script: str, out: Path, *args: str) -> str:
    env = dict(os.environ, JAX_PLATFORMS="cpu", TPU_SKIP_MDS_QUERY="1")
    quick = ["--quick", "--steps", "10", "--jobs", "2", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *quick, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _table(text: str, first_header: str) -> list[list[str]]:
    """The rows of the markdown table whose header starts with ``| first_header |``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    header = lines[start]
    assert re.fullmatch(r"\|:---\|(---:\|)+", lines[start + 1]), lines[start + 1]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == header.count("|") - 1, line
        rows.append(cells)
    return rows


def _numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", cell)]


@pytest.mark.slow
@pytest.mark.e2e
def test_convergence_quick_two_methods(tmp_path):
    stdout = _run("convergence.py", tmp_path, "--methods", "gift", "grpo")
    assert re.search(r"^3 runs in all \(2 sweep runs", stdout, flags=re.M), stdout
    assert len(re.findall(r"^\[\d/3\] ", stdout, flags=re.M)) == 3  # one line per run
    text = (tmp_path / "convergence.md").read_text()
    assert text in stdout  # the ready-to-paste summary is printed
    rows = _table(text, "method")
    assert [r[0] for r in rows] == ["gift", "grpo"]
    for r in rows:
        # final reward, held-out pass@1, train pass@1, gap, s/step: finite numbers
        for cell in (r[2], r[6], r[7], r[8], r[9]):
            values = _numbers(cell)
            assert values and all(math.isfinite(v) for v in values), (r, cell)
        assert 0.0 <= _numbers(r[2])[0] <= 1.0 and 0.0 <= _numbers(r[6])[0] <= 1.0
        assert re.fullmatch(r"[01]/1", r[4])
    sweep = _table(text, "method | lr 0.003")  # the sweep: one rate in --quick
    assert [r[0] for r in sweep] == ["gift", "grpo"] and all(r[2] == "0.003" for r in sweep)
    cosines = _table(text, "batch (RL step)")
    assert cosines and all(-1.0 <= float(c) <= 1.0 + 1e-6 for row in cosines for c in row[1:5])
    assert "one seed: no spread, no claim" in text
    data = json.loads((tmp_path / "convergence.json").read_text())
    assert {r["method"] for r in data["runs"]} == {"gift", "grpo"}
    assert set(data["sweeps"]) == {"gift", "grpo"}
    assert all(math.isfinite(x) for r in data["runs"] for x in r["reward"])
    assert (tmp_path / "convergence_reward.png").stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.e2e
def test_hybrid_quick_two_methods(tmp_path):
    stdout = _run("hybrid.py", tmp_path, "--methods", "gac_separate", "fixed_0.5")
    assert re.search(r"^2 runs in all", stdout, flags=re.M), stdout
    text = (tmp_path / "hybrid.md").read_text()
    rows = _table(text, "method")
    assert [r[0] for r in rows] == ["gac_separate", "fixed_0.5"]
    for r in rows:
        for cell in (r[2], r[5], r[6], r[7], r[8], r[9]):
            values = _numbers(cell)
            assert values and all(math.isfinite(v) for v in values), (r, cell)
    assert _numbers(rows[1][8])[0] == pytest.approx(0.5)  # fixed mu
    overhead = _table(text, "method | time/update ratio to fixed_0.5")
    assert [r[0] for r in overhead] == ["gac_separate"]
    assert math.isfinite(_numbers(overhead[0][1])[0]) and overhead[0][2] == "1"
    assert (tmp_path / "hybrid_mu.png").stat().st_size > 10_000


def test_compare_reads_a_difference_only_beyond_the_seed_spread():
    a = _repro.stats([0.60, 0.62, 0.64])  # mean 0.62, sd 0.02
    b = _repro.stats([0.50, 0.52, 0.54])
    c = _repro.stats([0.59, 0.61, 0.63])
    assert _repro.compare(a, b, higher_is_better=True).startswith("better")
    assert _repro.compare(b, a, higher_is_better=True).startswith("worse")
    assert _repro.compare(b, a, higher_is_better=False).startswith("better")
    assert _repro.compare(a, c, higher_is_better=True).startswith("no difference")
    one = _repro.stats([0.9])
    assert _repro.compare(one, b, higher_is_better=True) == "one seed: no spread, no claim"


def test_lr_is_chosen_on_training_reward_only():
    runs = [
        {"lr": 1e-3, "final_reward": 0.4, "heldout_pass1": 0.9},
        {"lr": 3e-3, "final_reward": 0.6, "heldout_pass1": 0.1},
        {"lr": 1e-2, "final_reward": 0.6, "heldout_pass1": 0.5},
    ]
    assert _repro.choose_lr(runs) == 3e-3  # tie on reward: the smaller rate; held-out unused


def test_summarise_run_threshold_and_final_numbers(tmp_path):
    rows = [{"step": 1, "phase/sft_warmup": 1.0, "loss": 1.0, "time/step": 0.1}]
    rows += [
        {"step": s + 1, "reward/mean": 0.1 * s, "time/step": 0.5, "time/update": 0.25}
        for s in range(1, 21)
    ]
    rows[-1].update({"eval/train/pass@1": 0.75, "eval/heldout/pass@1": 0.25})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = _repro.summarise_run(tmp_path, threshold=0.42)
    assert s["steps"] == list(range(1, 21))  # the warm-up row is left out
    # Reward 0.1 k at RL step k; its trailing mean over k <= 10 steps is 0.05 (k + 1): 0.40 at
    # step 7, 0.45 at step 8, the first >= 0.42; steps 2..8 of 0.5 s (step 1 is compilation).
    assert s["steps_to_threshold"] == 8
    assert s["wall_to_threshold"] == pytest.approx(3.5)
    assert s["final_reward"] == pytest.approx(sum(0.1 * k for k in range(16, 21)) / 5)
    assert s["gap_pass1"] == pytest.approx(0.5)
    assert s["time_update"] == pytest.approx(0.25)


def test_gift_with_one_update_is_a_rescaled_token_mean_grpo_step():
    """What convergence.py's direction job measures, on the losses alone: with pi_old as
    reference on the first (here: only) update, GIFT's gradient w.r.t. the log-probs is
    -2 A_i / (B f) on every response token, the token-mean GRPO step (DAPO's aggregation)
    up to one scale; GRPO's per-sequence token mean weighs each sequence by 1 / length."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from giftjax import losses

    rng = np.random.default_rng(0)
    b, g, m = 32, 8, 8
    logps = jnp.asarray(-1.0 + 0.1 * rng.normal(size=(b, m)), jnp.float32)
    mask = jnp.asarray(np.arange(m)[None] < rng.integers(3, m + 1, size=(b, 1)))
    rewards = jnp.asarray(rng.random(b), jnp.float32)
    adv = losses.group_advantages(rewards, group_size=g, method="grpo")
    sg = jax.lax.stop_gradient

    def grad(f):
        return np.asarray(jax.grad(f)(logps), np.float64).ravel()

    gift = grad(lambda lp: losses.gift_loss(lp, sg(lp), mask, rewards, group_size=g)[0])

    def grpo_family(preset):
        return grad(
            lambda lp: losses.grpo_loss(lp, sg(lp), mask, adv, preset=preset, ref_logps=sg(lp))[0]
        )

    def one_minus_cos(a, c):
        return 1.0 - a @ c / (np.linalg.norm(a) * np.linalg.norm(c))

    # float32: each element is exact to ~1e-7 relative; a cosine moves by its square.
    assert one_minus_cos(gift, grpo_family("dapo")) < 1e-6
    assert one_minus_cos(gift, grpo_family("grpo")) > 1e-3  # lengths differ: not parallel
