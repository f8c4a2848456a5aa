"""Synthetic verifiable tasks generated on the fly, with a held-out split from another range.

Each task is a random-access source (grain's protocol: `__len__`, `__getitem__`): item `i` of
`SyntheticTask(kind, split, size, seed)` is drawn from a NumPy generator seeded with
`(seed, split, i)`, so it is the same on every host and every run, and needs no storage. Items
are dicts of strings:

- `prompt`: the task text, e.g. `"reverse 35172 ="` or `"add 27+45 ="`;
- `answer`: the expected response, e.g. `"27153"` or `"72"`;
- `demonstration`: the response text for SFT: the answer itself, unless the task was built
  with `wrong_demonstrations > 0` (see `SyntheticTask`); the `answer` (what the reward checks)
  is always correct;
- `rejected`: a worse response for DPO pairs, `rejected_response(demonstration)`.

Kinds (`KINDS`):

- `reverse`: reverse a digit string. Train lengths 3-5, held-out lengths 6-7.
- `add`: the decimal sum of two integers. Train operands in [0, 99], held-out in [100, 199].

The held-out split is drawn from a disjoint range, so scores on it measure generalisation
beyond the training distribution, not memorisation.

`score(completion, answer)` gives partial credit in [0, 1], because a freshly initialised
model almost never produces an exact answer and RL on an all-zero reward has no signal:

```
score = 0.1 * format + 0.9 * matches / max(len(c), len(a))
```

where `c` is the completion with surrounding whitespace stripped, `format` is 1 when `c` is a
non-empty string of digits, and `matches` counts positions i with `c[i] == a[i]`. The score is
1 exactly when `c == a`; a missing, extra or wrong digit costs `0.9 / max(len(c), len(a))`.
"""

from __future__ import annotations

import dataclasses
import operator
import re
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "KINDS",
    "AddKind",
    "ReverseKind",
    "SyntheticTask",
    "is_wrong_demonstration",
    "rejected_response",
    "score",
    "synthetic_reward",
    "wrong_answer",
]

SPLITS = ("train", "heldout")
_DIGITS = re.compile(r"[0-9]+")
_GOLDEN = (5**0.5 - 1) / 2  # 1/phi: the Weyl sequence frac(i / phi) is the most even one


def is_wrong_demonstration(index: int, fraction: float) -> bool:
    """Whether item ``index`` of a task with ``wrong_demonstrations=fraction`` is corrupted.

    ``frac((index + 1) / phi) < fraction`` (phi the golden ratio): a deterministic,
    evenly spread choice, the same for every seed and split, so among any n consecutive
    indices the number of wrong items is ``fraction * n`` up to a few items (the golden-ratio
    sequence has the smallest discrepancy of its kind), and exactly none for 0 and all for 1.

    Args:
      index: the item's index, >= 0.
      fraction: the share of wrong demonstrations, in [0, 1].
    """
    if fraction >= 1.0:
        return True
    return ((index + 1) * _GOLDEN) % 1.0 < fraction


def wrong_answer(answer: str) -> str:
    """A deliberately wrong demonstration for ``answer``: every digit ``d`` becomes
    ``(d + 1) mod 10`` (same length and format, no digit right: it scores 0.1)."""
    return "".join(str((int(ch) + 1) % 10) for ch in answer)


def rejected_response(text: str) -> str:
    """The ``rejected`` field of an item: its demonstration reversed (or with the last
    character doubled if it is a palindrome), a deterministic wrong response."""
    flipped = text[::-1]
    return flipped if flipped != text else text + text[-1:]


def _check_range(name: str, value: Any, low: int) -> tuple[int, int]:
    """Validates an inclusive integer range (lo, hi) with low <= lo <= hi."""
    try:
        lo, hi = (operator.index(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r}; expected a pair of ints (lo, hi).") from None
    if not low <= lo <= hi:
        raise ValueError(f"{name}={value!r}; expected {low} <= lo <= hi.")
    return lo, hi


def _check_disjoint(kind: str, train: tuple[int, int], heldout: tuple[int, int]) -> None:
    if train[1] >= heldout[0] and heldout[1] >= train[0]:
        raise ValueError(
            f"{kind}: the train range {train} and the held-out range {heldout} overlap; "
            "they must be disjoint so that the held-out split measures generalisation."
        )


@dataclasses.dataclass(frozen=True)
class ReverseKind:
    """Reverse a digit string: `"reverse 35172 ="` -> `"27153"`.

    Attributes:
      train_lengths: inclusive range of string lengths in the train split.
      heldout_lengths: inclusive range of string lengths in the held-out split (disjoint).
    """

    name: ClassVar[str] = "reverse"
    train_lengths: tuple[int, int] = (3, 5)
    heldout_lengths: tuple[int, int] = (6, 7)

    def __post_init__(self):
        train = _check_range("train_lengths", self.train_lengths, 1)
        heldout = _check_range("heldout_lengths", self.heldout_lengths, 1)
        _check_disjoint(self.name, train, heldout)

    def sample(self, rng: np.random.Generator, split: str) -> tuple[str, str]:
        """One (prompt, answer) pair of `split` drawn with `rng`."""
        lo, hi = self.train_lengths if split == "train" else self.heldout_lengths
        n = int(rng.integers(lo, hi + 1))
        digits = "".join(str(d) for d in rng.integers(0, 10, size=n))
        return f"reverse {digits} =", digits[::-1]


@dataclasses.dataclass(frozen=True)
class AddKind:
    """Add two integers: `"add 27+45 ="` -> `"72"`.

    Attributes:
      train_range: inclusive range of both operands in the train split.
      heldout_range: inclusive range of both operands in the held-out split (disjoint).
    """

    name: ClassVar[str] = "add"
    train_range: tuple[int, int] = (0, 99)
    heldout_range: tuple[int, int] = (100, 199)

    def __post_init__(self):
        train = _check_range("train_range", self.train_range, 0)
        heldout = _check_range("heldout_range", self.heldout_range, 0)
        _check_disjoint(self.name, train, heldout)

    def sample(self, rng: np.random.Generator, split: str) -> tuple[str, str]:
        """One (prompt, answer) pair of `split` drawn with `rng`."""
        lo, hi = self.train_range if split == "train" else self.heldout_range
        a, b = (int(x) for x in rng.integers(lo, hi + 1, size=2))
        return f"add {a}+{b} =", str(a + b)


KINDS: dict[str, type] = {k.name: k for k in (ReverseKind, AddKind)}


class SyntheticTask(Sequence):
    """A deterministic random-access source of one synthetic task's split.

    Examples:

        ```
        task = SyntheticTask(kind="reverse", split="train", size=1000, seed=0)
        task[3]  # {"prompt": "reverse 904 =", "answer": "409", "demonstration": "409",
                 #  "rejected": "904"}
        ```

    Args:
      kind: a name in `KINDS` ("reverse", "add").
      split: "train" or "heldout" (drawn from a disjoint range, see the kind).
      size: number of items, >= 1.
      seed: int >= 0; item i depends only on (kind arguments, seed, split, i).
      wrong_demonstrations: the share of items, in [0, 1], whose `demonstration` is
        deliberately wrong (`wrong_answer(answer)`), chosen by `is_wrong_demonstration`: a
        noisy demonstration set for hybrid SFT+RL experiments. The `answer` stays correct.
      **kind_args: fields of the kind's dataclass (e.g. `train_lengths=(3, 4)` for reverse).
    """

    def __init__(
        self,
        kind: str = "reverse",
        split: str = "train",
        size: int = 1000,
        seed: int = 0,
        wrong_demonstrations: float = 0.0,
        **kind_args: Any,
    ):
        if kind not in KINDS:
            raise ValueError(f"unknown synthetic task kind={kind!r}; known kinds: {sorted(KINDS)}.")
        if split not in SPLITS:
            raise ValueError(f"split={split!r}; expected one of {SPLITS}.")
        if not isinstance(size, int | np.integer) or size < 1:
            raise ValueError(f"size={size!r}; expected an int >= 1.")
        if not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed={seed!r}; expected an int >= 0.")
        if (
            not isinstance(wrong_demonstrations, int | float | np.floating)
            or isinstance(wrong_demonstrations, bool)
            or not 0.0 <= wrong_demonstrations <= 1.0
        ):
            raise ValueError(
                f"wrong_demonstrations={wrong_demonstrations!r}; expected a fraction in [0, 1]."
            )
        self.wrong_demonstrations = float(wrong_demonstrations)
        try:
            self.task = KINDS[kind](**kind_args)
        except TypeError as e:
            fields = [f.name for f in dataclasses.fields(KINDS[kind])]
            raise ValueError(f"{kind}: bad arguments {kind_args}; its fields are {fields}.") from e
        self.kind, self.split, self.size, self.seed = kind, split, int(size), int(seed)
        self._split_code = SPLITS.index(split)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.size))]
        i = operator.index(index)
        if i < 0:
            i += self.size
        if not 0 <= i < self.size:
            raise IndexError(f"index {index} out of range for a SyntheticTask of size {self.size}.")
        rng = np.random.default_rng((self.seed, self._split_code, i))
        prompt, answer = self.task.sample(rng, self.split)
        demo = answer
        if self.wrong_demonstrations and is_wrong_demonstration(i, self.wrong_demonstrations):
            demo = wrong_answer(answer)
        return {
            "prompt": prompt,
            "answer": answer,
            "demonstration": demo,
            "rejected": rejected_response(demo),
        }

    def __repr__(self) -> str:
        return (
            f"SyntheticTask(kind={self.kind!r}, split={self.split!r}, size={self.size}, "
            f"seed={self.seed}, wrong_demonstrations={self.wrong_demonstrations}, {self.task})"
        )


def score(completion: str, answer: str) -> float:
    """Partial-credit score in [0, 1] of a completion against the expected answer.

    `score = 0.1 * format + 0.9 * matches / max(len(c), len(answer))`, with `c =
    completion.strip()`, `format = 1` when `c` is a non-empty digit string, `matches` the
    number of positions i with `c[i] == answer[i]`. 1.0 exactly when `c == answer`.

    Args:
      completion: the decoded response text.
      answer: the expected answer, a non-empty digit string.

    Returns:
      A float in [0, 1].
    """
    if not isinstance(answer, str) or not _DIGITS.fullmatch(answer):
        raise ValueError(f"answer={answer!r}; expected a non-empty string of digits.")
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a str; received {type(completion).__name__}.")
    c = completion.strip()
    fmt = 1.0 if _DIGITS.fullmatch(c) else 0.0
    matches = sum(x == y for x, y in zip(c, answer, strict=False))
    # (fmt + 9 m / n) / 10 rather than 0.1 fmt + 0.9 m / n: exactly 1.0 when m == n and fmt == 1
    # (0.1 + 0.9 rounds to 0.9999999999999999), so "score == 1" counts exact answers.
    return (fmt + 9.0 * matches / max(len(c), len(answer))) / 10.0


def synthetic_reward(
    prompts: Sequence[str], completions: Sequence[str], *, answer: Sequence[str], **columns: Any
) -> list[float]:
    """`score` as a reward function of the reward protocol (`giftjax.rewards`).

    Args:
      prompts: [B] prompt texts (unused: the answer column carries the target).
      completions: [B] decoded responses.
      answer: [B] expected answers, the data set's `answer` column.
      **columns: the data set's other columns (unused).

    Returns:
      [B] scores in [0, 1].
    """
    del prompts, columns
    if len(completions) != len(answer):
        raise ValueError(
            f"{len(completions)} completions but {len(answer)} answers; expected one each."
        )
    return [score(c, a) for c, a in zip(completions, answer, strict=True)]
