"""Hybrid SFT+RL with partly wrong demonstrations: GAC against fixed and scheduled mixing.

Every method trains the tiny model of ``configs/hybrid_gac_cpu.py`` from scratch (no warm-up)
on the synthetic ``reverse`` task for ``--steps`` steps: each step samples 16 prompts x 8
responses (the RL branch: GIFT, pi_old, 4 updates per rollout batch) and takes the same
prompts' demonstrations (the SFT branch, CHORD-weighted NLL), of which ``--wrong`` (default
25%) are deliberately wrong (``data.wrong_demonstrations``: every digit shifted by one,
chosen by a fixed golden-ratio sequence, the same items for every method and seed). The
mixed gradient is ``(1 - mu) g_rl + mu g_sft``. Methods (``METHODS``):

- ``gac_separate``: GAC, adaptive, ``separate`` smoothing (giftjax's default);
- ``gac_anchored``: GAC, adaptive, ``anchored`` smoothing (the published behaviour);
- ``prior``: mu = the CHORD prior schedule alone (no statistics);
- ``fixed_0.1``, ``fixed_0.5``: a constant mu (no statistics);
- ``pure_rl`` (mu = 0) and ``pure_sft`` (mu = 1): the same step with one branch's weight
  zero, so every method has the same rollouts, demonstrations and compute.

The prior (linear 0 -> 0.85, then cosine to 0.15) is stretched to the run's length as in the
recipe (warm-up over 1/12 of the optimiser updates, decay over 2/3). The baselines run with
``algo.gac.collect_stats=False``: a plain fixed-weight step, so GAC's wall-time overhead is
its median ``time/update`` over the ``fixed_0.5`` run's, seed by seed, in the same benchmark
(the runs share the machine with others, so ``benchmarks/gac_overhead.py`` is the controlled
measurement; this one checks it in real training).

Equal tuning as in convergence.py: the same learning-rate sweep for every method on seed 0,
chosen on the final training reward, the other seeds at the chosen rate.

Run (the full default: 7 methods x (3 sweep rates + 2 more seeds) = 35 runs):

    python benchmarks/hybrid.py --jobs 8
    python benchmarks/hybrid.py --quick              # 1 seed, 1 rate, 20 steps: minutes

Writes to ``--out`` (default benchmarks/results/, with --quick benchmarks/out/quick/):
hybrid.md, hybrid.json, hybrid_reward.png
(reward vs steps and wall time, held-out pass@1), hybrid_mu.png (mu, mu_raw and the prior
over steps for the GAC runs), and runs/.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _repro

CONFIG = "configs/hybrid_gac_cpu.py"
_FIXED = (("algo.gac.mode", "fixed"), ("algo.gac.collect_stats", False))
METHODS: dict[str, tuple[tuple[str, Any], ...]] = {
    "gac_separate": (("algo.gac.mode", "adaptive"), ("algo.gac.smoothing", "separate")),
    "gac_anchored": (("algo.gac.mode", "adaptive"), ("algo.gac.smoothing", "anchored")),
    "prior": (("algo.gac.mode", "prior"), ("algo.gac.collect_stats", False)),
    "fixed_0.1": (*_FIXED, ("algo.gac.init", 0.1)),
    "fixed_0.5": (*_FIXED, ("algo.gac.init", 0.5)),
    "pure_rl": (*_FIXED, ("algo.gac.init", 0.0)),
    "pure_sft": (*_FIXED, ("algo.gac.init", 1.0)),
}
GAC = ("gac_separate", "gac_anchored")
BASELINES = ("prior", "fixed_0.1", "fixed_0.5", "pure_rl", "pure_sft")
OVERHEAD_BASE = "fixed_0.5"
LRS = (1e-3, 3e-3, 1e-2)
STEPS, QUICK_STEPS = 200, 20
GAC_KEYS = ("gac/mu", "gac/mu_raw", "gac/prior")


def make_run(args, method: str, seed: int, lr: float, phase: str) -> _repro.Run:
    updates = 4 * args.steps  # 4 optimiser updates per step (the recipe's)
    prior = (
        ("algo.gac.prior_warmup", max(1, round(updates / 12))),
        ("algo.gac.prior_decay", max(1, round(2 * updates / 3))),
        ("data.wrong_demonstrations", args.wrong),
    )
    overrides = METHODS[method] + prior + _repro.common_overrides(args, seed, lr)
    return _repro.Run(method, seed, lr, phase, overrides)


def overhead(seeds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per GAC method: the ratio of median ``time/update`` to ``fixed_0.5``'s, per seed."""
    base = {r["seed"]: r["time_update"] for r in seeds if r["method"] == OVERHEAD_BASE}
    out = {}
    for m in GAC:
        ratios = [
            r["time_update"] / base[r["seed"]]
            for r in seeds
            if r["method"] == m and r["seed"] in base
        ]
        if ratios:
            out[m] = _repro.stats(ratios)
    return out


def report(args, runs, sweeps, argv) -> str:
    budget = args.steps
    seeds = [r for r in runs if r["phase"] == "seed" or r["lr"] == sweeps[r["method"]]["chosen"]]
    metrics = {
        "final_reward": lambda r: r["final_reward"],
        "steps_to_threshold": lambda r: _repro.censored_steps(r, budget),
        "heldout_pass1": lambda r: r["heldout_pass1"],
        "heldout_reward": lambda r: r["heldout_reward"],
        "gap_pass1": lambda r: r["gap_pass1"],
        "final_mu": lambda r: _tail_mean(r.get("gac/mu", [])),
        "time_update": lambda r: r["time_update"],
    }
    agg = _repro.aggregate(seeds, metrics)
    reached = {
        m: sum(r["steps_to_threshold"] is not None for r in seeds if r["method"] == m) for m in agg
    }
    lines = ["# Hybrid SFT+RL with wrong demonstrations: GAC vs fixed mixing", ""]
    lines += _repro.header_lines("hybrid.py", argv)
    lines += [
        "",
        f"Settings: `{CONFIG}` (tiny decoder, synthetic `reverse` task, no warm-up), "
        f"{args.steps} steps of 16 prompts x 8 samples (RL branch: GIFT, pi_old, 4 updates) "
        f"plus the same 16 prompts' demonstrations, {args.wrong:.0%} of them deliberately "
        f"wrong; seeds {list(range(args.seeds))}; learning-rate sweep {list(args.lrs)} on "
        "seed 0, chosen on the final training reward. Reward threshold "
        f"{args.threshold} on the {_repro.SMOOTH}-step moving average. Held-out: "
        f"{args.eval_size} prompts, greedy.",
        "",
        "## Results (mean ± sd over seeds at the chosen rate)",
        "",
    ]
    header = [
        "method",
        "lr",
        "final train reward",
        f"steps to {args.threshold}",
        "reached",
        "held-out pass@1",
        "held-out reward",
        "train - held-out",
        "final mu",
        "s / update",
    ]
    rows = [
        [
            m,
            f"{sweeps[m]['chosen']:g}",
            _repro.fmt(a["final_reward"]),
            _repro.fmt(a["steps_to_threshold"], 1),
            f"{reached[m]}/{a['final_reward']['n']}",
            _repro.fmt(a["heldout_pass1"]),
            _repro.fmt(a["heldout_reward"]),
            _repro.fmt(a["gap_pass1"]),
            _repro.fmt(a["final_mu"]),
            _repro.fmt(a["time_update"], 4),
        ]
        for m, a in agg.items()
    ]
    lines += [_repro.markdown_table(header, rows), ""]
    lines += [
        f"`final mu` is the mean SFT weight over the last 10% of steps. Steps to the "
        f"threshold count a seed that never reached it as {budget} (a lower bound).",
        "",
        "## Learning-rate sweep (seed 0, final training reward)",
        "",
        _repro.markdown_table(
            ["method", *(f"lr {lr:g}" for lr in args.lrs), "chosen"],
            [
                [m, *(f"{v:.3f}" for v in s["final_reward"]), f"{s['chosen']:g}"]
                for m, s in sweeps.items()
            ],
        ),
        "",
        "## GAC's wall-time overhead",
        "",
    ]
    ovh = overhead(seeds)
    if ovh:
        lines.append(
            _repro.markdown_table(
                ["method", f"time/update ratio to {OVERHEAD_BASE}", "seeds"],
                [[m, _repro.fmt(s, 4), str(s["n"])] for m, s in ovh.items()],
            )
        )
        lines += [
            "",
            "Median `time/update` of each run (the 4 optimiser updates of a step, both "
            f"branches), divided by the `{OVERHEAD_BASE}` run's of the same seed (a plain "
            "fixed-weight step without statistics). The runs share the machine with the "
            "others of the benchmark; `benchmarks/gac_overhead.py` measures the step alone.",
            "",
        ]
    else:
        lines += [f"Not measured (needs `{OVERHEAD_BASE}` and a GAC method).", ""]
    lines += ["## Plain reading", ""]
    lines += reading(agg, ovh)
    lines += ["", "![reward](hybrid_reward.png)", "", "![mu](hybrid_mu.png)", ""]
    return "\n".join(lines)


def _tail_mean(values: list[float]) -> float:
    import numpy as np

    x = np.asarray(values, np.float64)
    if not x.size:
        return math.nan
    k = max(5, round(_repro.FINAL_FRACTION * x.size))
    return float(np.nanmean(x[-k:]))


def reading(agg, ovh) -> list[str]:
    out = [
        "Rule: a difference counts only when |mean difference| exceeds the seed spread (the "
        "larger of the two standard deviations over seeds); otherwise it is reported as no "
        "difference.",
        "",
    ]
    claims = (
        ("higher final training reward", "final_reward", True),
        ("higher held-out pass@1", "heldout_pass1", True),
        ("higher held-out reward", "heldout_reward", True),
    )
    for g in GAC:
        if g not in agg:
            continue
        for text, key, higher in claims:
            for b in BASELINES:
                if b in agg:
                    verdict = _repro.compare(agg[g][key], agg[b][key], higher_is_better=higher)
                    out.append(f"- {g}: {text} than {b}: {verdict}.")
    for m, s in ovh.items():
        if s["n"] < 2:
            out.append(f"- {m} overhead under 1%: one seed ({s['mean'] - 1:+.2%}), no claim.")
            continue
        excess = s["mean"] - 1.0
        verdict = (
            "holds"
            if excess + s["sd"] < 0.01
            else "within the seed spread of 1%"
            if excess - s["sd"] < 0.01
            else "does not hold"
        )
        out.append(f"- {m} wall-time overhead under 1%: {verdict} ({excess:+.2%} ± {s['sd']:.2%}).")
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = _repro.parser(__doc__, methods=METHODS, steps=STEPS, lrs=LRS, threshold=0.2)
    p.add_argument("--wrong", type=float, default=0.25, help="share of wrong demonstrations")
    args = p.parse_args(argv)
    _repro.fill_defaults(args, steps=STEPS, quick_steps=QUICK_STEPS, lrs=LRS)
    args.warmup = 0
    if not 0.0 <= args.wrong <= 1.0:
        p.error(f"--wrong={args.wrong} must be a fraction in [0, 1].")

    out = args.out
    sweep = [make_run(args, m, 0, lr, "sweep") for m in args.methods for lr in args.lrs]

    def seeds_for(method: str, lr: float) -> list[_repro.Run]:
        return [make_run(args, method, s, lr, "seed") for s in range(1, args.seeds)]

    runs, sweeps = _repro.run_all(
        sweep,
        seeds_for,
        config=CONFIG,
        out=out,
        jobs=args.jobs,
        summarise=lambda w: _repro.summarise_run(w, threshold=args.threshold, extra_keys=GAC_KEYS),
        select=_repro.choose_lr,
    )
    text = report(args, runs, sweeps, argv)
    seeds = [r for r in runs if r["phase"] == "seed" or r["lr"] == sweeps[r["method"]]["chosen"]]
    _repro.plot_curves(
        seeds,
        out / "hybrid_reward.png",
        panels=(
            ("steps", "reward_smooth", f"reward (avg {_repro.SMOOTH} steps)"),
            ("wall", "reward_smooth", f"reward (avg {_repro.SMOOTH} steps)"),
            ("steps", "eval:eval/heldout/pass@1", "held-out pass@1"),
        ),
        title=f"hybrid SFT+RL, {args.wrong:.0%} wrong demonstrations, mean and min-max over "
        f"{args.seeds} seed(s)",
    )
    gac_runs = [r for r in seeds if r["method"] in (*GAC, "prior")]
    if gac_runs:
        # The prior baseline measures no statistics: its mu_raw is a constant placeholder.
        keys = {m: GAC_KEYS if m in GAC else ("gac/mu", "gac/prior") for m in METHODS}
        _repro.plot_mu(gac_runs, out / "hybrid_mu.png", keys=keys)
    (out / "hybrid.md").write_text(text)
    _repro.write_json(
        out / "hybrid.json",
        {
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "sweeps": sweeps,
            "runs": runs,
        },
    )
    print("\n" + text)
    print(f"wrote {out / 'hybrid.md'}, hybrid.json, hybrid_reward.png, hybrid_mu.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
