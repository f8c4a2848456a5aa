"""Verified math rewards: ``gsm8k`` (numbers), ``math`` (LaTeX, math-verify) and ``format``.

Completions are untrusted model output. Every reward here first reads them with the
linear-time, size-bounded code of `giftjax.rewards.answers` (too long, NUL bytes, invalid
Unicode, unbalanced or over-nested boxes: 0 at once). Only ``math`` then calls sympy, through
math-verify, on an answer of at most ``MAX_ANSWER_CHARS`` characters and ``MAX_NESTING`` levels.
sympy can still take minutes on a short input (``9^{9^{9^9}}``), so:

  - in a process's main thread each math-verify step runs under a SIGALRM limit of
    `SYMPY_TIMEOUT_S` seconds (math-verify's own mechanism; it interrupts Python code,
    not a long C call);
  - the hard guarantee is [`RewardRunner`][giftjax.rewards.RewardRunner] with
    ``executor="process"``: each row is one call in a worker process that is killed when it runs
    past ``time_limit``, and the row scores 0. Use it for ``math``, with ``workers`` = the host's
    cores for parallel scoring. The thread executor cannot stop a runaway sympy call.

This module imports math-verify (and sympy) at import time on purpose: a worker process imports
it while starting, so the ~0.5 s import is never charged to a call's time limit.

Rewards (all ``fn(prompts, completions, *, answer, **unused_columns) -> list[float]``):
  - ``gsm8k``: 1.0 if the completion's final number (`answers.final_number`) equals the
    reference's, exactly, else 0.0. The reference may be a bare number or a GSM8K solution
    ending in ``#### N``.
  - ``math``: 1.0 if the last ``\\boxed{...}`` of the completion is equivalent to the reference
    (`latex_equivalent`), else 0.0. The reference may be a bare LaTeX answer or a
    solution with a ``\\boxed{...}``.
  - ``format``: 1.0 if the completion states a final answer the extractors can read, else 0.0
    (no sympy; give it a small weight, e.g. 0.1).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import math_verify

from giftjax.rewards import answers
from giftjax.rewards.registry import register

# Seconds each math-verify step (parse gold, parse answer, compare) may take before
# math-verify's SIGALRM gives up on it (an int: signal.alarm counts whole seconds). A normal
# MATH answer parses and compares in ~10 ms; RewardRunner's time_limit is the hard cap.
SYMPY_TIMEOUT_S = 3
# Answers are handed to math-verify as a lone \boxed{...}, read at top priority.
_LATEX_CONFIG = (math_verify.LatexExtractionConfig(boxed_match_priority=0),)


def _alarm_seconds() -> int | None:
    """math-verify's time limit, or None off the main thread (signal.alarm cannot work there)."""
    return SYMPY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _parse_latex(answer: str) -> list[Any]:
    """Returns math-verify's parses of one LaTeX answer ([] if it does not parse in time)."""
    return math_verify.parse(
        "\\boxed{" + answer + "}",
        extraction_config=_LATEX_CONFIG,
        fallback_mode="no_fallback",
        parsing_timeout=_alarm_seconds(),
    )


def latex_equivalent(gold: str, pred: str) -> bool:
    """Whether the LaTeX answer ``pred`` is mathematically equal to the reference ``gold``.

    ``normalize_latex(gold) == normalize_latex(pred)`` (see `answers.normalize_latex`)
    settles it without sympy; otherwise both are parsed by math-verify and compared with
    ``math_verify.verify`` (symbolic, then numeric to 6 decimals; intervals, sets, tuples and
    matrices element-wise): ``\\frac{14}{3}`` = ``14/3`` = ``4\\frac{2}{3}``, ``0.5`` =
    ``\\frac12``, ``90^\\circ`` = ``90``. An answer that does not parse in time is not equal
    (unless its normalised string is). Not symmetric: math-verify treats ``gold`` as the
    reference (``x=5`` as gold accepts ``5``).

    Args:
      gold: the reference answer, trusted LaTeX without ``\\boxed``.
      pred: the answer to check, at most ``answers.MAX_ANSWER_CHARS`` characters.

    Returns:
      True if equivalent.
    """
    if answers.normalize_latex(gold) == answers.normalize_latex(pred):
        return True
    return sympy_equivalent(gold, pred)


def sympy_equivalent(gold: str, pred: str) -> bool:
    """math-verify's verdict alone (no string shortcut): both parsed, then ``verify``.

    Each of the three steps runs under `SYMPY_TIMEOUT_S` in a main thread; an answer that
    does not parse (or a step that times out) is not equal. Arguments as
    `latex_equivalent`.
    """
    gold_parsed = _parse_latex(gold)
    pred_parsed = _parse_latex(pred) if gold_parsed else []
    if not pred_parsed:
        return False
    return math_verify.verify(gold_parsed, pred_parsed, timeout_seconds=_alarm_seconds())


def reference_latex(reference: Any) -> str:
    """Returns the LaTeX answer of a reference: its last ``\\boxed{...}``, else all of it.

    Raises:
      ValueError: if the reference is empty, holds a ``\\boxed`` that cannot be read, or is
        longer or deeper than the limits of `giftjax.rewards.answers`.
    """
    text = str(reference)
    gold = answers.last_boxed(text) if "\\boxed" in text or "\\fbox" in text else text.strip()
    if (
        not gold
        or len(gold) > answers.MAX_ANSWER_CHARS
        or answers.nesting_depth(gold) > answers.MAX_NESTING
    ):
        raise ValueError(
            f"math: answer {text[:200]!r} has no readable LaTeX answer: need a non-empty "
            f"answer (or last \\boxed{{...}}) of at most {answers.MAX_ANSWER_CHARS} characters "
            f"and nesting depth {answers.MAX_NESTING}"
        )
    return gold


def reference_number(reference: Any) -> Fraction:
    """Returns the number of a GSM8K reference: a bare number or a solution ending ``#### N``.

    Raises:
      ValueError: if the reference holds no readable number.
    """
    text = str(reference)
    value = answers.final_number(text) if answers.screen(text) is not None else None
    if value is None:
        raise ValueError(
            f"gsm8k: answer {text[:200]!r} holds no readable number: need a bare number "
            "('1,600', '-3', '2.5') or a solution ending in '#### N'"
        )
    return value


def _check_lengths(name: str, completions: Sequence[str], answer: Sequence[Any]) -> None:
    if len(answer) != len(completions):
        raise ValueError(
            f"{name}: answer has {len(answer)} values for {len(completions)} completions"
        )


@register("gsm8k")
def gsm8k(
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    answer: Sequence[Any],
    **unused_columns: Sequence[Any],
) -> list[float]:
    """1.0 where the completion's final number equals the reference number, else 0.0.

    ``r_i = 1[final_number(completion_i) == final_number(answer_i)]``, compared exactly as
    fractions after ``$``, thousands commas and units are dropped (``18.0`` = ``18`` =
    ``$18 dollars``). See `answers.final_number` for the markers read.

    Args:
      prompts: [B] prompts (unused).
      completions: [B] decoded completions (untrusted).
      answer: [B] references: bare numbers or GSM8K solutions ending in ``#### N``.
      **unused_columns: the data set's other columns, ignored.

    Returns:
      [B] floats in {0.0, 1.0}.

    Raises:
      ValueError: if the lengths differ or a reference holds no number.
    """
    del prompts, unused_columns
    _check_lengths("gsm8k", completions, answer)
    scores = []
    for completion, reference in zip(completions, answer, strict=True):
        gold = reference_number(reference)
        text = answers.screen(completion)
        value = None if text is None else answers.final_number(text)
        scores.append(1.0 if value == gold else 0.0)
    return scores


@register("math")
def math_reward(
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    answer: Sequence[Any],
    **unused_columns: Sequence[Any],
) -> list[float]:
    """1.0 where the completion's last boxed answer is equivalent to the reference, else 0.0.

    ``r_i = 1[latex_equivalent(reference_latex(answer_i), last_boxed(completion_i))]``; a
    completion refused by `answers.screen` or without a readable last box scores 0.

    Args:
      prompts: [B] prompts (unused).
      completions: [B] decoded completions (untrusted).
      answer: [B] references: LaTeX answers (MATH's ``answer``) or solutions with a box.
      **unused_columns: the data set's other columns, ignored.

    Returns:
      [B] floats in {0.0, 1.0}.

    Raises:
      ValueError: if the lengths differ or a reference is unreadable.
    """
    del prompts, unused_columns
    _check_lengths("math", completions, answer)
    scores = []
    for completion, reference in zip(completions, answer, strict=True):
        gold = reference_latex(reference)
        text = answers.screen(completion)
        pred = None if text is None else answers.last_boxed(text)
        scores.append(1.0 if pred is not None and latex_equivalent(gold, pred) else 0.0)
    return scores


def has_final_answer(completion: str) -> bool:
    """Whether ``completion`` passes `answers.screen` and states a readable final answer.

    Readable: a last ``\\boxed{...}`` within the size and nesting limits, or a number after
    ``####``, ``The answer is`` or ``A:`` (`answers.marked_number`). A bare trailing
    number does not count: it follows no template.
    """
    text = answers.screen(completion)
    if text is None:
        return False
    return answers.last_boxed(text) is not None or answers.marked_number(text) is not None


@register("format")
def format_reward(
    prompts: Sequence[str], completions: Sequence[str], **unused_columns: Sequence[Any]
) -> list[float]:
    """1.0 where the completion follows an answer template (`has_final_answer`), else 0.

    Meant as a small shaping term next to ``gsm8k`` or ``math`` (weight ~0.1). Linear time,
    no sympy: safe on the thread executor.

    Args:
      prompts: [B] prompts (unused).
      completions: [B] decoded completions (untrusted).
      **unused_columns: the data set's columns, ignored.

    Returns:
      [B] floats in {0.0, 1.0}.
    """
    del prompts, unused_columns
    return [1.0 if has_final_answer(c) else 0.0 for c in completions]
