"""One reward call on one row, and the check of what it returned.

Both executors (threads and processes) run `call_reward`, so a call is judged the same
way wherever it runs. Everything here is plain data that pickles (it crosses process pipes).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from giftjax.rewards.registry import RewardFn

# Failure kinds, as written to the error log.
RAISED = "raised"
TIMEOUT = "timeout"
NON_FINITE = "non_finite"
BAD_OUTPUT = "bad_output"

ERROR_CHARS = 2000  # reprs of exceptions and bad outputs are truncated to this many characters
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class Call(NamedTuple):
    """One reward function applied to one row of the batch."""

    task_id: int  # unique within a RewardRunner, never reused
    row: int  # index of the row in the batch
    reward: str  # registered name of the function
    prompt: str
    completion: str
    columns: dict[str, Any]  # the row's value of each data-set column


class Outcome(NamedTuple):
    """The score of one call: ``kind`` is None on success, else one of the failure kinds."""

    value: float  # the reward; 0.0 when the call failed
    kind: str | None  # None, RAISED, TIMEOUT, NON_FINITE or BAD_OUTPUT
    error: str | None  # repr of the error (truncated to ERROR_CHARS), None on success


def truncate(text: str, limit: int) -> str:
    """Returns the first ``limit`` characters of ``text``."""
    return text if len(text) <= limit else text[:limit]


def failure(kind: str, error: str) -> Outcome:
    """Returns the zero-valued outcome of a failed call."""
    return Outcome(0.0, kind, truncate(error, ERROR_CHARS))


def check_output(output: Any) -> Outcome:
    """Judges what a reward function returned for a single completion.

    A valid output is a list, tuple or 1-D array holding exactly one real number (Python int,
    float or bool, NumPy integer or floating) whose float32 value is finite.

    Args:
      output: the function's return value for lists of length 1.

    Returns:
      The value as an `Outcome`, or a BAD_OUTPUT / NON_FINITE failure.
    """
    if isinstance(output, (str, bytes, Mapping)) or not isinstance(output, (Sequence, np.ndarray)):
        return failure(
            BAD_OUTPUT, f"expected a sequence of 1 float, got {type(output).__name__}: {output!r}"
        )
    if isinstance(output, np.ndarray) and output.ndim != 1:
        return failure(BAD_OUTPUT, f"expected a 1-D array, got shape {output.shape}: {output!r}")
    if len(output) != 1:
        return failure(BAD_OUTPUT, f"returned {len(output)} values for 1 completion: {output!r}")
    value = output[0]
    if not isinstance(value, numbers.Real):
        return failure(BAD_OUTPUT, f"expected a real number, got {type(value).__name__}: {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError) as e:
        return failure(BAD_OUTPUT, f"float({value!r}) failed: {e!r}")
    if not math.isfinite(number) or abs(number) > _FLOAT32_MAX:
        return failure(NON_FINITE, f"non-finite reward (in float32): {value!r}")
    return Outcome(number, None, None)


def call_reward(fn: RewardFn, call: Call) -> Outcome:
    """Runs ``fn`` on the single row of ``call`` and judges its output; never raises.

    The function receives lists of length 1: ``fn([prompt], [completion], **{k: [v]})``.
    """
    try:
        output = fn([call.prompt], [call.completion], **{k: [v] for k, v in call.columns.items()})
    except (Exception, SystemExit) as e:  # a reward's own failure scores 0 and is logged
        return failure(RAISED, repr(e))
    try:
        return check_output(output)
    except Exception as e:  # an output whose len() or [0] raises
        return failure(BAD_OUTPUT, f"could not read the output: {e!r}")
