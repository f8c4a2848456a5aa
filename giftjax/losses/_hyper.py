"""Trace-time checks of scalar hyperparameters shared by the GRPO, DPO, UNA and SFT losses.

Python numbers are checked at trace time; traced scalars (a hyperparameter swept under
``jax.vmap`` or passed as a jit argument) cannot be, and pass through unchecked.
"""

from __future__ import annotations

import numbers


def is_number(x: object) -> bool:
    """True for a Python (or NumPy) real number that is not a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_scalar(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
    """Raise unless ``value`` is a real number in the stated range (arrays pass unchecked)."""
    if isinstance(value, bool) or not (is_number(value) or hasattr(value, "dtype")):
        raise TypeError(f"{name} must be a float, got {value!r}.")
    if not is_number(value):
        return
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    too_high = high is not None and (value > high if high_inclusive else value >= high)
    if too_low or too_high:
        lo = "" if low is None else ("[" if low_inclusive else "(") + f"{low}"
        hi = "" if high is None else f"{high}" + ("]" if high_inclusive else ")")
        if low is not None and high is not None:
            want = f"in {lo}, {hi}"
        elif low is not None:
            want = (">= " if low_inclusive else "> ") + f"{low}"
        else:
            want = ("<= " if high_inclusive else "< ") + f"{high}"
        raise ValueError(f"{name} must be {want}, got {value!r}.")
