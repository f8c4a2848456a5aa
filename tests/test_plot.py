"""python -m giftjax.plot: reads metrics.jsonl, writes a PNG, exit code 2 without data."""

import json
import math
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from giftjax.plot import load_metrics, main, moving_average, plot_metrics

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path):
    """(width, height) from the PNG header; asserts the file is a PNG."""
    with open(path, "rb") as f:
        data = f.read(24)
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def _rows(n=30, hybrid=True):
    rows = []
    for step in range(1, n + 1):
        row = {"step": step, "loss": 1.0 / step, "reward/mean": 1 - math.exp(-step / 10)}
        if hybrid:
            row |= {"gac/mu": 0.5 - step / 100, "gac/mu_raw": 0.4, "gac/prior": 0.3}
        if step % 10 == 0:
            row["eval/reward/mean"] = 0.8
        rows.append(row)
    rows[3]["loss"] = float("nan")  # non-finite values are skipped, not fatal
    return rows


def _write(path, rows, tail=""):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        f.write(tail)


def test_moving_average_formula():
    np.testing.assert_array_equal(moving_average([1, 2, 3, 4], 2), [1, (1 + 2) / 2, 2.5, 3.5])
    np.testing.assert_array_equal(moving_average([1, 2, 3, 4], 3), [1, 1.5, 2, 3])
    np.testing.assert_array_equal(moving_average([5, 7], 1), [5, 7])
    np.testing.assert_array_equal(moving_average([2, 4], 10), [2, 3])
    with pytest.raises(ValueError, match="window must be >= 1, got 0"):
        moving_average([1.0], 0)


def test_cli_writes_png(tmp_path, capsys):
    _write(tmp_path / "metrics.jsonl", _rows(), tail='{"step": 31, "lo')  # partial last line
    assert main([str(tmp_path), "--smooth", "5"]) == 0
    out = tmp_path / "reward.png"
    assert capsys.readouterr().out.strip() == str(out)
    assert _png_size(out)[0] > 0 and out.stat().st_size > 0
    other = tmp_path / "plots" / "curves.png"
    assert main([str(tmp_path), "--out", str(other)]) == 0
    assert capsys.readouterr().out.strip() == str(other)
    _png_size(other)


def test_gac_panel_only_when_logged(tmp_path):
    # Figure height is 2.6 inches per panel at 120 dpi: reward, loss, eval, plus GAC when logged.
    _, h4 = _png_size(plot_metrics(_rows(hybrid=True), str(tmp_path / "a.png")))
    _, h3 = _png_size(plot_metrics(_rows(hybrid=False), str(tmp_path / "b.png")))
    assert (h4, h3) == (round(4 * 2.6 * 120), round(3 * 2.6 * 120))


@pytest.mark.parametrize(
    "content", [None, "", '{"step": 1, "lo'], ids=["missing", "empty", "partial-only"]
)
def test_cli_without_rows_exits_2(tmp_path, capsys, content):
    if content is not None:
        (tmp_path / "metrics.jsonl").write_text(content)
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "metrics.jsonl" in err
    assert not (tmp_path / "reward.png").exists()


def test_load_metrics_reports_corrupt_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{oops\n{"step": 3}\n')
    with pytest.raises(ValueError, match="line 2: not valid JSON"):
        load_metrics(str(tmp_path / "metrics.jsonl"))


@pytest.mark.e2e
def test_python_dash_m(tmp_path):
    _write(tmp_path / "metrics.jsonl", _rows(5, hybrid=False))
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "giftjax.plot", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "reward.png")
    _png_size(tmp_path / "reward.png")
    missing = subprocess.run(
        [sys.executable, "-m", "giftjax.plot", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert missing.returncode == 2 and "no metrics file" in missing.stderr
