"""GIFT on GSM8K with Qwen2.5-0.5B-Instruct: one GPU, or a TPU v5e-8 (v5e:2x4, 8 chips).

Launch (a local checkpoint and GSM8K JSONL files; nothing is downloaded):

  python -m giftjax.main --config=configs/gsm8k_qwen2.5_0.5b_gift.py --workdir=runs/gsm8k-0.5b \
      --config.model.hf_path=checkpoints/Qwen2.5-0.5B-Instruct \
      --config.data.path=data/gsm8k/train.jsonl

HBM check before renting (compiles the train step and the sampler for the topology):

  python -m giftjax.aot --config=configs/gsm8k_qwen2.5_0.5b_gift.py --topology=v5e:2x4

Settings: configs/common_math.py (GIFT against pi_old, 4 updates per rollout batch, G = 8,
lr 1e-6, bf16 compute, full remat) with FSDP over whatever devices there are. Without remat
the update's activations need 41 GiB per v5e chip (``giftjax.aot`` says so); with it the
recipe fits a 16 GiB v5e chip.
"""

from __future__ import annotations

import ml_collections

from giftjax.config_files import sibling

common_math = sibling(__file__, "common_math")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The recipe (no variants)."""
    if arg not in (None, ""):
        raise ValueError(f"configs/gsm8k_qwen2.5_0.5b_gift.py has no variant {arg!r}.")
    return common_math.recipe(
        task="gsm8k", preset="qwen2.5-0.5b", checkpoint="checkpoints/Qwen2.5-0.5B-Instruct"
    )
