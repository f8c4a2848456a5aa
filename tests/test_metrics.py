"""MetricsLogger: metrics.jsonl precision, partial lines, resume, TensorBoard, tqdm, wandb."""

import math
import os
import struct
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from giftjax.train.metrics import MetricsLogger
from giftjax.workdir import read_jsonl


def _rows(workdir, name="metrics.jsonl"):
    return read_jsonl(os.path.join(workdir, name))


def _quiet(workdir, **kwargs):
    kwargs.setdefault("total_steps", 10)
    kwargs.setdefault("progress", False)
    kwargs.setdefault("tensorboard", False)
    return MetricsLogger(str(workdir), **kwargs)


def test_values_at_full_precision(tmp_path):
    third32 = np.float32(1) / np.float32(3)
    metrics = {
        "reward/mean": 0.1 + 0.2,  # 0.30000000000000004: needs all 17 digits
        "loss": third32,  # float32 -> float64 is exact
        "gac/mu": jnp.asarray(0.7, jnp.float32),
        "grad/norm": jnp.asarray([2.5e-8], jnp.float32),  # size-1 array
        "lr": jnp.asarray(1e-5, jnp.bfloat16),
        "reward/errors": np.int32(3),
        "tokens": 12,
    }
    with _quiet(tmp_path) as logger:
        logger.log(4, metrics)
    (row,) = _rows(tmp_path)
    assert list(row) == ["step", *metrics]  # keys as given, step first
    assert row["step"] == 4
    assert row["reward/mean"] == 0.1 + 0.2
    assert row["loss"] == float(third32) and np.float32(row["loss"]) == third32
    assert row["gac/mu"] == float(np.float32(0.7))
    assert row["grad/norm"] == float(np.float32(2.5e-8))
    assert row["lr"] == float(jnp.asarray(1e-5, jnp.bfloat16))
    assert row["reward/errors"] == 3 and isinstance(row["reward/errors"], int)
    assert row["tokens"] == 12


def test_non_finite_values_are_kept(tmp_path):
    with _quiet(tmp_path) as logger:
        logger.log(1, {"loss": float("nan"), "a": np.float32("inf"), "b": -math.inf})
    (row,) = _rows(tmp_path)
    assert math.isnan(row["loss"]) and row["a"] == math.inf and row["b"] == -math.inf


def test_bad_metrics_are_refused(tmp_path):
    with _quiet(tmp_path) as logger:
        with pytest.raises(ValueError, match=r"metric 'x' must be a scalar, got shape \(2,\)"):
            logger.log(1, {"x": np.zeros(2)})
        with pytest.raises(ValueError, match="key 'step'"):
            logger.log(1, {"step": 1})
        with pytest.raises(ValueError, match="must be a real number"):
            logger.log(1, {"c": np.complex64(1j)})


def test_partial_last_line_is_dropped_and_not_glued(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo')  # killed mid-write
    assert read_jsonl(str(path)) == [{"step": 1, "loss": 0.5}]
    with _quiet(tmp_path) as logger:
        logger.log(2, {"loss": 0.25})
    assert read_jsonl(str(path)) == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]
    # A corrupt line that is not the last one is an error, with its line number.
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match="line 2: not valid JSON"):
        read_jsonl(str(path))
    assert read_jsonl(str(tmp_path / "missing.jsonl")) == []


def test_log_samples(tmp_path):
    with _quiet(tmp_path) as logger:
        logger.log_samples(
            5,
            [
                {"prompt": "1+1=", "completion": "2", "reward": np.float32(1.0)},
                {"prompt": "2+2=", "completion": "5", "reward": 0.0, "ids": np.arange(3)},
            ],
        )
    assert _rows(tmp_path, "samples.jsonl") == [
        {"step": 5, "prompt": "1+1=", "completion": "2", "reward": 1.0},
        {"step": 5, "prompt": "2+2=", "completion": "5", "reward": 0.0, "ids": [0, 1, 2]},
    ]


def test_not_main_writes_nothing(tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    fake = types.ModuleType("wandb")  # must not even be called
    fake.init = lambda **kw: pytest.fail("wandb.init called on a non-main process")
    monkeypatch.setitem(sys.modules, "wandb", fake)
    kwargs = {"total_steps": 3, "is_main": False, "wandb": {"project": "p"}}
    with MetricsLogger(str(workdir), **kwargs) as logger:
        logger.resume(1)
        logger.log(2, {"loss": 1.0})
        logger.log_samples(2, [{"prompt": "x"}])
    assert not workdir.exists()


def _events(logdir):
    """Every Event in the TFRecord event files of ``logdir``, files in name (= time) order."""
    out = []
    for name in sorted(os.listdir(logdir)):
        data = (logdir / name).read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[pos + 12 : pos + 12 + length])
            out.append(event)
            pos += 12 + length + 4  # length, its crc, data, its crc
    return out


def _tensorboard_view(events, tag):
    """{step: value} for ``tag`` as TensorBoard shows it: a SessionLog.START at step p purges
    the earlier events with step >= p."""
    seen = []
    for e in events:
        if e.HasField("session_log") and e.session_log.status == event_pb2.SessionLog.START:
            seen = [(s, v) for s, v in seen if s < e.step]
        for value in e.summary.value:
            if value.tag == tag:
                seen.append((e.step, value.simple_value))
    steps = [s for s, _ in seen]
    assert len(steps) == len(set(steps)), f"duplicate steps for {tag}: {steps}"
    return dict(seen)


def test_resume_keeps_each_step_once(tmp_path):
    # First run: steps 1..6 logged, then killed mid-line; checkpoint at step 4.
    with MetricsLogger(str(tmp_path), total_steps=8, progress=False) as logger:
        for step in range(1, 7):
            logger.log(step, {"loss": 1.0 / step, "reward/mean": step / 10})
            logger.log_samples(step, [{"completion": f"s{step}"}])
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "lo')
    # Second run resumes from step 4 and goes to 8.
    with MetricsLogger(str(tmp_path), total_steps=8, progress=False) as logger:
        logger.resume(4)
        assert [r["step"] for r in _rows(tmp_path)] == [1, 2, 3, 4]
        for step in range(5, 9):
            logger.log(step, {"loss": 2.0 / step, "reward/mean": step / 5})
            logger.log_samples(step, [{"completion": f"t{step}"}])
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert [r["loss"] for r in rows] == [1.0 / s for s in range(1, 5)] + [
        2.0 / s for s in range(5, 9)
    ]
    samples = _rows(tmp_path, "samples.jsonl")
    assert [s["completion"] for s in samples] == ["s1", "s2", "s3", "s4", "t5", "t6", "t7", "t8"]
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    # TensorBoard: the resumed writer purges steps >= 5 of the first run.
    view = _tensorboard_view(_events(tmp_path / "tensorboard"), "loss")
    expected = {s: 1.0 / s for s in range(1, 5)} | {s: 2.0 / s for s in range(5, 9)}
    assert view.keys() == expected.keys()
    for s, v in view.items():  # simple_value is a float32
        assert v == np.float32(expected[s]), (s, v)


def test_progress_bar_starts_at_resumed_step(tmp_path, capsys):
    with MetricsLogger(str(tmp_path), total_steps=10, tensorboard=False) as logger:
        logger.resume(4)
        logger.log(6, {"reward/mean": 0.5, "loss": 0.125, "time/step": 2.0, "other": 1.0})
    err = capsys.readouterr().err
    assert "4/10" in err and "6/10" in err
    assert "reward=0.5" in err and "loss=0.125" in err and "s/step=2" in err
    assert "other" not in err
    with MetricsLogger(str(tmp_path), total_steps=10, tensorboard=False, progress=False) as lg:
        lg.log(7, {"loss": 1.0})
    assert capsys.readouterr().err == ""


class _FakeRun:
    def __init__(self, **kwargs):
        self.init_kwargs = kwargs
        self.logged = []
        self.finished = False

    def log(self, data, step=None):
        self.logged.append((step, dict(data)))

    def finish(self):
        self.finished = True


def test_wandb_with_fake_module(tmp_path, monkeypatch):
    runs = []
    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: runs.append(_FakeRun(**kwargs)) or runs[-1]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    config = {"algo": {"name": "gift"}}
    with _quiet(tmp_path, wandb={"project": "giftjax", "name": "r1"}, config=config) as logger:
        logger.log(3, {"loss": np.float32(0.5), "gac/mu": 0.25})
    (run,) = runs
    assert run.init_kwargs == {
        "project": "giftjax",
        "name": "r1",
        "dir": str(tmp_path),
        "config": config,
    }
    assert run.logged == [(3, {"loss": 0.5, "gac/mu": 0.25})]
    assert run.finished


def test_wandb_missing_names_the_option(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(ImportError, match=r"log\.wandb .* pip install wandb"):
        _quiet(tmp_path, wandb={"project": "p"})
