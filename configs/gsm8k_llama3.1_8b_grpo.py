"""GRPO baseline on GSM8K with Llama-3.1-8B-Instruct on a TPU v5p:2x2x2 slice (8 chips,
2 hosts: accelerator type v5p-16).

Launch on every host of the slice (nothing is downloaded):

  python -m giftjax.main --config=configs/gsm8k_llama3.1_8b_grpo.py --workdir=runs/gsm8k-llama8b \
      --config.model.hf_path=checkpoints/Llama-3.1-8B-Instruct \
      --config.data.path=data/gsm8k/train.jsonl

HBM check:

  python -m giftjax.aot --config=configs/gsm8k_llama3.1_8b_grpo.py --topology=v5p:2x2x2

Settings: configs/common_math.py with ``algo.name="grpo"`` and the GRPO preset of Shao et al.
2024 (clip 0.2, KL to the initial model with the k3 estimator and coefficient 0.04,
per-sequence token mean); the KL term needs the frozen initial weights, so
``algo.reference="initial"`` (one more f32 copy of the parameters, sharded like them). The
4 updates per rollout batch match the GIFT recipes, so the two compare at equal samples.
"""

from __future__ import annotations

import ml_collections

from giftjax.config_files import sibling

common_math = sibling(__file__, "common_math")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The recipe (no variants)."""
    if arg not in (None, ""):
        raise ValueError(f"configs/gsm8k_llama3.1_8b_grpo.py has no variant {arg!r}.")
    c = common_math.recipe(
        task="gsm8k", preset="llama3.1-8b", checkpoint="checkpoints/Llama-3.1-8B-Instruct"
    )
    c.algo.name = "grpo"
    c.algo.reference = "initial"  # the KL term's reference: the frozen starting model
    c.algo.grpo.advantage = "grpo"
    return c
