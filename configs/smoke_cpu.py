"""Smoke recipe: GIFT on the synthetic task with the tiny model, on one CPU, in minutes.

The README's main command:

  python -m giftjax.main --config=configs/smoke_cpu.py --workdir=/tmp/giftjax-smoke

A 2-layer, width-64 decoder learns the synthetic task (reverse a digit string; the held-out
split has longer strings): 30 SFT warm-up steps on the task's demonstrations teach the answer
format (the partial-credit reward then starts near 0.2), then 200 steps of
GIFT with the rollout policy pi_old as reference and 4 updates per rollout batch (as the GIFT
authors' code takes; with one update and pi_old every update is GIFT's degenerate case)
raises the reward. Variants: ``configs/smoke_cpu.py:short`` (the test suite's shorter run).
Any key can be overridden, e.g. ``--config.algo.name=grpo`` trains a baseline instead.
"""

from __future__ import annotations

import ml_collections

from giftjax.train.config import base_config


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
    elif arg not in (None, ""):
        raise ValueError(f"configs/smoke_cpu.py: unknown variant {arg!r}; use 'short' or none.")
    return c
