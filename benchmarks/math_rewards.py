"""Agreement and speed of the verified math rewards on the GSM8K and MATH-500 test sets.

Every score goes through ``RewardRunner(executor="process")``: one call per row, in worker
processes killed when a call runs past the time limit.

  - GSM8K (1319 rows): each reference solution scored against itself (``gsm8k``), and against
    the next row's solution (row i vs row i+1 mod n: 0 expected unless the numbers are equal).
  - MATH-500 (500 rows): each reference solution scored against its own ``answer`` (``math``),
    and against other rows' answers: the next row (i vs i+1 mod n, all 500) plus 500 random
    pairs (seed 0). The full 500 x 499 cross product (~250,000 sympy checks, ~1 h here) is not
    run.
  - A batch of 1024 MATH completions (reference solutions, cycled) with 8 hostile ones among
    them (exponent tower, 1 MB text, 10,000 nested braces, NUL, surrogate...).

    .venv/bin/python benchmarks/math_rewards.py --data PATH/TO/data --workers 2 \\
        --out benchmarks/results/math_rewards.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import re
import time
from fractions import Fraction

import math_verify

from giftjax import rewards
from giftjax.rewards import answers
from giftjax.rewards.math import reference_latex, sympy_equivalent
from giftjax.workdir import read_jsonl

HOSTILE = [
    "so the answer is \\boxed{9^{9^{9^9}}}",
    "\\boxed{" + "9" * 1_000_000 + "}",
    "\\boxed{" + "{" * 10_000 + "1" + "}" * 10_000 + "}",
    "\\boxed{" + "{" * 10_000,
    "\\boxed{5}\x00",
    "\\boxed{5}\udcff",
    "\\boxed{\\frac{1}{)(^^_}}",
    "\\boxed{" + "(" * 40 + "1" + ")" * 40 + "}",
]


@rewards.register("bench.math_sympy_only")
def math_sympy_only(prompts, completions, *, answer, **unused_columns):
    """The ``math`` reward without its normalised-string shortcut: math-verify's verdict."""
    del prompts, unused_columns
    scores = []
    for completion, reference in zip(completions, answer, strict=True):
        pred = answers.last_boxed(completion)
        ok = pred is not None and sympy_equivalent(reference_latex(reference), pred)
        scores.append(float(ok))
    return scores


def timed(run: rewards.RewardRunner, completions, golds, prompts=None):
    """Scores one batch; returns (per-row scores, errors, seconds)."""
    prompts = prompts or [""] * len(completions)
    start = time.perf_counter()
    result = run(prompts, completions, {"answer": golds})
    return result.total.tolist(), result.errors, time.perf_counter() - start


def same_math_answer(gold: str, other: str) -> bool:
    """One answer written alike (after normalisation; ``x=5`` as gold reads as ``5``)."""
    bare = [re.sub(r"^[a-z]=", "", answers.normalize_latex(a)) for a in (gold, other)]
    return bare[0] == bare[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.path.join("..", "shared", "data"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--time-limit", type=float, default=10.0)
    parser.add_argument("--out", default=None, help="markdown file to write (else stdout)")
    args = parser.parse_args()
    gsm = read_jsonl(os.path.join(args.data, "gsm8k", "test.jsonl"), missing_ok=False)
    mth = read_jsonl(os.path.join(args.data, "math500", "test.jsonl"), missing_ok=False)
    lines = []

    # ---------------------------------------------------------------- GSM8K
    start = time.perf_counter()
    with rewards.RewardRunner(
        {"gsm8k": 1.0}, time_limit=args.time_limit, workers=args.workers, executor="process"
    ) as run:
        start_s = time.perf_counter() - start
        solutions = [r["answer"] for r in gsm]
        questions = [r["question"] for r in gsm]
        own, own_err, own_s = timed(run, solutions, solutions, questions)
        nxt = solutions[1:] + solutions[:1]
        cross, cross_err, cross_s = timed(run, solutions, nxt, questions)
    n = len(gsm)
    numbers = [Fraction(s.rsplit("####", 1)[1].strip().replace(",", "")) for s in solutions]
    equal = [numbers[i] == numbers[(i + 1) % n] for i in range(n)]
    cross_bad = [i for i in range(n) if cross[i] != float(equal[i])]
    lines += [
        "## GSM8K test (1319 rows), reward `gsm8k`",
        "",
        f"- Worker pool start ({args.workers} processes): {start_s:.2f} s.",
        f"- Each reference solution against itself: {int(sum(own))}/{n} score 1 "
        f"({own_err} failed calls), {own_s:.2f} s ({1e3 * own_s / n:.2f} ms a row).",
        f"- Against the next row's solution: {int(sum(cross))}/{n} score 1, all where the two "
        f"final numbers are equal ({sum(equal)} such pairs); disagreements with that rule: "
        f"{len(cross_bad)} {cross_bad[:20]}; {cross_err} failed calls, {cross_s:.2f} s.",
        "",
    ]

    # ---------------------------------------------------------------- MATH-500
    start = time.perf_counter()
    with rewards.RewardRunner(
        {"math": 1.0}, time_limit=args.time_limit, workers=args.workers, executor="process"
    ) as run:
        start_s = time.perf_counter() - start
        solutions = [r["solution"] for r in mth]
        golds = [r["answer"] for r in mth]
        problems = [r["problem"] for r in mth]
        m = len(mth)
        own, own_err, own_s = timed(run, solutions, golds, problems)
        with rewards.RewardRunner(
            {"bench.math_sympy_only": 1.0},
            time_limit=args.time_limit,
            workers=args.workers,
            executor="process",
        ) as sympy_run:
            sym, sym_err, sym_s = timed(sympy_run, solutions, golds, problems)
        rng = random.Random(0)
        pairs = [(i, (i + 1) % m) for i in range(m)]
        pairs += [tuple(rng.sample(range(m), 2)) for _ in range(500)]
        cross, cross_err, cross_s = timed(
            run, [solutions[i] for i, _ in pairs], [golds[j] for _, j in pairs]
        )
        batch = [solutions[i % m] for i in range(1024 - len(HOSTILE))]
        batch_golds = [golds[i % m] for i in range(len(batch))]
        slots = sorted(random.Random(1).sample(range(1024), len(HOSTILE)))
        for slot, text in zip(slots, HOSTILE, strict=True):
            batch.insert(slot, text)
            batch_golds.insert(slot, "5")
        big, big_err, big_s = timed(run, batch, batch_golds)
    misses = [i for i in range(m) if own[i] != 1.0]
    hits = [(i, j) for (i, j), v in zip(pairs, cross, strict=True) if v != 0.0]
    same = [(i, j) for i, j in pairs if same_math_answer(golds[j], golds[i])]
    false_hits = [(i, j) for i, j in hits if not same_math_answer(golds[j], golds[i])]
    normal = [v for k, v in enumerate(big) if k not in slots]
    normal_want = [own[i % m] for i in range(len(normal))]
    lines += [
        "## MATH-500 (500 rows), reward `math`",
        "",
        f"- Worker pool start ({args.workers} processes): {start_s:.2f} s.",
        f"- Each reference solution against its own `answer`: {int(sum(own))}/{m} score 1 "
        f"({100 * sum(own) / m:.1f}%; {own_err} failed calls), {own_s:.2f} s "
        f"({1e3 * own_s / m:.1f} ms a row).",
        f"- The same with math-verify alone (reward `bench.math_sympy_only`: no normalised-"
        f"string shortcut, every row parsed and verified by sympy): {int(sum(sym))}/{m} score 1 "
        f"({sym_err} failed calls), {sym_s:.2f} s ({1e3 * sym_s / m:.1f} ms a row). Rows where "
        f"only the string shortcut agrees: {[i for i in range(m) if own[i] != sym[i]]}.",
        f"- Misses: {len(misses)}."
        + "".join(
            f"\n  - row {i}: answer `{golds[i]}`, last box `{answers.last_boxed(solutions[i])}`"
            for i in misses
        ),
        f"- Against another row's answer ({len(pairs)} pairs: the next row for all 500, plus 500 "
        f"random pairs, seed 0; the full cross product is not run): {len(hits)} score 1, "
        f"{len(same)} pairs hold the same answer written alike; scored 1 with different "
        f"answers: {len(false_hits)}"
        + "".join(f"\n  - rows {i} -> {j}: `{golds[i]}` vs `{golds[j]}`" for i, j in hits)
        + f"\n  ({cross_err} failed calls, {cross_s:.2f} s.)",
        f"- Batch of 1024 (1016 reference solutions cycled + {len(HOSTILE)} hostile at random "
        f"places): {big_s:.2f} s; hostile rows all 0: {all(big[k] == 0.0 for k in slots)}; "
        f"normal rows equal to their own-answer scores: {normal == normal_want}; failed calls "
        f"(time-outs and the like): {big_err}.",
        "",
    ]

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    header = [
        "# Verified math rewards: agreement and speed",
        "",
        f"Written by `benchmarks/math_rewards.py` on "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC (Python "
        f"{platform.python_version()}, math-verify {getattr(math_verify, '__version__', '0.9.0')},"
        f" {os.cpu_count()} cores, load average at the end {load}; the machine is shared with "
        f"other jobs). `RewardRunner(executor='process', workers={args.workers}, "
        f"time_limit={args.time_limit})`; times are wall clock per batch, pool start excluded.",
        "",
    ]
    notes = [
        "## Notes",
        "",
        "- `math` first compares normalised strings (`answers.normalize_latex`), then asks "
        "math-verify. A reference solution's last box is its `answer` written alike, so the "
        "string shortcut settles the own-answer check (0.1 ms a row); the math-verify-alone line "
        "is the real test of the sympy path, and the cross pairs (different answers, never "
        "string-equal) time it: about 2 x the per-row figure there is one sympy check on one "
        "core.",
        "- Hostile rows: all but two are refused by the linear-time string code before sympy "
        "(size, NUL, surrogates, unbalanced or over-nested box); invalid LaTeX fails to parse "
        "in milliseconds; the exponent tower reaches sympy. With "
        f"time_limit={args.time_limit} s the tower is stopped by math-verify's own SIGALRM "
        "(`SYMPY_TIMEOUT_S` = 3 s) and scores 0 without a failed call; with a time limit under "
        "3 s the runner kills the worker instead (tests/test_rewards_math.py, 2 s), a failed "
        "call that scores 0.",
        "- Parallelism: each row is one call; calls spread over the `workers` processes, so "
        "`workers=os.cpu_count()` uses every core.",
        "",
    ]
    text = "\n".join(header + lines + notes)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
