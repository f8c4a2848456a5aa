"""Does an RL run of the smoke recipe learn with LoRA? Reward of LoRA vs full fine-tuning.

LoRA adapts a trained model, so a randomly initialised tiny decoder is no base for it (its
frozen embeddings keep the logits near uniform). The base here is the smoke recipe's model after
``--sft-steps`` full-parameter SFT steps on the task's demonstrations (written once under
WORKDIR/base_hf and reused); then the smoke recipe's RL phase (``configs/smoke_cpu.py:short``,
no warm-up) runs from it with ``model.lora.rank = --rank`` (0: full fine-tuning) at ``--lr``.

    python benchmarks/lora_learnability.py --workdir /tmp/lora-learn --algo grpo --rank 8 --lr 3e-3

Prints the mean reward of the first and last 10 steps and appends the row to ``--md``.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from giftjax.runtime import quiet_accelerator_probes

quiet_accelerator_probes()

import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from configs import smoke_cpu  # noqa: E402
from giftjax import models  # noqa: E402
from giftjax.train.loop import Trainer  # noqa: E402
from giftjax.train.metrics import read_jsonl  # noqa: E402


def sft_base(workdir: str, steps: int) -> str:
    """The smoke model after ``steps`` full-parameter SFT steps, as a HF checkpoint folder."""
    path = os.path.join(workdir, f"base_hf_sft{steps}")
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    c = smoke_cpu.get_config("short")
    c.algo.name = "sft"
    c.train.steps, c.train.warmup_sft_steps = steps, 0
    c.eval.every, c.log.progress = 0, False
    trainer = Trainer(c, os.path.join(workdir, f"sft{steps}"))
    trainer.run()
    models.save_hf(nnx.merge(trainer.graphdef, trainer.state.params), path)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--algo", default="grpo", choices=("gift", "grpo"))
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (0: full fine-tuning)")
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--sft-steps", type=int, default=30)
    parser.add_argument("--md", default="", help="append the result row to this file")
    args = parser.parse_args()

    base = sft_base(args.workdir, args.sft_steps)
    c = smoke_cpu.get_config("short")
    c.model.hf_path = base
    c.model.lora.rank, c.model.lora.alpha = args.rank, args.alpha
    c.algo.name = args.algo
    c.optim.learning_rate = args.lr
    c.train.steps, c.train.warmup_sft_steps = args.steps, 0
    c.log.progress = False
    name = f"{args.algo}_r{args.rank}_a{args.alpha:g}_lr{args.lr:g}_s{args.steps}"
    run_dir = os.path.join(args.workdir, name)
    Trainer(c, run_dir).run()
    rows = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    rewards = [r["reward/mean"] for r in rows if "reward/mean" in r]
    first, last = float(np.mean(rewards[:10])), float(np.mean(rewards[-10:]))
    what = "full" if args.rank == 0 else f"LoRA r={args.rank} alpha={args.alpha:g}"
    row = f"| {args.algo} | {what} | {args.lr:g} | {args.steps} | {first:.3f} | {last:.3f} |"
    print(row)
    if args.md:
        with open(args.md, "a", encoding="utf-8") as f:
            f.write(row + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
