"""The reward error log: one JSON line per failed call (``WORKDIR/reward_errors.jsonl``)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from giftjax.rewards.call import Call, Outcome, truncate

TEXT_CHARS = 10000  # prompts, completions and string column values are truncated to this


def _jsonable(value: Any) -> Any:
    """Returns a column value as JSON: strings truncated, other non-JSON values as their repr."""
    if isinstance(value, np.generic):  # NumPy scalars from array columns
        value = value.item()
    if isinstance(value, str):
        return truncate(value, TEXT_CHARS)
    try:
        json.dumps(value, allow_nan=False)
        return value
    except (TypeError, ValueError):
        return truncate(repr(value), TEXT_CHARS)


def error_record(step: int, call: Call, outcome: Outcome) -> dict[str, Any]:
    """Returns the log entry of one failed call.

    Keys: ``step``, ``reward`` (registered name), ``kind`` (raised / timeout / non_finite /
    bad_output), ``error`` (repr, at most 2000 characters), ``prompt`` and ``completion`` (at
    most TEXT_CHARS characters each) and ``columns`` (the row's column values).
    """
    return {
        "step": int(step),
        "reward": call.reward,
        "kind": outcome.kind,
        "error": outcome.error,
        "prompt": truncate(call.prompt, TEXT_CHARS),
        "completion": truncate(call.completion, TEXT_CHARS),
        "columns": {k: _jsonable(v) for k, v in call.columns.items()},
    }


def append_records(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> None:
    """Appends ``records`` to the JSON-lines file at ``path`` (created with its folders)."""
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in records]
    if not lines:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.writelines(lines)
