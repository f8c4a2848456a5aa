"""Seconds per RL step in steady state, split into rollout, reward, reference and update.

The configuration (fixed, so that numbers compare across runs and frameworks):
8 prompts x G=4 samples, 32-token prompts, 64 new tokens (no early stop), a Qwen2-shaped
decoder with 4 layers, width 256, 4 heads (2 KV heads, head dim 64), MLP 688, vocabulary
4096, tied embeddings, float32; GRPO with a k3 KL term to the initial model (coefficient
0.04), one optimiser update per rollout batch (so the pi_old pass is skipped: the ratio is 1).

  python benchmarks/rl_step.py                     # giftjax alone
  python benchmarks/rl_step.py --baseline tunix    # and tunix's GRPOLearner, interleaved
  python benchmarks/rl_step.py --steps 12 --json /tmp/rl_step.json
  python benchmarks/rl_step.py --old-logps-compare --md benchmarks/results/old_logps.md

``--old-logps-compare`` times ``rollout.old_logps="recompute"`` against ``"sampler"`` (two
optimiser updates per rollout batch, so that recompute runs its pi_old pass), the two trainers
alternating step by step in one process.

The first step (compiles included) is reported apart; the steady state is the median over
the later steps. With ``--baseline tunix`` the two frameworks alternate step by step in one
process, so that machine load affects both alike, and the ratio of medians is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from giftjax.runtime import quiet_accelerator_probes

quiet_accelerator_probes()

import jax  # noqa: E402
import ml_collections  # noqa: E402

from giftjax.train import config as config_lib  # noqa: E402
from giftjax.train import loop  # noqa: E402

PROMPTS, GROUP, PROMPT_LEN, NEW_TOKENS = 8, 4, 32, 64
SHAPE = dict(
    hidden_size=256, intermediate_size=688, num_layers=4, num_heads=4, num_kv_heads=2,
    head_dim=64,
)  # fmt: skip
VOCAB, KL_COEF = 4096, 0.04
SPLITS = ("rollout", "reward", "reference", "update")


def bench_config(steps: int) -> ml_collections.ConfigDict:
    """The benchmark's trainer config (see the module docstring)."""
    c = config_lib.base_config()
    c.model.preset = "tiny"  # qwen2 family, q/k/v bias, tied embeddings
    for key, value in SHAPE.items():
        c.model.shape[key] = value
    c.model.vocab_size = VOCAB
    c.model.dtype = c.model.param_dtype = "float32"
    c.mesh.fsdp = -1
    c.data.source, c.data.kind = "synthetic", "reverse"
    c.data.max_prompt_len = PROMPT_LEN
    c.rollout.prompts_per_step, c.rollout.group_size = PROMPTS, GROUP
    c.rollout.max_new_tokens, c.rollout.stop_at_eos = NEW_TOKENS, False
    c.algo.name, c.algo.reference = "grpo", "initial"
    c.algo.grpo.kl_coef = KL_COEF
    c.train.steps, c.train.updates_per_rollout, c.train.micro_batches = steps, 1, 1
    c.checkpoint.every = 10**6
    c.log.tensorboard = c.log.progress = False
    c.log.samples = 0
    c.eval.every = 0
    return c


def compare_old_logps(steps: int) -> dict[str, dict[str, float]]:
    """Steady-state figures of recompute vs sampler pi_old, 2 updates per rollout batch."""
    trainers, rows = {}, {}
    with tempfile.TemporaryDirectory() as workdir:
        for mode in ("recompute", "sampler"):
            c = bench_config(steps)
            c.train.updates_per_rollout = 2
            c.rollout.old_logps = mode
            trainers[mode] = loop.Trainer(c, os.path.join(workdir, mode))
            rows[mode] = []
        for step in range(steps):
            for mode, trainer in trainers.items():
                rows[mode].append(trainer.step(step))
        for trainer in trainers.values():
            trainer.close()
    return {mode: summarise(r) for mode, r in rows.items()}


def old_logps_table(figures: dict[str, dict[str, float]], steps: int, load: float) -> str:
    """Markdown: the two modes' steady-state seconds and the time saved per step."""
    lines = [
        "| rollout.old_logps | first step (compile) | s / step | rollout | reference + pi_old "
        "| update |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for mode, f in figures.items():
        lines.append(
            f"| {mode} | {f['first_step_s']:.2f} | {f['s_per_step']:.3f} | {f['rollout_s']:.3f} "
            f"| {f['reference_s']:.3f} | {f['update_s']:.3f} |"
        )
    rec, smp = figures["recompute"], figures["sampler"]
    saved = rec["s_per_step"] - smp["s_per_step"]
    lines.append(
        f"\nSaved per step by `sampler`: {saved:.3f} s ({100 * saved / rec['s_per_step']:.0f}% "
        f"of recompute's {rec['s_per_step']:.3f} s); the reference column alone: "
        f"{rec['reference_s'] - smp['reference_s']:.3f} s. {steps} steps each, load average "
        f"{load:.1f}, device {jax.devices()[0].device_kind}."
    )
    return "\n".join(lines) + "\n"


def summarise(rows: list[dict[str, float]]) -> dict[str, float]:
    """First step apart; medians of the later steps for the total and each split."""
    steady = rows[1:]
    out = {"first_step_s": rows[0]["time/step"]}
    out["s_per_step"] = statistics.median(r["time/step"] for r in steady)
    for split in SPLITS:
        key = f"time/{split}"
        if all(key in r for r in steady):
            out[f"{split}_s"] = statistics.median(r[key] for r in steady)
    return out


def make_tunix_baseline(trainer: loop.Trainer):
    """tunix's GRPO step on the same configuration, from a copy of the trainer's initial
    weights (needs ``pip install -e ".[bench]"``, google-tunix 0.1.7).

    tunix samples from 32 random prompt ids per prompt (the same shapes as giftjax's padded
    prompts) with no early stop; its reward is a cheap function of the token ids, as
    giftjax's is of the text (rewards take about a millisecond in both).
    """
    import numpy as np
    from flax import nnx

    from benchmarks import tunix_baseline

    params = jax.tree.map(jax.numpy.copy, trainer.state.params)  # before any donated update
    model = nnx.merge(trainer.graphdef, params)
    prompt_ids = np.random.default_rng(0).integers(4, VOCAB, (PROMPTS, PROMPT_LEN))

    def reward_fn(completions: np.ndarray) -> np.ndarray:
        return (completions % 2 == 0).mean(axis=1).astype(np.float32)  # [P*G]

    return tunix_baseline.make_tunix_step(
        model, prompt_ids, reward_fn, num_generations=GROUP, max_new_tokens=NEW_TOKENS,
        beta=KL_COEF,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=12, help="steps per framework (>= 3)")
    parser.add_argument("--baseline", choices=("none", "tunix"), default="none")
    parser.add_argument("--json", default="", help="write the figures to this JSON file")
    parser.add_argument(
        "--old-logps-compare",
        action="store_true",
        help="time rollout.old_logps recompute vs sampler (2 updates per rollout batch)",
    )
    parser.add_argument("--md", default="", help="with --old-logps-compare: write a table here")
    args = parser.parse_args(argv)
    if args.steps < 3:
        parser.error("--steps must be >= 3 (one compile step, then a steady state)")
    if args.old_logps_compare:
        figures = compare_old_logps(args.steps)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        table = old_logps_table(figures, args.steps, load)
        print(table)
        if args.md:
            head = (
                "# RL step time: pi_old recomputed by the trainer vs taken from the sampler\n\n"
                "Written by `python benchmarks/rl_step.py --old-logps-compare "
                f"--steps {args.steps} --md {args.md}`: the configuration of the module "
                "docstring with 2 optimiser updates per rollout batch; the two trainers "
                "alternate step by step; medians of the steps after the first.\n\n"
            )
            with open(args.md, "w", encoding="utf-8") as f:
                f.write(head + table)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(figures, f, indent=2)
        return 0

    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as workdir:
        trainer = loop.Trainer(bench_config(args.steps), workdir)
        tunix_step = None
        if args.baseline == "tunix":
            tunix_step = make_tunix_baseline(trainer)
        for step in range(args.steps):
            ours.append(trainer.step(step))
            if tunix_step is not None:
                start = time.perf_counter()
                split = tunix_step()
                theirs.append(
                    {"time/step": time.perf_counter() - start}
                    | {f"time/{k}": v for k, v in split.items() if k in SPLITS}
                )
        trainer.close()

    figures = {"device": jax.devices()[0].device_kind, "steps": args.steps}
    figures.update({f"giftjax_{k}": v for k, v in summarise(ours).items()})
    if theirs:
        figures.update({f"tunix_{k}": v for k, v in summarise(theirs).items()})
        figures["tunix_over_giftjax"] = figures["tunix_s_per_step"] / figures["giftjax_s_per_step"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    figures["load_average_1min"] = load

    print(f"device: {figures['device']}, load average {load:.1f}, {args.steps} steps each")
    print("| framework | first step (compile) | s / step | rollout | reward | reference | update |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in ("giftjax", "tunix") if theirs else ("giftjax",):
        cells = [
            f"{figures[f'{name}_{s}_s']:.3f}" if f"{name}_{s}_s" in figures else "-" for s in SPLITS
        ]
        print(
            f"| {name} | {figures[f'{name}_first_step_s']:.2f} | "
            f"{figures[f'{name}_s_per_step']:.3f} | " + " | ".join(cells) + " |"
        )
    if theirs:
        print(f"tunix / giftjax seconds per step: {figures['tunix_over_giftjax']:.2f}x")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(figures, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
