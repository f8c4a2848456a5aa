"""Checkpoints of the train state (orbax), and the finished steps of a run.

Independent of what the train state holds:

- `Checkpointer` saves and restores any pytree of ``jax.Array`` (sharded or not, typed PRNG
  keys included), NumPy arrays and Python scalars with orbax, plus the data iterator's state as
  JSON beside it in the same step directory. Saves may run in the background (async); a step
  directory becomes visible under its final name only once complete, so a crash mid-save leaves
  the previous checkpoints intact and `Checkpointer.latest_step` never reports a
  half-written one.
- `finished_steps` and `resolve_step` read which steps a WORKDIR holds.

The run's config.json is `giftjax.train.run_config`'s, the stop flag
`giftjax.train.stop`'s.

Layout of one step (``directory/<step>/``): ``state/`` (orbax ``StandardSave``) and ``data/``
(orbax ``JsonSave`` of ``{"kind": "none" | "json" | "bytes", "value": ...}``; bytes are base64).
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp

from giftjax import distributed
from giftjax import workdir as workdir_lib

__all__ = ["Checkpointer", "finished_steps", "resolve_step"]

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
    """Inverse of `_encode_data_state`."""
    if record is None or record.get("kind") == "none":
        return None
    if record["kind"] == "bytes":
        return base64.b64decode(record["value"])
    if record["kind"] == "json":
        return record["value"]
    raise ValueError(f"unknown data_state record kind {record['kind']!r} in checkpoint.")


class Checkpointer:
    """Keep-N, optionally asynchronous orbax checkpoints of a train state and a data state.

    All processes of a multi-host job must create the Checkpointer and call `save` and
    `restore` together (orbax coordinates them; process 0 writes the metadata).

    Args:
      directory: where step directories go (``WORKDIR/checkpoints``); created if missing.
        Unfinished temporary directories left by a crash are removed on start.
      every: save every ``every`` steps (``step % every == 0``), >= 1.
      keep: how many of the newest checkpoints to keep, >= 1.
      async_save: write in a background thread; `save` returns once the arrays are copied
        off the devices. `wait` or `close` blocks until the write has finished.
      read_only: only list and restore (evaluation): the directory is neither created nor
        cleaned of unfinished saves (a run may be writing one), and `save` is refused.
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
          step: a step listed by `all_steps` (usually `latest_step`).
          abstract_state: the state's structure as ``jax.ShapeDtypeStruct`` leaves WITH their
            target ``sharding`` (``jax.eval_shape`` of the init function, then the shardings
            attached), Python scalars where the state holds Python scalars. Every array is read
            straight into those shardings, so a checkpoint saved on one mesh restores onto
            another.

        Returns:
          ``(state, data_state)``: data_state as given to `save` (mapping, bytes or None).

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


def resolve_step(workdir: str, step: int | None) -> int:
    """``step`` (None: the newest) after checking that ``workdir`` holds a finished checkpoint
    for it; FileNotFoundError lists the finished steps otherwise."""
    folder = os.path.join(workdir, workdir_lib.CHECKPOINTS)
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
