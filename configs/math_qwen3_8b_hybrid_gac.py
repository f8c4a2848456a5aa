"""Hybrid SFT+RL under GAC on MATH with Qwen3-8B on a TPU v5p:2x2x2 slice (8 chips,
2 hosts: accelerator type v5p-16).

Launch on every host of the slice (nothing is downloaded; the training rows need a
``solution`` field, the demonstrations of the SFT branch, as MATH's files have):

  python -m giftjax.main --config=configs/math_qwen3_8b_hybrid_gac.py --workdir=runs/math-hybrid \
      --config.model.hf_path=checkpoints/Qwen3-8B \
      --config.data.path=data/math/train.jsonl

HBM check:

  python -m giftjax.aot --config=configs/math_qwen3_8b_hybrid_gac.py --topology=v5p:2x2x2

Settings: configs/common_math.py with ``algo.name="hybrid"``: the RL branch is GIFT against
pi_old (4 updates per rollout batch), the SFT branch the CHORD-weighted NLL of the rows'
reference solutions, mixed by ``giftjax.optim.gac`` with the ``gradient`` noise estimator
(2 micro-batches per update, its minimum) and the CHORD prior counted in optimiser updates
(4 per step: linear 0 -> 0.85 over 80 updates, cosine to 0.15 over the next 720; our
choice, the published schedule's shape over this run's 800 updates).
"""

from __future__ import annotations

import ml_collections

from giftjax.config_files import sibling

common_math = sibling(__file__, "common_math")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The recipe (no variants)."""
    if arg not in (None, ""):
        raise ValueError(f"configs/math_qwen3_8b_hybrid_gac.py has no variant {arg!r}.")
    c = common_math.recipe(task="math", preset="qwen3-8b", checkpoint="checkpoints/Qwen3-8B")
    c.algo.name = "hybrid"
    c.algo.hybrid.rl = "gift"
    c.algo.hybrid.sft_weighting = "chord"
    c.data.demonstration_field = "solution"
    c.algo.gac.mode = "adaptive"
    c.algo.gac.smoothing = "separate"
    c.algo.gac.estimator = "gradient"  # needs train.micro_batches >= 2
    c.algo.gac.prior_warmup = 80
    c.algo.gac.prior_decay = 720
    c.train.micro_batches = 2
    return c
