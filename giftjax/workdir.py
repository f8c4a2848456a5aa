"""The files of a run's WORKDIR, named once, and the one JSON-lines reader (no jax import).

Layout (what ``python -m giftjax.main`` writes, and ``giftjax.eval``, ``giftjax.export`` and
``giftjax.plot`` read):

- ``config.json`` (`CONFIG_JSON`): the resolved config of the first run; a resume must
  match it (``giftjax.train.run_config.check_config``);
- ``metrics.jsonl`` (`METRICS`): one JSON object per logged step;
- ``samples.jsonl`` (`SAMPLES`): sampled completions, ``{"step": int, **row}``;
- ``reward_errors.jsonl`` (`REWARD_ERRORS`): reward calls that failed or timed out;
- ``checkpoints/`` (`CHECKPOINTS`): one orbax step directory per saved step;
- ``tensorboard/`` (`TENSORBOARD`): TensorBoard event files;
- ``hf/`` (`HF_DIR`): the exported Hugging Face checkpoint (``giftjax.export``);
- ``eval_step_<step>.json`` (`eval_path`): one evaluation of a checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Any

__all__ = [
    "CHECKPOINTS",
    "CONFIG_JSON",
    "HF_DIR",
    "METRICS",
    "REWARD_ERRORS",
    "SAMPLES",
    "TENSORBOARD",
    "eval_path",
    "keep_rows_up_to",
    "read_jsonl",
    "truncate_partial_line",
]

CONFIG_JSON = "config.json"
METRICS = "metrics.jsonl"
SAMPLES = "samples.jsonl"
REWARD_ERRORS = "reward_errors.jsonl"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
HF_DIR = "hf"


def eval_path(workdir: str, step: int) -> str:
    """``WORKDIR/eval_step_<step>.json``: the evaluation of checkpoint ``step``."""
    return os.path.join(workdir, f"eval_step_{step}.json")


def read_jsonl(path: str, *, missing_ok: bool = True) -> list[dict[str, Any]]:
    """Read a JSON-lines file, dropping a partial last line (a writer killed mid-line).

    Args:
      path: a ``.jsonl`` file (metrics.jsonl, samples.jsonl, a data file).
      missing_ok: a missing file reads as ``[]`` (else FileNotFoundError).

    Returns:
      The rows in file order (blank lines skipped).

    Raises:
      FileNotFoundError: the file does not exist and ``missing_ok`` is False.
      ValueError: a line other than the last is not valid JSON (the file was edited or
        corrupted otherwise); the message gives the line number.
    """
    if not os.path.exists(path):
        if missing_ok:
            return []
        raise FileNotFoundError(f"no JSON-lines file at {path}.")
    with open(path, encoding="utf-8") as f:
        # Every complete line ends with "\n": the last piece is "" or a write cut short.
        complete = f.read().split("\n")[:-1]
    rows = []
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {number}: not valid JSON ({e}).") from e
    return rows


def truncate_partial_line(path: str) -> None:
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


def keep_rows_up_to(path: str, last_step: int) -> None:
    """Keep the rows of a JSON-lines file with ``step <= last_step`` (a resumed run's), atomically
    (temp file + os.replace)."""
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
