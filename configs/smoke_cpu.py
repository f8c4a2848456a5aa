"""Smoke recipe: GIFT on the synthetic task with the tiny model, on one CPU, in minutes.

The README's main command:

  python -m giftjax.main --config=configs/smoke_cpu.py --workdir=/tmp/giftjax-smoke

A 2-layer, width-64 decoder learns the synthetic task (reverse a digit string; the held-out
split has longer strings): 30 SFT warm-up steps on the task's demonstrations teach the answer
format (the partial-credit reward then starts near 0.2), then 200 steps of
GIFT with the rollout policy pi_old as reference and 4 updates per rollout batch (as the GIFT
authors' code takes; with one update and pi_old every update is GIFT's degenerate case)
raises the reward. Any key can be overridden, e.g. ``--config.algo.name=grpo`` trains a
baseline instead.

Variants:

- ``short``: the test suite's shorter run (40 RL steps).
- ``base``: the warm-up alone, as a run of its own (30 full-parameter SFT steps): the base
  model that the LoRA variant adapts.
- ``lora``: the RL phase with LoRA (rank 8 on every projection, RMSNorm gains tuned) on that
  base, read from ``/tmp/giftjax-base/hf`` (set ``model.hf_path`` for another folder)::

    python -m giftjax.main --config=configs/smoke_cpu.py:base --workdir=/tmp/giftjax-base
    python -m giftjax.export --config=configs/smoke_cpu.py:base --workdir=/tmp/giftjax-base
    python -m giftjax.main --config=configs/smoke_cpu.py:lora --workdir=/tmp/giftjax-lora

  The gains are tuned because this base was trained for 30 steps only: its embedding and
  final-norm gain (both frozen under LoRA) are small, which caps the logits' range and so the
  confidence any adapted policy can reach; plain LoRA stays flat on it (README, "LoRA and
  off-policy corrections").
"""

from __future__ import annotations

import ml_collections

from giftjax.train.config import base_config

BASE_HF = "/tmp/giftjax-base/hf"  # where the lora variant reads its base (giftjax.export)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The smoke recipe; ``arg="short"`` is a faster run for tests."""
    c = base_config()
    c.seed = 0
    c.model.preset = "tiny"
    c.model.tokenizer = "synthetic"

    c.data.source = "synthetic"
    c.data.kind = "reverse"
    c.data.max_prompt_len = 16
    c.data.max_response_len = 8
    c.data.eval_size = 64

    c.reward.weights = ml_collections.ConfigDict({"synthetic": 1.0})
    c.reward.time_limit = 5.0

    c.rollout.prompts_per_step = 16
    c.rollout.group_size = 8
    c.rollout.max_new_tokens = 8
    c.rollout.temperature = 1.0

    c.algo.name = "gift"
    c.algo.reference = "old"
    c.algo.gift.beta = 1.0

    c.optim.learning_rate = 3e-3
    c.optim.clip_norm = 1.0

    c.train.warmup_sft_steps = 30
    c.train.steps = 200
    c.train.updates_per_rollout = 4
    c.train.micro_batches = 2  # exact accumulation; hybrid's noise estimate needs >= 2

    c.checkpoint.every = 50
    c.log.every = 1
    c.eval.every = 50
    c.eval.num_samples = 4

    if arg == "short":
        c.train.steps = 40
        c.checkpoint.every = 10
        c.eval.every = 0
        c.data.eval_size = 16
        c.log.progress = False
    elif arg == "base":
        c.algo.name = "sft"
        c.train.steps = c.train.warmup_sft_steps
        c.train.warmup_sft_steps = 0
        c.checkpoint.every = c.train.steps
        c.eval.every = 0
    elif arg == "lora":
        c.model.hf_path = BASE_HF
        c.model.lora.rank = 8
        c.model.lora.alpha = 16.0
        c.model.lora.train_norms = True
        c.optim.learning_rate = 5e-3
        c.train.warmup_sft_steps = 0
    elif arg not in (None, ""):
        raise ValueError(
            f"configs/smoke_cpu.py: unknown variant {arg!r}; use 'short', 'base', 'lora' or none."
        )
    return c
