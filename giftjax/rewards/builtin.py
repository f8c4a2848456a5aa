"""General-purpose rewards, registered when [`giftjax.rewards`][giftjax.rewards] is imported.

Task-specific scorers (math answers, the synthetic task) live with their tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from giftjax.rewards.registry import register


def _first_line(text: str) -> str:
    """Returns ``text`` stripped, up to its first newline, stripped again."""
    return text.strip().split("\n", 1)[0].strip()


@register("exact_match")
def exact_match(
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    answer: Sequence[Any],
    **unused_columns: Sequence[Any],
) -> list[float]:
    """1.0 where the completion's first line equals the answer, else 0.0.

    ``r_i = 1[first_line(strip(completion_i)) == strip(str(answer_i))]``, where first_line keeps
    the text up to the first newline (itself stripped of surrounding whitespace).

    Args:
      prompts: [B] prompts (unused).
      completions: [B] decoded completions.
      answer: [B] reference answers (the data set's ``answer`` column); non-strings are
        compared through ``str``.
      **unused_columns: the data set's other columns, ignored.

    Returns:
      [B] floats in {0.0, 1.0}.
    """
    del prompts, unused_columns
    if len(answer) != len(completions):
        raise ValueError(
            f"exact_match: answer has {len(answer)} values for {len(completions)} completions"
        )
    return [
        1.0 if _first_line(c) == str(a).strip() else 0.0
        for c, a in zip(completions, answer, strict=True)
    ]


@register("length")
def length(
    prompts: Sequence[str], completions: Sequence[str], **unused_columns: Sequence[Any]
) -> list[float]:
    """A small example reward favouring short completions: ``r_i = -len(completion_i) / 1000``.

    Args:
      prompts: [B] prompts (unused).
      completions: [B] decoded completions; length counts characters.
      **unused_columns: the data set's columns, ignored.

    Returns:
      [B] floats, ``<= 0``.
    """
    del prompts, unused_columns
    return [-len(c) / 1000 for c in completions]
