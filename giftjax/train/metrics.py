"""Training metrics: metrics.jsonl, samples.jsonl, TensorBoard, a progress bar, optional wandb.

Files under WORKDIR (the layout in README.md, "What a run writes"):

- ``metrics.jsonl``: one JSON object per `MetricsLogger.log` call, ``{"step": int, ...}``
  with the keys as given (``reward/mean``, ``loss``, ``gac/mu`` ...). Floats are written at full
  precision (``json`` writes the shortest repr that reads back to the same float64, and float32
  values convert to float64 exactly); integer values stay integers. Non-finite values are kept:
  ``json`` writes ``NaN``, ``Infinity`` and ``-Infinity``, which Python's ``json`` (and
  `giftjax.workdir.read_jsonl`)
  reads back. Each line is flushed when written, so a process killed at any
  moment leaves at most one partial last line, which readers drop.
- ``samples.jsonl``: one object per sample row, ``{"step": int, **row}``.
- ``tensorboard/``: event files written by tensorboardX (no TensorFlow needed).

After a restart from the checkpoint of step ``s``, `MetricsLogger.resume` drops every row
with a later step (and TensorBoard's later events), so each step appears exactly once.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from giftjax import distributed
from giftjax import workdir as workdir_lib

__all__ = ["MetricsLogger"]


# Progress-bar postfix: metric key -> label.
_POSTFIX = (("reward/mean", "reward"), ("loss", "loss"), ("time/step", "s/step"))


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
    restart call `resume` first. Usable as a context manager (closes on exit).

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

    @classmethod
    def for_run(
        cls, config: Any, workdir: str, total_steps: int, *, is_main: bool = True
    ) -> MetricsLogger:
        """The logger of a training run: its ``log.*`` settings (TensorBoard, progress bar,
        ``log.wandb_project``) and the config stored with the wandb run."""
        lg = config.log
        return cls(
            workdir,
            total_steps=total_steps,
            is_main=is_main,
            tensorboard=lg.tensorboard,
            progress=lg.progress,
            wandb={"project": lg.wandb_project} if lg.wandb_project else None,
            config=config,
        )

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
            workdir_lib.keep_rows_up_to(path, last_step)
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
            workdir_lib.truncate_partial_line(path)
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


def host_floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    """A dict of device scalars as host floats."""
    host = jax.device_get(dict(metrics))
    return {k: float(v) for k, v in host.items()}


def mean_host_floats(per_update: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Each key's mean over several updates' metrics, as host floats."""
    host = [jax.device_get(dict(m)) for m in per_update]
    return {k: float(np.mean([h[k] for h in host])) for k in host[0]}


def rollout_metrics(ro: Any, *, prompt_len: int, seconds: Mapping[str, float]) -> dict[str, float]:
    """The host-side metrics of a rollout (``giftjax.train.rollout.Rollout``) over every
    process: ``reward/mean``, ``reward/std``, ``reward/errors``, ``reward/<fn>`` (several reward
    functions), ``response/length_mean``, ``time/rollout``, ``time/reward``, ``time/<k>`` of
    ``seconds`` (the step's other phases) and ``tokens/per_sec`` over all of them.

    Each host scored its own rows: they are gathered in process order (the global batch's
    values, as one host would have them) before they are reduced.
    """
    r = distributed.allgather(ro.host_rewards)
    lengths = distributed.allgather(ro.host_lengths)
    errors = distributed.allgather(np.array([ro.reward_errors], np.int64)).sum()
    per_fn = {k: distributed.allgather(v) for k, v in sorted(ro.per_fn.items())}
    out = {
        "reward/mean": float(r.mean()),
        "reward/std": float(r.std()),
        "reward/errors": float(errors),
        "response/length_mean": float(lengths.mean()),
        "time/rollout": ro.seconds["rollout"],
        "time/reward": ro.seconds["reward"],
        **{f"time/{k}": float(v) for k, v in seconds.items()},
    }
    if len(per_fn) > 1:
        out.update({f"reward/{name}": float(np.mean(v)) for name, v in per_fn.items()})
    total = ro.seconds["rollout"] + ro.seconds["reward"] + sum(seconds.values())
    n_tokens = float(lengths.sum() + ro.tokens.shape[0] * prompt_len)
    out["tokens/per_sec"] = n_tokens / max(total, 1e-9)
    return out


def sample_rows(ro: Any, *, group_size: int, prompts: int) -> list[dict[str, Any]]:
    """The first ``prompts`` prompts' samples of a rollout as samples.jsonl rows: prompt,
    completion, reward (and the answer when the data has one)."""
    rows = []
    for p in range(min(prompts, len(ro.prompts))):
        for j in range(group_size):
            i = p * group_size + j
            row = {
                "prompt": ro.prompts[p],
                "completion": ro.completions[i],
                "reward": float(ro.host_rewards[i]),
            }
            if "answer" in ro.columns:
                row["answer"] = ro.columns["answer"][p]
            rows.append(row)
    return rows
