"""GIFT on MATH with Qwen2.5-7B-Instruct on a TPU v5p:2x2x2 slice (8 chips, 2 hosts:
accelerator type v5p-16).

Launch on every host of the slice (nothing is downloaded; data/math/train.jsonl holds MATH
training problems in the MATH-500 layout, evaluation on MATH-500):

  python -m giftjax.main --config=configs/math_qwen2.5_7b_gift.py --workdir=runs/math-7b \
      --config.model.hf_path=checkpoints/Qwen2.5-7B-Instruct \
      --config.data.path=data/math/train.jsonl

HBM check:

  python -m giftjax.aot --config=configs/math_qwen2.5_7b_gift.py --topology=v5p:2x2x2

Settings: configs/common_math.py with MATH's longer prompts (512 tokens) and responses (1024),
the ``math`` reward (math-verify equivalence) plus format; 2 micro-batches per update keep
the longer rows' activations within the chip's HBM with headroom.
"""

from __future__ import annotations

import ml_collections

from giftjax.config_files import sibling

common_math = sibling(__file__, "common_math")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The recipe (no variants)."""
    if arg not in (None, ""):
        raise ValueError(f"configs/math_qwen2.5_7b_gift.py has no variant {arg!r}.")
    c = common_math.recipe(
        task="math", preset="qwen2.5-7b", checkpoint="checkpoints/Qwen2.5-7B-Instruct"
    )
    c.train.micro_batches = 2
    return c
