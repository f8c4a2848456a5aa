"""giftjax.rewards.math and .answers: answer extraction, equivalence, hostile input.

Data: the excerpts in tests/data (always), and the full GSM8K / MATH-500 test sets from
``../shared/data`` relative to the repo root (or $GIFTJAX_SHARED_DATA), skipped when absent.
"""

import json
import os
import re
import threading
import time
from fractions import Fraction
from pathlib import Path

import pytest

from giftjax import rewards
from giftjax.rewards import answers
from giftjax.rewards.math import (
    has_final_answer,
    latex_equivalent,
    reference_latex,
    sympy_equivalent,
)

HERE = Path(__file__).parent
SHARED = Path(os.environ.get("GIFTJAX_SHARED_DATA", os.path.join("..", "shared", "data")))
GSM8K_FULL = SHARED / "gsm8k" / "test.jsonl"
MATH500_FULL = SHARED / "math500" / "test.jsonl"
GSM8K_EXCERPT = HERE / "data" / "gsm8k_test_excerpt.jsonl"
MATH500_EXCERPT = HERE / "data" / "math500_test_excerpt.jsonl"
needs_gsm8k = pytest.mark.skipif(
    not GSM8K_FULL.exists(), reason=f"{GSM8K_FULL} is absent (the full GSM8K test set)"
)
needs_math500 = pytest.mark.skipif(
    not MATH500_FULL.exists(), reason=f"{MATH500_FULL} is absent (the full MATH-500 test set)"
)

gsm8k = rewards.get("gsm8k")
math_reward = rewards.get("math")
format_reward = rewards.get("format")


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def gsm8k_number(row):
    """The number after GSM8K's ``####``, read independently of giftjax (no commas inside)."""
    return Fraction(row["answer"].rsplit("####", 1)[1].strip().replace(",", ""))


def same_math_answer(gold, other):
    """Whether two MATH answers are one answer written alike (``x=5`` and ``5`` too)."""
    bare = [re.sub(r"^[a-z]=", "", answers.normalize_latex(a)) for a in (gold, other)]
    return bare[0] == bare[1]


# ----------------------------------------------------------------------------- screening


@pytest.mark.parametrize(
    "text",
    [
        "x" * (answers.MAX_COMPLETION_CHARS + 1),
        "the answer is \\boxed{5}\x00",
        "\\boxed{5} \udcff",  # a lone surrogate: invalid UTF-8 decoded with surrogateescape
        b"\\boxed{5}".decode("ascii") + "\ud800",
    ],
)
def test_screen_refuses_hostile_text(text):
    assert answers.screen(text) is None
    assert gsm8k(["p"], [text], answer=["5"]) == [0.0]
    assert math_reward(["p"], [text], answer=["5"]) == [0.0]
    assert format_reward(["p"], [text]) == [0.0]


def test_screen_accepts_unicode():
    text = "Donc la réponse est \\boxed{5} — fin ✓"
    assert answers.screen(text) is text
    assert math_reward(["p"], [text], answer=["5"]) == [1.0]


# ----------------------------------------------------------------------------- boxes


@pytest.mark.parametrize(
    ("text", "content"),
    [
        ("so \\boxed{5}.", "5"),
        ("\\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\fbox{ 7 }", "7"),
        ("\\boxed {\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces are literal
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\boxed{\\text{east}}", "\\text{east}"),
        ("\\boxed{5} and \\boxed{6", None),  # the last box is unclosed: no answer
        ("\\boxed{}", None),
        ("no box", None),
        ("\\boxed{" + "1+" * answers.MAX_ANSWER_CHARS + "1}", None),  # too long
        ("\\boxed{" + "(" * 7 + "1" + ")" * 7 + "}", None),  # too deep
        ("\\boxed{" + "(" * 6 + "1" + ")" * 6 + "}", "(" * 6 + "1" + ")" * 6),
    ],
)
def test_last_boxed(text, content):
    assert answers.last_boxed(text) == content


@pytest.mark.parametrize(
    ("text", "depth"),
    [("", 0), ("[1, 2)", 1), ("\\{\\{1\\}\\}", 2), ("\\\\{1}", 1), ("((a)(b))", 2), (")))(", 1)],
)
def test_nesting_depth(text, depth):
    assert answers.nesting_depth(text) == depth


# ----------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("Janet makes 9 * 2 = $18 every day.\n#### 18", 18),
        ("#### $1,000.00 dollars", 1000),
        ("She has 3 left, so \\boxed{12} apples; 5 more later", 12),
        ("The answer is: $18.00.", 18),
        ("so the final answer is −7 degrees, not 3", -7),
        ("Q: how many?\nA: 42 apples", 42),
        ("We get 5 - 3 = 2", 2),  # subtraction, not -3
        ("it costs .5 dollars", Fraction(1, 2)),
        ("#### \nThe answer is 4", 4),  # a marker without a number falls through
        ("x" * 40 + " 7", 7),
        ("no number here", None),
        ("#### " + "9" * (answers.MAX_NUMBER_CHARS + 1), None),  # too long a number: 0
    ],
)
def test_final_number(text, value):
    assert answers.final_number(text) == value


def test_gsm8k_reward_compares_numbers_exactly():
    completions = ["#### 18.0", "The answer is $18", "\\boxed{17}", "18.5", "no idea", "#### 18"]
    assert gsm8k(["p"] * 6, completions, answer=["18"] * 5 + ["1,8"]) == [1, 1, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="gsm8k: answer 'none' holds no readable number"):
        gsm8k(["p"], ["1"], answer=["none"])
    with pytest.raises(ValueError, match="answer has 2 values for 1 completions"):
        gsm8k(["p"], ["1"], answer=["1", "2"])


# ----------------------------------------------------------------------------- LaTeX


@pytest.mark.parametrize(
    ("gold", "pred"),
    [
        ("\\frac{14}{3}", "14/3"),
        ("\\frac{14}{3}", "4\\frac{2}{3}"),
        ("\\frac{14}{3}", "\\dfrac{14}{3}"),
        ("0.5", "\\frac12"),
        ("90^\\circ", "90"),
        ("90", "90^{\\circ}"),
        ("\\sqrt{51}", "51^{1/2}"),
        ("[1, 2)", "\\left[ 1,2 \\right)"),
        ("(2,\\infty)", "(2, \\infty)"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\pi/2)"),
        ("\\text{east}", "east"),
        ("x^2 + 1", "1 + x^2"),
        (
            "\\begin{pmatrix} 1/5 \\\\ -18/5 \\end{pmatrix}",
            "\\begin{pmatrix}0.2\\\\-3.6\\end{pmatrix}",
        ),
    ],
)
def test_latex_equivalent(gold, pred):
    assert latex_equivalent(gold, pred)
    assert sympy_equivalent(gold, pred)  # math-verify alone agrees (no string shortcut)
    assert math_reward(["p"], [f"Thus $\\boxed{{{pred}}}$."], answer=[gold]) == [1.0]


@pytest.mark.parametrize(
    ("gold", "pred"),
    [
        ("\\frac{14}{3}", "\\frac{3}{14}"),
        ("5", "6"),
        ("(1, 2)", "(2, 1)"),
        ("[1, 2)", "[1, 2]"),
        ("\\sqrt{51}", "51"),
        ("3", "x"),
        ("90^\\circ", "91"),
        ("\\text{east}", "\\text{west}"),
        ("2", "\\frac{"),  # invalid LaTeX
        ("2", "}{)("),
    ],
)
def test_latex_not_equivalent(gold, pred):
    assert not latex_equivalent(gold, pred)
    assert not sympy_equivalent(gold, pred)


def test_math_reward_reads_the_last_box_only():
    completions = ["\\boxed{5} no wait \\boxed{6}", "\\boxed{6} no wait \\boxed{5}", "5", ""]
    assert math_reward(["p"] * 4, completions, answer=["5"] * 4) == [0.0, 1.0, 0.0, 0.0]


def test_math_reference_may_be_a_solution():
    assert reference_latex("so $x = \\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}"
    assert math_reward(["p"], ["\\boxed{0.5}"], answer=["so \\boxed{\\frac12}."]) == [1.0]
    for bad in ("", "   ", "\\boxed{1", "x" * (answers.MAX_ANSWER_CHARS + 1)):
        with pytest.raises(ValueError, match=r"math: answer .* has no readable LaTeX answer"):
            math_reward(["p"], ["\\boxed{1}"], answer=[bad])


def test_math_reward_works_off_the_main_thread():
    """math-verify's SIGALRM limit cannot be armed in a thread: it is skipped there."""
    got = []
    thread = threading.Thread(
        target=lambda: got.append(math_reward(["p"], ["\\boxed{\\frac12}"], answer=["0.5"]))
    )
    thread.start()
    thread.join(60)
    assert got == [[1.0]]


def test_format_reward():
    completions = [
        "so \\boxed{x+1}",
        "#### 7",
        "The answer is 7.",
        "A: 7",
        "it is 7",  # a trailing number follows no template
        "\\boxed{",
        "The answer is seven",
    ]
    assert format_reward(["p"] * 7, completions) == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert has_final_answer("\\fbox{3}")


# ----------------------------------------------------------------------------- data sets


def check_gsm8k_rows(rows):
    """Each solution scores 1 against itself and its number, 0 against its neighbours'."""
    solutions = [row["answer"] for row in rows]
    numbers = [gsm8k_number(row) for row in rows]
    n = len(rows)
    assert gsm8k([""] * n, solutions, answer=solutions) == [1.0] * n
    assert gsm8k([""] * n, solutions, answer=[str(v) for v in numbers]) == [1.0] * n
    for shift in (1, 2, 3):
        others = solutions[shift:] + solutions[:shift]
        got = gsm8k([""] * n, solutions, answer=others)
        want = [float(numbers[i] == numbers[(i + shift) % n]) for i in range(n)]
        assert got == want, [i for i in range(n) if got[i] != want[i]]


def check_math_rows(rows, min_agreement):
    """Each solution scores 1 against its own answer (>= min_agreement of rows), 0 against the
    next row's answer unless the two answers are the same."""
    solutions = [row["solution"] for row in rows]
    golds = [row["answer"] for row in rows]
    n = len(rows)
    own = math_reward([""] * n, solutions, answer=golds)
    misses = [(i, golds[i]) for i in range(n) if own[i] != 1.0]
    assert len(misses) <= (1 - min_agreement) * n, misses
    others = golds[1:] + golds[:1]
    cross = math_reward([""] * n, solutions, answer=others)
    wrong = [(i, golds[i], others[i]) for i in range(n) if cross[i] != 0.0]
    assert all(same_math_answer(other, gold) for _, gold, other in wrong), wrong


def test_gsm8k_excerpt():
    check_gsm8k_rows(read_jsonl(GSM8K_EXCERPT))


def test_math500_excerpt():
    rows = read_jsonl(MATH500_EXCERPT)
    check_math_rows(rows, min_agreement=1.0)
    # The reward's string shortcut settles most of these; math-verify alone must agree.
    for row in rows:
        assert sympy_equivalent(row["answer"], answers.last_boxed(row["solution"])), row["answer"]


@needs_gsm8k
def test_gsm8k_full_test_set():
    rows = read_jsonl(GSM8K_FULL)
    assert len(rows) == 1319
    check_gsm8k_rows(rows)


@needs_math500
def test_math500_full_test_set():
    """About 1000 math-verify checks in this process (a few seconds)."""
    rows = read_jsonl(MATH500_FULL)
    assert len(rows) == 500
    check_math_rows(rows, min_agreement=0.99)


# ----------------------------------------------------------------------------- hostile input

# s per call: normal rows take ~10 ms; below math.SYMPY_TIMEOUT_S (3 s), so the tower, which
# sympy cannot finish, is stopped by the runner killing its worker, not by math-verify's alarm.
TIME_LIMIT = 2.0
TOWER = "so the answer is \\boxed{9^{9^{9^9}}}"
HOSTILE = {
    "tower": TOWER,
    "1MB": "\\boxed{" + "9" * 1_000_000 + "}",
    "braces": "\\boxed{" + "{" * 10_000 + "1" + "}" * 10_000 + "}",
    "unbalanced": "\\boxed{" + "{" * 10_000,
    "nul": "\\boxed{5}\x00",
    "surrogate": "\\boxed{5}\udcff",
    "invalid_latex": "\\boxed{\\frac{1}{)(^^_}}",
}


def test_hostile_text_is_refused_without_sympy():
    """All but the tower and the invalid LaTeX are refused by string code, before any parser.

    Each reward reads at most ~1 MB a few times over (microseconds per kilobyte), so the
    whole set takes milliseconds; 1 s leaves room for a loaded machine.
    """
    worst = {
        "answer_is": "The answer is " * 7_000,
        "hashes": "####" * 25_000,
        "commas": "1," * 49_000,
        "boxes": "\\boxed{" * 12_000,
        "a_colon": " A:" * 33_000,
    }
    texts = [t for n, t in HOSTILE.items() if n not in ("tower", "invalid_latex")]
    texts += list(worst.values())
    start = time.monotonic()
    scores = [
        fn([""] * len(texts), texts, answer=["5"] * len(texts))
        for fn in (gsm8k, math_reward, format_reward)
    ]
    elapsed = time.monotonic() - start
    assert scores[1] == [0.0] * len(texts) and elapsed < 1.0, (scores, elapsed)


@pytest.fixture(scope="module")
def runner():
    with rewards.RewardRunner(
        {"math": 1.0}, time_limit=TIME_LIMIT, workers=2, executor="process"
    ) as run:
        yield run


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_completion_scores_zero_in_time(runner, name):
    start = time.monotonic()
    result = runner(["p"], [HOSTILE[name]], {"answer": ["5"]})
    elapsed = time.monotonic() - start
    assert result.total.tolist() == [0.0]
    assert elapsed < TIME_LIMIT + 1.0, f"{name}: {elapsed:.2f} s"
    assert result.errors == (name == "tower")  # only the tower runs late and is killed


def test_hostile_rows_do_not_spoil_a_batch(runner):
    rows = read_jsonl(MATH500_EXCERPT)[:8]
    completions = [row["solution"] for row in rows] + list(HOSTILE.values())
    golds = [row["answer"] for row in rows] + ["5"] * len(HOSTILE)
    order = list(range(0, len(completions), 2)) + list(range(1, len(completions), 2))
    result = runner(
        [""] * len(order), [completions[i] for i in order], {"answer": [golds[i] for i in order]}
    )
    want = [1.0 if i < len(rows) else 0.0 for i in order]
    assert result.total.tolist() == want
    assert result.errors <= 1  # only the tower may run past the limit (and be killed)


# ----------------------------------------------------------------------------- a full batch

BATCH = 1024
WORKERS = os.cpu_count() or 1  # one worker per core of the host


def batch_time_bound(late_calls: int, start_up: float) -> float:
    """Wall-clock bound for one batch in which ``late_calls`` calls run past the limit.

    Each late call (an exponent tower) holds a worker for ``TIME_LIMIT``, then the worker is
    killed and a fresh one starts, which takes about ``start_up`` (the pool's own start-up,
    measured in the same test: it is the import of sympy and math-verify, and depends on the
    machine's load). In the worst case the late calls hold the whole pool one after another:
    ``late * (TIME_LIMIT + start_up)``. Every other call is string code (the screen, the box
    reader, the normalised-string shortcut: ~0.1 ms of reward code a row in
    benchmarks/results/math_rewards.md, plus a pipe round trip: about 2,000 calls of well
    under a millisecond spread over the workers), and all of them together get one more
    ``TIME_LIMIT``.
    """
    return late_calls * (TIME_LIMIT + start_up) + TIME_LIMIT


def hostile_batch(normal, golds, seed):
    """``BATCH`` rows: the normal completions cycled, with each ``HOSTILE`` text at a random
    place; returns the completions, their golds and which rows are hostile."""
    import random

    completions = [normal[i % len(normal)] for i in range(BATCH - len(HOSTILE))]
    refs = [golds[i % len(golds)] for i in range(BATCH - len(HOSTILE))]
    is_hostile = [False] * len(completions)
    rng = random.Random(seed)
    for text in HOSTILE.values():
        at = rng.randrange(len(completions) + 1)
        completions.insert(at, text)
        refs.insert(at, "5")
        is_hostile.insert(at, True)
    return completions, refs, is_hostile


@pytest.mark.slow
@pytest.mark.parametrize(
    ("reward", "path", "field"),
    [("math", MATH500_EXCERPT, "solution"), ("gsm8k", GSM8K_EXCERPT, "answer")],
)
def test_batch_of_1024_across_the_cores(reward, path, field):
    """1024 completions, the ``HOSTILE`` ones among them, scored by ``reward`` and ``format``
    on one worker process per core: the normal rows score 1 on both, the hostile ones 0 on
    ``reward``, and the batch ends within :func:`batch_time_bound`."""
    rows = read_jsonl(path)
    golds = [row["answer"] for row in rows]
    completions, refs, is_hostile = hostile_batch([row[field] for row in rows], golds, seed=7)
    begin = time.monotonic()
    with rewards.RewardRunner(
        {reward: 1.0, "format": 0.1}, time_limit=TIME_LIMIT, workers=WORKERS, executor="process"
    ) as run:
        start_up = time.monotonic() - begin  # every worker has imported the rewards
        start = time.monotonic()
        result = run([""] * BATCH, completions, {"answer": refs})
        elapsed = time.monotonic() - start
    normal = [i for i in range(BATCH) if not is_hostile[i]]
    hostile = [i for i in range(BATCH) if is_hostile[i]]
    assert [result.per_fn[reward][i] for i in normal] == [1.0] * len(normal)
    assert [result.per_fn["format"][i] for i in normal] == [1.0] * len(normal)
    assert [result.per_fn[reward][i] for i in hostile] == [0.0] * len(HOSTILE)
    late = 1 if reward == "math" else 0  # only the tower, and only under sympy (math)
    assert result.errors <= late
    bound = batch_time_bound(late, start_up)
    assert elapsed < bound, f"{BATCH} rows in {elapsed:.2f} s; bound {bound:.2f} s"
