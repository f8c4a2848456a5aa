"""Does LoRA learn the smoke task? Reward of LoRA variants against full fine-tuning, one base.

The base is the smoke model after its 30-step SFT warm-up (``configs/smoke_cpu.py:base``,
exported as a Hugging Face checkpoint under WORKDIR/base/hf and reused); every row then runs
the smoke recipe's RL phase on it (``configs/smoke_cpu.py:lora``: 200 GIFT steps, pi_old as
reference, 4 updates per rollout) with its own adapter settings, learning rate and seed:

- ``full``: every weight trains (rank 0);
- ``full, embedding + final gain frozen``: every weight but those two (an ablation: the
  optimiser's updates to them are dropped), to show where plain LoRA's limit comes from;
- ``LoRA r=8``: plain LoRA on the seven projections (PEFT's default: norms frozen);
- ``LoRA r=8 + norms``: the recipe (``model.lora.train_norms``).

It also prints the cap that the frozen embedding E [V, D] and final RMSNorm gain w put on any
adapted policy: the final hidden state h has |h| = sqrt(D) after the norm, so a logit gap is at
most ``sqrt(D) |w * (E_u - E_v)|`` and ``p(v) <= 1 / (1 + sum_{u != v} exp(-sqrt(D) |w * (E_u -
E_v)|))`` for every token v, whatever the layers compute.

    python benchmarks/lora_learnability.py --workdir /tmp/lora-learn \
        --md benchmarks/results/lora_learnability.md

Each row prints the mean reward of the first and last 10% of steps; ``--rows`` picks rows by
name (default: all), ``--steps`` shortens them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from giftjax.runtime import quiet_accelerator_probes

quiet_accelerator_probes()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import smoke_cpu  # noqa: E402
from giftjax import models  # noqa: E402
from giftjax.data import build_tokenizer  # noqa: E402
from giftjax.export import export_checkpoint  # noqa: E402
from giftjax.train import updates as updates_lib  # noqa: E402
from giftjax.train.loop import Trainer  # noqa: E402
from giftjax.workdir import METRICS, read_jsonl  # noqa: E402

# name -> (description, config overrides, parameters kept frozen by the ablation)
ROWS: dict[str, tuple[str, dict, tuple[str, ...]]] = {
    "full": ("full fine-tuning", {"model.lora.rank": 0, "model.lora.train_norms": False}, ()),
    "full_frozen": (
        "full, embedding + final gain frozen",
        {"model.lora.rank": 0, "model.lora.train_norms": False},
        ("['embed']", "['final_norm']"),
    ),
    "lora": ("LoRA r=8 (norms frozen)", {"model.lora.train_norms": False}, ()),
    "lora_norms": ("LoRA r=8 + norms (the recipe)", {}, ()),
}


def build_base(workdir: str) -> str:
    """The smoke recipe's warm-up as its own run, exported; returns the HF folder."""
    run = os.path.join(workdir, "base")
    out = os.path.join(run, "hf")
    if not os.path.exists(os.path.join(out, "config.json")):
        c = smoke_cpu.get_config("base")
        c.log.progress = False
        trainer = Trainer(c, run)
        trainer.run()
        trainer.close()
        export_checkpoint(c, run, out)
    return out


def confidence_cap(hf_path: str) -> dict[str, float]:
    """Upper bound on each digit token's probability under any hidden state (module
    docstring), from the frozen embedding and final gain of the base."""
    model = models.load_hf(hf_path)
    e = np.asarray(model.lm_head_weight(), np.float64).T  # [V, D] (the tied embedding)
    w = np.asarray(model.final_norm.weight[...], np.float64)
    f = e * w
    d = e.shape[1]
    tok = build_tokenizer()
    caps = {}
    for digit in "0123456789":
        v = tok.convert_tokens_to_ids(digit)
        gaps = np.sqrt(d) * np.linalg.norm(f - f[v], axis=1)
        others = np.exp(-gaps)
        others[v] = 0.0
        caps[digit] = float(1.0 / (1.0 + others.sum()))
    return caps


def _freeze(prefixes: tuple[str, ...]) -> None:
    """Drops the optimiser's updates to parameters whose path starts with ``prefixes`` (the
    ablation row; patched into the update the Trainer builds)."""
    apply = updates_lib._apply

    def frozen(path) -> bool:
        return jax.tree_util.keystr(path).startswith(prefixes)

    def patched(tx, state, grads, *, lora=False):
        new, metrics = apply(tx, state, grads, lora=lora)
        params = jax.tree_util.tree_map_with_path(
            lambda p, old, upd: old if frozen(p) else upd, state.params, new.params
        )
        return new.replace(params=params), metrics

    updates_lib._apply = patched


def run_row(name: str, base: str, workdir: str, args) -> tuple[float, float, float]:
    _, overrides, frozen = ROWS[name]
    c = smoke_cpu.get_config("lora")
    c.model.hf_path = base
    c.seed = args.seed
    c.optim.learning_rate = args.lr
    c.train.steps = args.steps
    c.log.progress = False
    c.eval.every = 0
    for key, value in overrides.items():
        section, *rest = key.split(".")
        node = c[section]
        for part in rest[:-1]:
            node = node[part]
        node[rest[-1]] = value
    run_dir = os.path.join(workdir, f"{name}_lr{args.lr:g}_s{args.steps}_seed{args.seed}")
    apply = updates_lib._apply
    if frozen:
        _freeze(frozen)
    try:
        t0 = time.perf_counter()
        trainer = Trainer(c, run_dir)
        trainer.run()
        trainer.close()
        seconds = time.perf_counter() - t0
    finally:
        updates_lib._apply = apply
    rewards = [r["reward/mean"] for r in read_jsonl(os.path.join(run_dir, METRICS))]
    n = max(1, len(rewards) // 10)
    return float(np.mean(rewards[:n])), float(np.mean(rewards[-n:])), seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--rows", default=",".join(ROWS), help=f"among {list(ROWS)}")
    recipe = smoke_cpu.get_config("lora")
    parser.add_argument("--lr", type=float, default=recipe.optim.learning_rate)
    parser.add_argument("--steps", type=int, default=recipe.train.steps)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--md", default="", help="append the table to this file")
    args = parser.parse_args()
    names = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in names if r not in ROWS]
    if unknown:
        parser.error(f"--rows: unknown {unknown}; choose among {list(ROWS)}")

    base = build_base(args.workdir)
    caps = confidence_cap(base)
    lines = [
        f"Base: {base} (30 SFT steps). Cap on a digit's probability with the embedding and "
        f"final gain frozen: {min(caps.values()):.3f}-{max(caps.values()):.3f} "
        f"(median {np.median(list(caps.values())):.3f}).",
        "",
        f"RL phase: {args.steps} GIFT steps, learning rate {args.lr:g}, seed {args.seed}, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs.",
        "",
        "| update | reward, first 10% | reward, last 10% | rise | seconds |",
        "|---|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    for name in names:
        first, last, seconds = run_row(name, base, args.workdir, args)
        what = ROWS[name][0]
        row = f"| {what} | {first:.3f} | {last:.3f} | {last - first:+.3f} | {seconds:.0f} |"
        print(row, flush=True)
        lines.append(row)
    if args.md:
        with open(args.md, "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
