"""The run's config.json: written on the first run, checked on every resume and evaluation.

`check_config` writes ``WORKDIR/config.json`` (``giftjax.workdir.CONFIG_JSON``) on the
first run and refuses to resume with a different config, naming every key that changed; the
keys of `RESUMABLE_KEYS` may change on a resume, those of `EVAL_KEYS` when a
checkpoint is only evaluated.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from giftjax import workdir as workdir_lib

__all__ = ["EVAL_KEYS", "RESUMABLE_KEYS", "check_config"]

_log = logging.getLogger(__name__)

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
    ``allow`` (default `RESUMABLE_KEYS`: ``train.steps``, ``log.*``, ``checkpoint.keep``)
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
    path = os.path.join(workdir, workdir_lib.CONFIG_JSON)
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
