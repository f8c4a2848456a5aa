"""GIFT against the GRPO family on the synthetic task, with the same rollout budget.

Every method trains the tiny model of ``configs/smoke_cpu.py`` (reverse a digit string;
partial-credit reward; the held-out split has longer strings than training) from the same
30-step SFT warm-up, then for ``--steps`` RL steps of P = 16 prompts x G = 8 samples: the same
rollouts per step for every method. Methods (``METHODS``):

- ``gift``: GIFT, safe default (std floor), reference pi_old, 4 updates per rollout batch;
- ``gift_author``: the same with the ``author`` preset (the released code's settings);
- ``gift_initial``: GIFT with the frozen post-warm-up model as reference, 4 updates;
- ``gift_u1``: GIFT with pi_old and 1 update per rollout batch, which GIFT's derivation
  predicts is a rescaled GRPO step; ``grpo_u1``: GRPO with 1 update per rollout batch, its
  counterpart;
- ``grpo`` (KL 0.04 to the post-warm-up model), ``dapo``, ``dr_grpo``, ``gspo``: their presets,
  4 updates per rollout batch (PPO-style clipping over the 4 updates).

Equal tuning: each method runs the same learning-rate sweep (``--lrs``) on seed 0; the rate
with the highest final *training* reward (mean ``reward/mean`` over the last 10% of steps) is
chosen, never a held-out number; the other seeds run at the chosen rate, and the seed-0 run at
that rate is one of the seeds. The sweep is recorded in the outputs.

Measured per run: reward against steps and against wall time, steps (and seconds) until the
10-step moving average of the reward reaches ``--threshold``, the final held-out pass@1
(greedy, 64 prompts) and the train-minus-held-out pass@1 gap. A separate measurement job
(``--directions-job``) takes the gradient of GIFT (1 update, pi_old) and of the GRPO losses
on the same rollout batches along a GIFT trajectory and reports their cosine and norm ratio.

Run (the full default: 9 methods x (3 sweep rates + 2 more seeds) = 45 runs + 1 measurement):

    python benchmarks/convergence.py --jobs 8
    python benchmarks/convergence.py --quick          # 1 seed, 1 rate, 20 steps: minutes

Writes to ``--out`` (default benchmarks/results/, with --quick benchmarks/out/quick/, which
git ignores): convergence.md (tables, the sweep, the
plain reading), convergence.json (every run's numbers and curves), convergence_reward.png
(reward vs steps and vs wall time, held-out pass@1), and runs/ (each run's work directory).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _repro

CONFIG = "configs/smoke_cpu.py"
U4 = (("train.updates_per_rollout", 4),)
U1 = (("train.updates_per_rollout", 1),)
METHODS: dict[str, tuple[tuple[str, Any], ...]] = {
    "gift": (("algo.name", "gift"), ("algo.reference", "old"), *U4),
    "gift_author": (
        ("algo.name", "gift"),
        ("algo.reference", "old"),
        ("algo.gift.preset", "author"),
        *U4,
    ),
    "gift_initial": (("algo.name", "gift"), ("algo.reference", "initial"), *U4),
    "gift_u1": (("algo.name", "gift"), ("algo.reference", "old"), *U1),
    "grpo": (("algo.name", "grpo"), ("algo.reference", "initial"), *U4),
    "dapo": (("algo.name", "dapo"), *U4),
    "dr_grpo": (("algo.name", "dr_grpo"), *U4),
    "gspo": (("algo.name", "gspo"), *U4),
    "grpo_u1": (("algo.name", "grpo"), ("algo.reference", "initial"), *U1),
}
BASELINES = ("grpo", "dapo", "dr_grpo", "gspo")
LRS = (1e-3, 3e-3, 1e-2)
STEPS, QUICK_STEPS = 200, 20


def make_run(args, method: str, seed: int, lr: float, phase: str) -> _repro.Run:
    return _repro.Run(
        method, seed, lr, phase, METHODS[method] + _repro.common_overrides(args, seed, lr)
    )


# --------------------------------------------------------------------------------------
# GIFT (1 update, pi_old) against GRPO on the same batch: the measurement job.
# --------------------------------------------------------------------------------------


def measure_directions(args) -> dict[str, Any]:
    """Gradients of GIFT (1 update, pi_old) and of GRPO-family losses on the same batches.

    After the SFT warm-up, every ``--direction-every`` GIFT steps (1 update, pi_old) a fresh
    rollout batch is drawn and the full-batch gradient of each loss is taken at the current
    parameters (1 micro-batch; every loss sees ratio 1 and k = 0, as on a first update):
    ``gift`` (safe default), ``gift_author``, ``grpo`` (its preset: per-sequence token mean),
    ``dapo`` (GRPO's advantage with a token mean over the batch; no KL) and ``dr_grpo``
    (mean-centred advantage, token sum over a fixed length). Reported: the
    cosine of each against ``gift`` and the norm ratio ``|g_gift| / |g_other|``. A rescaled
    GRPO step shows cosine 1 and a norm ratio constant across batches: float32 rounding
    perturbs each gradient by a relative ~1e-7 x depth (well under 1e-3 here), and the cosine
    only to second order in it, so "the same direction" is read as 1 - cos < 1e-4.
    """
    import os
    import tempfile

    import jax
    import numpy as np

    from configs import smoke_cpu
    from giftjax import losses
    from giftjax.train import loop, objectives
    from giftjax.train import rollout as rollout_lib
    from giftjax.train.accumulate import accumulate_grads

    c = smoke_cpu.get_config()
    for key, value in (*METHODS["gift_u1"], *_repro.common_overrides(args, args.seed, LRS[1])):
        _repro.set_key(c, key, value)
    c.eval.every = 0
    variants: dict[str, tuple[str, dict[str, Any]]] = {
        "gift": ("gift", {}),
        "gift_author": ("gift", {"algo.gift.preset": "author"}),
        "grpo": ("grpo", {}),
        # GRPO's advantage with a token mean: DAPO's loss at ratio 1 (no KL). (Not grpo with
        # agg="token-mean": that equals grpo_loss's default, so the grpo preset overrides it.)
        "dapo": ("dapo", {}),
        "dr_grpo": ("dr_grpo", {}),
    }

    def variant_config(name: str, extra: dict[str, Any]):
        v = c.copy_and_resolve_references()
        v.algo.name = name
        for key, value in extra.items():
            _repro.set_key(v, key, value)
        return v

    with tempfile.TemporaryDirectory() as tmp:
        tr = loop.Trainer(c, os.path.join(tmp, "run"))
        for s in range(tr.warmup):
            tr.step(s)
        grad_fns = {}
        for label, (name, extra) in variants.items():
            mb_loss = objectives.rl_microbatch_loss(
                tr.graphdef,
                variant_config(name, extra),
                name=name,
                mesh=tr.mesh,
                prompt_len=c.data.max_prompt_len,
            )
            grad_fns[label] = jax.jit(
                lambda p, mb, f=mb_loss: accumulate_grads(f, p, mb, collect_stats=False).grads
            )
        g = c.rollout.group_size
        adv = {
            m: jax.jit(lambda r, m=m: losses.group_advantages(r, group_size=g, method=m))
            for m in ("grpo", "dr_grpo")
        }
        points = []
        step = tr.warmup
        for point in range(args.direction_points):
            rows = rollout_lib.records(next(tr.data))
            key = jax.random.fold_in(jax.random.fold_in(tr.base_key, 10_000 + point), 7)
            ro = rollout_lib.generate_rollout(
                tr.graphdef,
                tr.state.params,
                rows,
                tokenizer=tr.tokenizer,
                runner=tr.runner,
                config=c,
                mesh=tr.mesh,
                key=key,
                step=step + 1,
            )
            base = ro.batch()
            flat = {}
            for label, fn in grad_fns.items():
                method = "dr_grpo" if label == "dr_grpo" else "grpo"  # the trainer's choice
                mb = {**base, "advantages": adv[method](ro.rewards)}
                mb = {k: v[None] for k, v in mb.items()}  # one micro-batch
                leaves = jax.tree.leaves(fn(tr.state.params, mb))
                flat[label] = np.concatenate([np.asarray(x, np.float64).ravel() for x in leaves])
            ref = flat["gift"]
            row: dict[str, Any] = {
                "step": step - tr.warmup,
                "reward": float(ro.host_rewards.mean()),
            }
            for label, vec in flat.items():
                if label == "gift":
                    continue
                denom = np.linalg.norm(ref) * np.linalg.norm(vec)
                row[f"cos/{label}"] = float(ref @ vec / denom) if denom > 0 else float("nan")
                row[f"norm_ratio/{label}"] = float(
                    np.linalg.norm(ref) / max(np.linalg.norm(vec), 1e-300)
                )
            points.append(row)
            print(json.dumps(row), flush=True)
            if point + 1 < args.direction_points:
                for _ in range(args.direction_every):
                    tr.step(step)
                    step += 1
        tr.close()
    return {"seed": args.seed, "lr": LRS[1], "every": args.direction_every, "points": points}


# --------------------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------------------


METRICS = {
    "final_reward": lambda r: r["final_reward"],
    "steps_to_threshold": None,  # filled in main (needs the budget)
    "wall_to_threshold": lambda r: (
        r["wall_to_threshold"] if r["wall_to_threshold"] is not None else math.nan
    ),
    "heldout_pass1": lambda r: r["heldout_pass1"],
    "train_pass1": lambda r: r["train_pass1"],
    "gap_pass1": lambda r: r["gap_pass1"],
    "time_step": lambda r: r["time_step"],
}


def trajectory_check(runs: list[dict[str, Any]], seeds: list[dict[str, Any]]) -> list[str]:
    """gift_u1 against grpo_u1 at the same rate and seed (the sweep, seed 0), beside the
    seed-to-seed difference of grpo_u1 at its chosen rate."""
    import numpy as np

    lines = []
    sweep = {(r["method"], r["lr"]): r for r in runs if r["phase"] == "sweep"}
    diffs = []
    for (method, lr), r in sorted(sweep.items()):
        if method != "gift_u1" or ("grpo_u1", lr) not in sweep:
            continue
        a, b = np.asarray(r["reward"]), np.asarray(sweep[("grpo_u1", lr)]["reward"])
        n = min(len(a), len(b))
        d = float(np.mean(np.abs(a[:n] - b[:n])))
        diffs.append(d)
        lines.append(f"| {lr:g} | {d:.4f} | {float(np.max(np.abs(a[:n] - b[:n]))):.4f} |")
    base = [r for r in seeds if r["method"] == "grpo_u1"]
    seed_diff = []
    for i in range(len(base)):
        for j in range(i + 1, len(base)):
            a, b = np.asarray(base[i]["reward"]), np.asarray(base[j]["reward"])
            n = min(len(a), len(b))
            seed_diff.append(float(np.mean(np.abs(a[:n] - b[:n]))))
    if not lines:
        return []
    out = [
        "GIFT (1 update, pi_old) against GRPO (1 update), same seed (0) and rate: mean and max "
        "over steps of |reward difference| per step.",
        "",
        "| lr | mean abs diff | max abs diff |",
        "|:---|---:|---:|",
        *lines,
        "",
    ]
    if seed_diff:
        out.append(
            f"Seed-to-seed baseline: GRPO (1 update) at its chosen rate, mean abs reward "
            f"difference between two seeds: {np.mean(seed_diff):.4f} "
            f"(over {len(seed_diff)} pair(s))."
        )
    return out


def report(args, runs, sweeps, directions, argv) -> str:
    budget = args.steps
    metrics = dict(METRICS)
    metrics["steps_to_threshold"] = lambda r: _repro.censored_steps(r, budget)
    seeds = [
        r
        for r in runs
        if r["phase"] == "seed"
        or (r["phase"] == "sweep" and r["lr"] == sweeps[r["method"]]["chosen"])
    ]
    agg = _repro.aggregate(seeds, metrics)
    reached = {
        m: sum(r["steps_to_threshold"] is not None for r in seeds if r["method"] == m) for m in agg
    }
    lines = ["# GIFT vs the GRPO family: convergence and generalisation", ""]
    lines += _repro.header_lines("convergence.py", argv)
    lines += [
        "",
        f"Settings: `{CONFIG}` (tiny decoder, synthetic `reverse` task: train lengths 3-5, "
        f"held-out 6-7), {args.warmup} SFT warm-up steps, {args.steps} RL steps of 16 prompts "
        f"x 8 samples (the same rollout budget for every method), seeds "
        f"{list(range(args.seeds))}, learning-rate sweep {list(args.lrs)} on seed 0, chosen "
        f"on the final training reward. Reward threshold {args.threshold} on the "
        f"{_repro.SMOOTH}-step moving average. Held-out: {args.eval_size} prompts, greedy.",
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
        f"s to {args.threshold}",
        "held-out pass@1",
        "train pass@1",
        "train - held-out",
        "s / step",
    ]
    rows = []
    for m, a in agg.items():
        rows.append(
            [
                m,
                f"{sweeps[m]['chosen']:g}",
                _repro.fmt(a["final_reward"]),
                _repro.fmt(a["steps_to_threshold"], 1),
                f"{reached[m]}/{a['final_reward']['n']}",
                _repro.fmt(a["wall_to_threshold"], 1),
                _repro.fmt(a["heldout_pass1"]),
                _repro.fmt(a["train_pass1"]),
                _repro.fmt(a["gap_pass1"]),
                _repro.fmt(a["time_step"], 3),
            ]
        )
    lines += [_repro.markdown_table(header, rows), ""]
    lines += [
        f"Steps to the threshold count a seed that never reached it as {budget} (the budget), "
        "so that mean is a lower bound when `reached` is below n; seconds to the threshold "
        "average the seeds that reached it.",
        "",
        "## Learning-rate sweep (seed 0, final training reward)",
        "",
    ]
    lines.append(
        _repro.markdown_table(
            ["method", *(f"lr {lr:g}" for lr in args.lrs), "chosen"],
            [
                [m, *(f"{v:.3f}" for v in s["final_reward"]), f"{s['chosen']:g}"]
                for m, s in sweeps.items()
            ],
        )
    )
    lines += ["", "## GIFT with 1 update and pi_old: a rescaled GRPO step?", ""]
    if directions and directions.get("points"):
        pts = directions["points"]
        labels = [k[4:] for k in pts[0] if k.startswith("cos/")]
        lines.append(
            _repro.markdown_table(
                [
                    "batch (RL step)",
                    *(f"cos {x}" for x in labels),
                    *(f"norm ratio {x}" for x in labels),
                ],
                [
                    [
                        str(p["step"]),
                        *(f"{p['cos/' + x]:.6f}" for x in labels),
                        *(f"{p['norm_ratio/' + x]:.4g}" for x in labels),
                    ]
                    for p in pts
                ],
            )
        )
        lines += [
            "",
            "Gradients on the same rollout batch at the same parameters (after the warm-up, then "
            f"every {directions['every']} GIFT steps, seed {directions['seed']}): cosine of each "
            "loss's gradient with GIFT's (safe default, 1 update, pi_old) and |g_gift| / |g|.",
            "",
        ]
    else:
        lines += ["Gradient directions not measured (--no-directions).", ""]
    lines += trajectory_check(runs, seeds)
    lines += ["", "## Plain reading", ""]
    lines += reading(agg, directions, args)
    lines += ["", "![reward](convergence_reward.png)", ""]
    return "\n".join(lines)


def reading(agg, directions, args) -> list[str]:
    """For each claim, whether the difference exceeds the seed spread."""
    out = [
        "Rule: a difference counts only when |mean difference| exceeds the seed spread (the "
        "larger of the two standard deviations over seeds); otherwise it is reported as no "
        "difference.",
        "",
    ]
    if "gift" not in agg:
        return [*out, "GIFT (`gift`) was not run: no claim read."]
    claims = (
        ("converges faster (steps to the threshold, lower is better)", "steps_to_threshold", False),
        ("higher final training reward", "final_reward", True),
        ("generalises better (held-out pass@1)", "heldout_pass1", True),
        ("overfits less (train - held-out pass@1, lower is better)", "gap_pass1", False),
    )
    for text, key, higher in claims:
        for b in BASELINES:
            if b in agg:
                verdict = _repro.compare(agg["gift"][key], agg[b][key], higher_is_better=higher)
                out.append(f"- GIFT {text} than {b}: {verdict}.")
    if directions and directions.get("points"):
        import numpy as np

        for label in ("grpo", "dapo", "dr_grpo"):
            cos = [p[f"cos/{label}"] for p in directions["points"]]
            ratio = [p[f"norm_ratio/{label}"] for p in directions["points"]]
            out.append(
                f"- GIFT (1 update, pi_old) vs {label} on the same batch: cosine min "
                f"{min(cos):.6f}, max {max(cos):.6f}; norm ratio {np.mean(ratio):.4g} "
                f"(relative spread {np.std(ratio) / np.mean(ratio):.2g} across batches): "
                + (
                    "the same direction, a rescaled step."
                    if min(cos) > 1 - 1e-4
                    else "not the same direction."
                )
            )
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = _repro.parser(
        __doc__, methods=METHODS, steps=STEPS, lrs=LRS, threshold=0.5, steps_help="RL steps"
    )
    p.add_argument("--no-directions", action="store_true", help="skip the gradient measurement")
    p.add_argument("--directions-job", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    _repro.fill_defaults(args, steps=STEPS, quick_steps=QUICK_STEPS, lrs=LRS)
    args.warmup = 10 if args.quick else 30
    args.direction_points = 2 if args.quick else 5
    args.direction_every = max(1, min(args.steps, 200) // 5)
    if args.directions_job is not None:
        _repro.write_json(args.directions_job, measure_directions(args))
        return 0

    out = args.out
    sweep = [make_run(args, m, 0, lr, "sweep") for m in args.methods for lr in args.lrs]

    def seeds_for(method: str, lr: float) -> list[_repro.Run]:
        return [make_run(args, method, s, lr, "seed") for s in range(1, args.seeds)]

    extra = []
    directions_path = out / "runs" / "directions.json"
    if not args.no_directions:
        job = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--directions-job",
            str(directions_path),
        ]
        job += [f"--steps={args.steps}"] + (["--quick"] if args.quick else [])
        extra.append(
            ("directions (gradient of GIFT u1 vs GRPO)", job, out / "runs" / "directions.log")
        )
    runs, sweeps = _repro.run_all(
        sweep,
        seeds_for,
        config=CONFIG,
        out=out,
        jobs=args.jobs,
        extra=extra,
        summarise=lambda w: _repro.summarise_run(w, threshold=args.threshold),
        select=_repro.choose_lr,
    )
    directions = json.loads(directions_path.read_text()) if extra else None
    text = report(args, runs, sweeps, directions, argv)
    seeds = [r for r in runs if r["phase"] == "seed" or r["lr"] == sweeps[r["method"]]["chosen"]]
    _repro.plot_curves(
        seeds,
        out / "convergence_reward.png",
        panels=(
            ("steps", "reward_smooth", f"reward (avg {_repro.SMOOTH} steps)"),
            ("wall", "reward_smooth", f"reward (avg {_repro.SMOOTH} steps)"),
            ("steps", "eval:eval/heldout/pass@1", "held-out pass@1"),
        ),
        title=f"GIFT vs GRPO family, mean and min-max over {args.seeds} seed(s)",
    )
    (out / "convergence.md").write_text(text)
    _repro.write_json(
        out / "convergence.json",
        {
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "sweeps": sweeps,
            "runs": runs,
            "directions": directions,
        },
    )
    print("\n" + text)
    print(f"wrote {out / 'convergence.md'}, convergence.json, convergence_reward.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
