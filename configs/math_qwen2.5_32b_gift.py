"""GIFT on MATH with Qwen2.5-32B-Instruct on a TPU v5p:4x4x4 slice (64 chips,
16 hosts: accelerator type v5p-128).

Launch on every host of the slice (nothing is downloaded):

  python -m giftjax.main --config=configs/math_qwen2.5_32b_gift.py --workdir=runs/math-32b \
      --config.model.hf_path=checkpoints/Qwen2.5-32B-Instruct \
      --config.data.path=data/math/train.jsonl

HBM check:

  python -m giftjax.aot --config=configs/math_qwen2.5_32b_gift.py --topology=v5p:4x4x4

Settings: configs/common_math.py with MATH's lengths; 128 prompts per step (G = 8: 1024 rollout
rows, 16 per chip) so that each of the 64 chips samples and trains whole rows, and FSDP over
all chips (the 32B model's f32 weights and Adam moments, 393 GB, are 6.1 GB per chip).
"""

from __future__ import annotations

import ml_collections

from giftjax.config_files import sibling

common_math = sibling(__file__, "common_math")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The recipe (no variants)."""
    if arg not in (None, ""):
        raise ValueError(f"configs/math_qwen2.5_32b_gift.py has no variant {arg!r}.")
    c = common_math.recipe(
        task="math", preset="qwen2.5-32b", checkpoint="checkpoints/Qwen2.5-32B-Instruct"
    )
    c.rollout.prompts_per_step = 128  # 4 updates of 32 prompts x 8 = 256 rows: 4 per chip
    c.train.steps = 100  # 100 x 128 prompts: about 1.7 epochs of MATH's 7500 problems
    return c
