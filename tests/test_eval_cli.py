"""``python -m giftjax.eval``: a checkpoint evaluated alone reproduces the run's own evaluation.

A short run of the smoke recipe (1 SFT warm-up step, 2 GIFT steps, a checkpoint every step) is
trained in-process; the eval CLI then runs twice in a subprocess on the final step. Evaluation
is a deterministic function of the restored parameters and the step's key, and the subprocess
runs the same programs on the same machine and devices (8 fake CPU devices, the same matmul
precision), so its numbers must equal, bit for bit, the ``eval/...`` row the training run
logged at that step.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from configs import smoke_cpu
from giftjax import eval as eval_cli
from giftjax.train import loop
from giftjax.workdir import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = {
    "train.steps": 2,
    "train.warmup_sft_steps": 1,
    "data.eval_size": 4,
    "checkpoint.every": 1,
    "checkpoint.async_save": False,
    "log.tensorboard": False,
}
FINAL = 3  # warm-up + steps: the last step, where the loop always evaluates

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def _config():
    c = smoke_cpu.get_config("short")
    for key, value in OVERRIDES.items():
        section, name = key.split(".")
        c[section][name] = value
    return c


def _cli(workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    flags = [f"--config.{k}={str(v).lower() if isinstance(v, bool) else v}"
             for k, v in OVERRIDES.items()]  # fmt: skip
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DEFAULT_MATMUL_PRECISION="highest")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "giftjax.eval", "--config=configs/smoke_cpu.py:short",
            f"--workdir={workdir}", *flags, *extra]  # fmt: skip
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _fingerprint(workdir: Path) -> dict[str, str]:
    """Hash of every file of the run (the eval outputs aside)."""
    out = {}
    for path in sorted(workdir.rglob("*")):
        if path.is_file() and not path.name.startswith("eval_step_"):
            out[str(path.relative_to(workdir))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("run")
    loop.train(_config(), str(workdir))
    return workdir


def test_eval_cli_reproduces_the_logged_evaluation(run_dir):
    before = _fingerprint(run_dir)
    logged = {r["step"]: r for r in read_jsonl(str(run_dir / "metrics.jsonl"))}[FINAL]
    expected = {k: v for k, v in logged.items() if k.startswith("eval/")}
    assert "eval/heldout/pass@1" in expected and "eval/train/reward_mean" in expected

    results = []
    # --step given, then the default (the newest checkpoint) with an eval-only key changed.
    for extra in ([f"--step={FINAL}"], ["--config.eval.every=7"]):
        out = _cli(run_dir, *extra)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "eval/heldout/pass@1" in out.stdout, out.stdout
        written = json.loads((run_dir / f"eval_step_{FINAL}.json").read_text())
        assert written.pop("step") == FINAL
        results.append(written)
    assert results[0] == results[1]
    assert results[0] == expected
    assert _fingerprint(run_dir) == before  # metrics, config.json, checkpoints untouched


def test_missing_step_lists_the_finished_ones(run_dir):
    with pytest.raises(FileNotFoundError, match=r"finished steps: \[1, 2, 3\]"):
        eval_cli.evaluate_checkpoint(_config(), str(run_dir), step=99)


def test_a_changed_training_key_is_refused(run_dir):
    c = _config()
    c.optim.learning_rate = 1e-5
    before = _fingerprint(run_dir)
    with pytest.raises(ValueError, match=r"optim\.learning_rate"):
        eval_cli.evaluate_checkpoint(c, str(run_dir))
    assert _fingerprint(run_dir) == before


def test_format_table():
    text = eval_cli.format_table(3, {"eval/b": 0.5, "eval/a": 0.123456})
    assert text.splitlines() == ["step    3", "eval/a  0.1235", "eval/b  0.5"]


def test_library_functions_import_together_without_defining_flags():
    """``evaluate_checkpoint`` and ``export_checkpoint`` import into one program, and into a
    program with its own ``--config`` flag: the commands define their flags when they run, not
    at import."""
    code = (
        "from absl import flags\n"
        "import giftjax.eval, giftjax.export\n"
        "flags.DEFINE_string('config', None, 'the importing program s own flag')\n"
        "print(sorted(set(flags.FLAGS) & {'workdir', 'step', 'out', 'dtype'}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]"
