"""Checkpoints of the train state, the resolved config, and a graceful stop on SIGTERM.

Three parts, each independent of what the train state holds:

- :class:`Checkpointer` saves and restores any pytree of ``jax.Array`` (sharded or not, typed PRNG
  keys included), NumPy arrays and Python scalars with orbax, plus the data iterator's state as
  JSON beside it in the same step directory. Saves may run in the background (async); a step
  directory becomes visible under its final name only once complete, so a crash mid-save leaves
  the previous checkpoints intact and :meth:`Checkpointer.latest_step` never reports a
  half-written one.
- :func:`check_config` writes ``WORKDIR/config.json`` on the first run and refuses to resume
  with a different config, naming every key that changed.
- :class:`StopSignal` turns SIGTERM/SIGINT into a flag the training loop polls, so a preempted
  job saves once and exits 0 instead of dying mid-step.

Layout of one step (``directory/<step>/``): ``state/`` (orbax ``StandardSave``) and ``data/``
(orbax ``JsonSave`` of ``{"kind": "none" | "json" | "bytes", "value": ...}``; bytes are base64).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import tempfile
import threading
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from giftjax import distributed

__all__ = ["RESUMABLE_KEYS", "Checkpointer", "StopSignal", "check_config"]

_log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Checkpointer
# ---------------------------------------------------------------------------------------------


def _encode_data_state(data_state: Mapping | bytes | None) -> dict[str, Any]:
    """The data iterator's state as a JSON-serialisable record (bytes base64-encoded)."""
    if data_state is None:
        return {"kind": "none", "value": None}
    if isinstance(data_state, (bytes, bytearray)):
        return {"kind": "bytes", "value": base64.b64encode(bytes(data_state)).decode("ascii")}
    if isinstance(data_state, Mapping):
        record = {"kind": "json", "value": dict(data_state)}
        try:
            json.dumps(record, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise TypeError(
                f"data_state must be JSON-serialisable (str keys; str, int, float, bool, None, "
                f"list and dict values; finite floats), got a mapping that is not: {e}. Pass the "
                f"iterator's get_state() as bytes instead if it is not JSON."
            ) from e
        return record
    raise TypeError(
        f"data_state must be a mapping, bytes or None, got {type(data_state).__name__}."
    )


def _decode_data_state(record: Mapping[str, Any] | None) -> Mapping | bytes | None:
    """Inverse of :func:`_encode_data_state`."""
    if record is None or record.get("kind") == "none":
        return None
    if record["kind"] == "bytes":
        return base64.b64decode(record["value"])
    if record["kind"] == "json":
        return record["value"]
    raise ValueError(f"unknown data_state record kind {record['kind']!r} in checkpoint.")


class Checkpointer:
    """Keep-N, optionally asynchronous orbax checkpoints of a train state and a data state.

    All processes of a multi-host job must create the Checkpointer and call :meth:`save` and
    :meth:`restore` together (orbax coordinates them; process 0 writes the metadata).

    Args:
      directory: where step directories go (``WORKDIR/checkpoints``); created if missing.
        Unfinished temporary directories left by a crash are removed on start.
      every: save every ``every`` steps (``step % every == 0``), >= 1.
      keep: how many of the newest checkpoints to keep, >= 1.
      async_save: write in a background thread; :meth:`save` returns once the arrays are copied
        off the devices. :meth:`wait` or :meth:`close` blocks until the write has finished.
      read_only: only list and restore (evaluation): the directory is neither created nor
        cleaned of unfinished saves (a run may be writing one), and :meth:`save` is refused.
    """

    def __init__(
        self,
        directory: str,
        *,
        every: int,
        keep: int,
        async_save: bool = True,
        read_only: bool = False,
    ):
        for name, value in (("every", every), ("keep", keep)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"checkpoint.{name} must be an int >= 1, got {value!r}.")
        self.directory = os.path.abspath(os.fspath(directory))
        self.every = every
        self.keep = keep
        if async_save and jax.process_count() > 1:
            if not distributed.use_distributed_barriers():
                # orbax's default barriers are device collectives; from the background
                # thread they can deadlock with the training step's (see
                # giftjax.distributed.use_distributed_barriers): save synchronously instead.
                _log.warning(
                    "multi-process run without absl flags parsed: orbax cannot use the "
                    "distributed client's barriers, so checkpoints are saved synchronously."
                )
                async_save = False
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            save_interval_steps=every,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=not read_only,
            create=not read_only,
            read_only=read_only,
        )
        self.read_only = read_only
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest step whose checkpoint is completely written, or None if there is none.

        Read from the directory, so a save still in flight (or cut short by a crash) is not
        counted.
        """
        if not os.path.isdir(self.directory):
            return None
        steps = ocp.utils.checkpoint_steps(self.directory)
        return max(steps) if steps else None

    def all_steps(self) -> list[int]:
        """Every completely written step, oldest first."""
        if not os.path.isdir(self.directory):
            return []
        return sorted(ocp.utils.checkpoint_steps(self.directory))

    def should_save(self, step: int) -> bool:
        """Whether ``step`` is a scheduled checkpoint step: ``step % every == 0``."""
        return step % self.every == 0

    def save(
        self,
        step: int,
        state: Any,
        *,
        data_state: Mapping | bytes | None = None,
        force: bool = False,
    ) -> bool:
        """Save ``state`` and ``data_state`` as checkpoint ``step`` if it is due (or forced).

        Args:
          step: the train step the state has reached; steps must increase from save to save.
          state: any pytree of ``jax.Array`` (any sharding, typed PRNG keys included), NumPy
            arrays and Python scalars.
          data_state: the data iterator's ``get_state()``: a JSON-serialisable mapping, bytes
            (stored base64-encoded), or None.
          force: save even if ``step % every != 0`` (the final step, a stop request).

        Returns:
          True if a save was started; False if the step is not due, or a checkpoint for this or
          a later step already exists (e.g. a stop request right after a scheduled save).
        """
        if self.read_only:
            raise RuntimeError(f"Checkpointer({self.directory!r}) is read-only; it cannot save.")
        record = _encode_data_state(data_state)
        if not (force or self.should_save(step)):
            return False
        latest = self._manager.latest_step()  # includes a save still in flight
        if latest is not None and step <= latest:
            return False
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(record)
        )
        # The schedule was decided above (orbax's own policy would also save the first step).
        return bool(self._manager.save(step, args=args, force=True))

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, Mapping | bytes | None]:
        """Load checkpoint ``step``, each array placed as ``abstract_state`` says.

        Args:
          step: a step listed by :meth:`all_steps` (usually :meth:`latest_step`).
          abstract_state: the state's structure as ``jax.ShapeDtypeStruct`` leaves WITH their
            target ``sharding`` (``jax.eval_shape`` of the init function, then the shardings
            attached), Python scalars where the state holds Python scalars. Every array is read
            straight into those shardings, so a checkpoint saved on one mesh restores onto
            another.

        Returns:
          ``(state, data_state)``: data_state as given to :meth:`save` (mapping, bytes or None).

        Raises:
          FileNotFoundError: no finished checkpoint for ``step``; the message lists those there.
        """
        self._manager.wait_until_finished()
        steps = self.all_steps()
        if step not in steps:
            raise FileNotFoundError(
                f"no finished checkpoint for step {step} in {self.directory}; "
                f"finished steps: {steps or 'none'}."
            )
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
        )
        restored = self._manager.restore(step, args=args)
        return restored.state, _decode_data_state(restored.data)

    def wait(self) -> None:
        """Block until any save in flight has been written completely."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish any save in flight and release orbax's resources."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# config.json
# ---------------------------------------------------------------------------------------------

# Keys that may differ between the stored config and a resumed run's: extending the run, changing
# how it is logged, and how many checkpoints are kept change no result of the steps already done.
RESUMABLE_KEYS: tuple[str, ...] = ("train.steps", "log.*", "checkpoint.keep")
# Keys that may differ when a checkpoint is only evaluated (``python -m giftjax.eval``): those of
# a resume, plus how the evaluation itself runs (which steps, k, how many prompts).
EVAL_KEYS: tuple[str, ...] = (*RESUMABLE_KEYS, "eval.*", "data.eval_size")

_MISSING = object()


def _json_default(value: Any) -> Any:
    """Make config leaves JSON-serialisable: ConfigDicts, NumPy scalars and arrays, tuples."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(
        f"config value {value!r} of type {type(value).__name__} cannot be written to config.json; "
        f"use str, int, float, bool, None, lists or dicts."
    )


def _normalise(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config as it reads back from JSON (tuples become lists; floats round-trip exactly)."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    return json.loads(json.dumps(config, sort_keys=True, default=_json_default))


def _diff(old: Any, new: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """Every leaf that differs, as ``(dotted.path, old, new)``; ``_MISSING`` marks absence."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            sub = f"{path}.{key}" if path else str(key)
            out += _diff(old.get(key, _MISSING), new.get(key, _MISSING), sub)
        return out
    return [] if old == new else [(path, old, new)]


def _allowed(path: str, allow: Sequence[str]) -> bool:
    """Whether ``path`` matches ``allow``: ``a.b`` exactly, or ``a.*`` for a whole subtree."""
    for pattern in allow:
        if pattern.endswith(".*"):
            prefix = pattern[:-2]
            if path == prefix or path.startswith(prefix + "."):
                return True
        elif path == pattern:
            return True
    return False


def _describe(path: str, old: Any, new: Any) -> str:
    if old is _MISSING:
        return f"  {path}: added ({json.dumps(new)})"
    if new is _MISSING:
        return f"  {path}: removed (was {json.dumps(old)})"
    return f"  {path}: {json.dumps(old)} -> {json.dumps(new)}"


def _write_json_atomic(path: str, obj: Any) -> None:
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".config.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, sort_keys=True, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def check_config(
    workdir: str,
    config: Mapping[str, Any],
    *,
    allow: Sequence[str] = RESUMABLE_KEYS,
    write: bool = True,
) -> None:
    """Write ``WORKDIR/config.json`` on the first run; on a resume, refuse a changed config.

    The config is compared as it reads back from JSON (tuples equal lists). Changes to keys in
    ``allow`` (default :data:`RESUMABLE_KEYS`: ``train.steps``, ``log.*``, ``checkpoint.keep``)
    are accepted and config.json is rewritten with the new values; any other difference raises.
    Only process 0 writes; every process compares.

    Args:
      workdir: the run's directory (created if missing).
      config: the resolved config, a (nested) dict or ``ml_collections.ConfigDict``.
      allow: dotted keys that may change on resume; ``prefix.*`` allows a whole subtree.
      write: False only compares (evaluation): config.json is neither written nor updated, and
        a workdir without one is an error.

    Raises:
      ValueError: the stored config differs in a key outside ``allow``; the message lists each
        differing key as a dotted path with its old and new value (or added / removed).
      FileNotFoundError: ``write=False`` and the workdir holds no config.json.
    """
    path = os.path.join(workdir, "config.json")
    new = _normalise(config)
    is_main = jax.process_index() == 0 and write
    if not os.path.exists(path):
        if not write:
            raise FileNotFoundError(f"{path} does not exist: {workdir!r} is not a run's workdir.")
        if is_main:
            os.makedirs(workdir, exist_ok=True)
            _write_json_atomic(path, new)
        return
    with open(path, encoding="utf-8") as f:
        old = json.load(f)
    changes = _diff(old, new)
    refused = [c for c in changes if not _allowed(c[0], allow)]
    if refused:
        lines = "\n".join(_describe(*c) for c in refused)
        raise ValueError(
            f"the config differs from the one this workdir was started with ({path}):\n{lines}\n"
            f"Use a new --workdir for a different experiment, or revert these changes to resume. "
            f"(Keys that may change on resume: {', '.join(allow) or 'none'}.)"
        )
    if changes:
        _log.info("resuming with changed %s", "; ".join(_describe(*c).strip() for c in changes))
        if is_main:
            _write_json_atomic(path, new)


# ---------------------------------------------------------------------------------------------
# StopSignal
# ---------------------------------------------------------------------------------------------


class StopSignal:
    """SIGTERM / SIGINT -> a flag the training loop polls (then saves once and exits 0).

    Use as a context manager around the loop; the previous handlers come back on exit::

        with StopSignal() as stop:
            for step in ...:
                ...
                if stop.requested:
                    checkpointer.save(step, state, force=True)
                    break

    A second SIGINT while a stop is pending raises ``KeyboardInterrupt`` (press Ctrl-C twice to
    stop at once). Python handles signals only in the main thread: entered from another thread,
    it installs nothing, warns, and ``requested`` stays False.

    Args:
      signals: the signals to catch.
    """

    def __init__(self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = tuple(signals)
        self.received: int | None = None  # the first signal caught
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """Whether a stop signal has arrived since entering."""
        return self.received is not None

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.received is None:
            self.received = signum

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is not threading.main_thread():
            warnings.warn(
                "StopSignal entered outside the main thread: signal handlers can only be "
                "installed from the main thread, so SIGTERM/SIGINT will not request a graceful "
                "stop (requested stays False).",
                RuntimeWarning,
                stacklevel=2,
            )
            return self
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def resolve_step(workdir: str, step: int | None) -> int:
    """``step`` (None: the newest) after checking that ``workdir`` holds a finished checkpoint
    for it; FileNotFoundError lists the finished steps otherwise."""
    folder = os.path.join(workdir, "checkpoints")
    steps = finished_steps(folder)
    if not steps:
        raise FileNotFoundError(f"no finished checkpoint in {folder}.")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise FileNotFoundError(
            f"--step={step}: no finished checkpoint for it in {folder}; finished steps: {steps}."
        )
    return step


def finished_steps(folder: str) -> list[int]:
    """The steps of ``folder``'s finished checkpoints, ascending ([] when there is none)."""
    if not os.path.isdir(folder):
        return []
    return sorted(ocp.utils.checkpoint_steps(folder))
