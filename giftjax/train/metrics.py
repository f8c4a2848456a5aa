"""Training metrics: metrics.jsonl, samples.jsonl, TensorBoard, a progress bar, optional wandb.

Files under WORKDIR (the layout in README.md, "What a run writes"):

- ``metrics.jsonl``: one JSON object per :meth:`MetricsLogger.log` call, ``{"step": int, ...}``
  with the keys as given (``reward/mean``, ``loss``, ``gac/mu`` ...). Floats are written at full
  precision (``json`` writes the shortest repr that reads back to the same float64, and float32
  values convert to float64 exactly); integer values stay integers. Non-finite values are kept:
  ``json`` writes ``NaN``, ``Infinity`` and ``-Infinity``, which Python's ``json`` (and
  :func:`giftjax.workdir.read_jsonl`)
  reads back. Each line is flushed when written, so a process killed at any
  moment leaves at most one partial last line, which readers drop.
- ``samples.jsonl``: one object per sample row, ``{"step": int, **row}``.
- ``tensorboard/``: event files written by tensorboardX (no TensorFlow needed).

After a restart from the checkpoint of step ``s``, :meth:`MetricsLogger.resume` drops every row
with a later step (and TensorBoard's later events), so each step appears exactly once.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from giftjax import workdir as workdir_lib
from giftjax.workdir import read_jsonl

__all__ = ["MetricsLogger"]


# Progress-bar postfix: metric key -> label.
_POSTFIX = (("reward/mean", "reward"), ("loss", "loss"), ("time/step", "s/step"))


def _truncate_partial_line(path: str) -> None:
    """Cut a partial last line, so that appended rows start on a line of their own."""
    if not os.path.exists(path):
        return
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        # Walk back to the last newline.
        pos, chunk = size, 4096
        while pos > 0:
            start = max(0, pos - chunk)
            f.seek(start)
            block = f.read(pos - start)
            idx = block.rfind(b"\n")
            if idx >= 0:
                f.truncate(start + idx + 1)
                return
            pos = start
        f.truncate(0)


def _rewrite_up_to(path: str, last_step: int) -> None:
    """Keep rows with ``step <= last_step``, atomically (temp file + os.replace)."""
    if not os.path.exists(path):
        return
    kept = [row for row in read_jsonl(path) if row.get("step", -math.inf) <= last_step]
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".resume.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in kept:
                f.write(json.dumps(row) + "\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _scalar(key: str, value: Any) -> int | float:
    """A metric value as a Python int or float; float32 and bfloat16 convert exactly."""
    a = np.asarray(value)
    if a.size != 1:
        raise ValueError(
            f"metric {key!r} must be a scalar, got shape {a.shape}; reduce it (mean, sum) first."
        )
    a = a.reshape(())
    if a.dtype == np.bool_ or np.issubdtype(a.dtype, np.integer):
        return int(a)
    if jnp.issubdtype(a.dtype, jnp.floating):  # bfloat16 included
        return float(a)
    raise ValueError(f"metric {key!r} must be a real number, got dtype {a.dtype}.")


def _to_json(value: Any) -> Any:
    """json.dumps ``default`` for sample rows: NumPy / JAX values to lists and scalars."""
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):
        return np.asarray(value).tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise TypeError(f"sample value of type {type(value).__name__} is not JSON-serialisable.")


class MetricsLogger:
    """Writes training metrics to metrics.jsonl, TensorBoard, a progress bar and wandb.

    Only the main process writes (``is_main=False`` makes every method a no-op), so every
    process of a multi-host job may call it. Files are opened at the first write; after a
    restart call :meth:`resume` first. Usable as a context manager (closes on exit).

    Args:
      workdir: the run's directory; files go where the module docstring says.
      total_steps: the run's last step, for the progress bar.
      is_main: whether this process writes (``jax.process_index() == 0``).
      tensorboard: write TensorBoard events under ``WORKDIR/tensorboard``.
      progress: show a tqdm bar on stderr: step/total, reward, loss and seconds per step.
      wandb: if given, keyword arguments for ``wandb.init`` (``project``, ``name``, ``id`` ...;
        ``dir`` defaults to the workdir). Needs the ``wandb`` package, imported only then.
      config: the resolved config, sent to wandb and written once to TensorBoard as text.

    Raises:
      ImportError: ``wandb`` is given but the package is not installed.
    """

    def __init__(
        self,
        workdir: str,
        *,
        total_steps: int,
        is_main: bool = True,
        tensorboard: bool = True,
        progress: bool = True,
        wandb: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
    ):
        self.workdir = os.fspath(workdir)
        self.total_steps = int(total_steps)
        self.is_main = bool(is_main)
        self._tensorboard = tensorboard
        self._progress = progress
        if config is not None and hasattr(config, "to_dict"):  # ml_collections.ConfigDict
            config = config.to_dict()
        self._config = dict(config) if config is not None else None
        self._start_step = 0
        self._purge_step: int | None = None
        self._opened = False
        self._metrics_file = None
        self._samples_file = None
        self._writer = None
        self._bar = None
        self._wandb_run = None
        if not self.is_main:
            return
        os.makedirs(self.workdir, exist_ok=True)
        if wandb is not None:
            self._wandb_run = _init_wandb(dict(wandb), self.workdir, self._config)

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.workdir, workdir_lib.METRICS)

    @property
    def samples_path(self) -> str:
        return os.path.join(self.workdir, workdir_lib.SAMPLES)

    def resume(self, last_step: int) -> None:
        """Forget everything logged after ``last_step`` (the step of the restored checkpoint).

        Rewrites metrics.jsonl and samples.jsonl keeping only rows with ``step <= last_step``
        (atomically), makes TensorBoard drop events after it (``purge_step=last_step + 1``), and
        starts the progress bar at ``last_step``. A run that starts from scratch in a workdir
        holding rows of an attempt that died before its first checkpoint calls it with one less
        than its first logged step (``resume(0)``, or ``resume(-1)`` if it logs step 0).

        Args:
          last_step: the step of the restored checkpoint.
        """
        if not self.is_main:
            return
        self._close_writers()
        last_step = int(last_step)
        for path in (self.metrics_path, self.samples_path):
            _rewrite_up_to(path, last_step)
        self._start_step = max(last_step, 0)
        self._purge_step = last_step + 1

    def log(self, step: int, metrics: Mapping[str, float | np.ndarray | jax.Array]) -> None:
        """Write one row ``{"step": step, **metrics}`` everywhere, and advance the bar.

        Args:
          step: the train step the metrics belong to.
          metrics: name -> scalar (Python number, NumPy or JAX scalar / size-1 array); all JAX
            values are fetched in one ``jax.device_get``. Non-finite values are written as is.

        Raises:
          ValueError: a value is not a real scalar, or a key is ``"step"``.
        """
        if not self.is_main:
            return
        if "step" in metrics:
            raise ValueError("metrics must not contain the key 'step'; pass it as `step`.")
        fetched = jax.device_get(dict(metrics))  # one transfer; the dict comes back key-sorted
        values = {str(k): _scalar(str(k), fetched[k]) for k in metrics}
        self._open()
        step = int(step)
        self._metrics_file.write(json.dumps({"step": step, **values}) + "\n")
        self._metrics_file.flush()
        if self._writer is not None:
            for key, value in values.items():
                self._writer.add_scalar(key, value, step)
            self._writer.flush()
        if self._wandb_run is not None:
            self._wandb_run.log(values, step=step)
        if self._bar is not None:
            self._bar.update(max(0, min(step, self.total_steps) - self._bar.n))
            postfix = {label: f"{values[key]:.4g}" for key, label in _POSTFIX if key in values}
            self._bar.set_postfix(postfix, refresh=True)

    def log_samples(self, step: int, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append each row as ``{"step": step, **row}`` to samples.jsonl.

        Args:
          step: the train step the samples come from.
          rows: e.g. ``{"prompt": str, "completion": str, "reward": float}``; NumPy and JAX
            values become lists or numbers.

        Raises:
          ValueError: a row has the key ``"step"``.
          TypeError: a value is not JSON-serialisable.
        """
        if not self.is_main:
            return
        self._open()
        step = int(step)
        for row in rows:
            if "step" in row:
                raise ValueError("sample rows must not contain the key 'step'.")
            self._samples_file.write(json.dumps({"step": step, **row}, default=_to_json) + "\n")
        self._samples_file.flush()

    def close(self) -> None:
        """Flush and close every output (the wandb run included)."""
        if not self.is_main:
            return
        self._close_writers()
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------

    def _open(self) -> None:
        if self._opened:
            return
        for path in (self.metrics_path, self.samples_path):
            _truncate_partial_line(path)
        self._metrics_file = open(self.metrics_path, "a", encoding="utf-8")
        self._samples_file = open(self.samples_path, "a", encoding="utf-8")
        if self._tensorboard:
            from tensorboardX import SummaryWriter

            # tensorboardX names event files by the second and opens them with "wb": a
            # nanosecond suffix keeps a writer reopened within the same second (resume) from
            # overwriting the previous file, and keeps the files in time order.
            self._writer = SummaryWriter(
                os.path.join(self.workdir, workdir_lib.TENSORBOARD),
                purge_step=self._purge_step,
                filename_suffix=f".{time.time_ns()}",
            )
            if self._config is not None:
                text = json.dumps(self._config, indent=2, sort_keys=True, default=str)
                self._writer.add_text("config", f"```\n{text}\n```", self._start_step)
        if self._progress:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total_steps,
                initial=min(self._start_step, self.total_steps),
                file=sys.stderr,
                unit="step",
                dynamic_ncols=True,
            )
        self._opened = True

    def _close_writers(self) -> None:
        for f in (self._metrics_file, self._samples_file):
            if f is not None:
                f.close()
        self._metrics_file = self._samples_file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._opened = False


def _init_wandb(kwargs: dict[str, Any], workdir: str, config: Mapping[str, Any] | None) -> Any:
    """Start a wandb run; wandb is imported only here."""
    try:
        import wandb
    except ImportError as e:
        raise ImportError(
            f"log.wandb is set ({kwargs}) but the wandb package is not installed: "
            f"pip install wandb, or leave log.wandb unset."
        ) from e
    kwargs.setdefault("dir", workdir)
    if config is not None:
        kwargs.setdefault("config", dict(config))
    return wandb.init(**kwargs)
