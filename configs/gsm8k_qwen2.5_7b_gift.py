"""GIFT on GSM8K with Qwen2.5-7B-Instruct on a TPU v5p:2x2x2 slice (8 chips, 2 hosts:
accelerator type v5p-16).

Launch on every host of the slice (launch/ has the pod scripts; nothing is downloaded):

  python -m giftjax.main --config=configs/gsm8k_qwen2.5_7b_gift.py --workdir=runs/gsm8k-7b \
      --config.model.hf_path=checkpoints/Qwen2.5-7B-Instruct \
      --config.data.path=data/gsm8k/train.jsonl

HBM check (the README's "Will it fit?" table holds its result):

  python -m giftjax.aot --config=configs/gsm8k_qwen2.5_7b_gift.py --topology=v5p:2x2x2

Settings: configs/common_math.py (GIFT against pi_old, 4 updates per rollout batch, G = 8, 64
prompts per step, lr 1e-6, bf16 compute, f32 master weights, full remat), FSDP over the 8
chips.
"""

from __future__ import annotations

import ml_collections

from giftjax.config_files import sibling

common_math = sibling(__file__, "common_math")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The recipe (no variants)."""
    if arg not in (None, ""):
        raise ValueError(f"configs/gsm8k_qwen2.5_7b_gift.py has no variant {arg!r}.")
    return common_math.recipe(
        task="gsm8k", preset="qwen2.5-7b", checkpoint="checkpoints/Qwen2.5-7B-Instruct"
    )
