"""The loss demo and its command line."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from configs import demo as demo_config
from giftjax import demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_demo_computes_every_loss(tmp_path):
    config = demo_config.get_config()
    config.batch.prompts, config.batch.tokens = 2, 8
    results = demo.run(config, str(tmp_path))
    assert set(results) == set(demo.loss_table(config))
    for name, r in results.items():
        assert math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]), name
        assert r["grad_norm"] > 0, name
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 0 and "reward/mean" in record and "loss" in record
    assert record["loss/gift"] == results["gift"]["loss"]


def run_demo(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TPU_SKIP_MDS_QUERY="1")
    return subprocess.run(
        [sys.executable, "-m", "giftjax.demo", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_command_line(tmp_path):
    out = run_demo(
        "--config=configs/demo.py",
        f"--workdir={tmp_path}",
        "--config.batch.prompts=2",
        "--config.batch.tokens=8",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "gift[author]" in out.stdout and "sft[chord]" in out.stdout
    assert (tmp_path / "metrics.jsonl").exists()
    # Locked config: a misspelt key fails and names it.
    bad = run_demo("--config=configs/demo.py", f"--workdir={tmp_path}", "--config.batch.promts=2")
    assert bad.returncode != 0 and "promts" in bad.stderr
