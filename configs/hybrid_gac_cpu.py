"""Hybrid SFT+RL under GAC on the synthetic task, with the tiny model, on one CPU.

  python -m giftjax.main --config=configs/hybrid_gac_cpu.py --workdir=/tmp/giftjax-hybrid
  python -m giftjax.plot /tmp/giftjax-hybrid        # reward, loss and the mu curves

Each step samples G responses for P prompts (the RL branch: GIFT with pi_old as reference,
4 updates per rollout batch) and takes the same prompts' demonstrations (the SFT branch,
CHORD-weighted NLL). ``giftjax.optim.gac`` mixes the two gradients with the SFT weight mu,
adapted from the micro-batch gradient noise of each branch and their disagreement, guided by
the CHORD prior schedule (shortened to the run's length and counted in optimiser updates, 4
per step: linear 0 -> 0.85 over 40 updates, cosine 0.85 -> 0.15 over 320), with steps of at
most 0.01 per update. ``gac/mu``,
``gac/mu_raw`` and ``gac/prior`` are logged every step.
"""

from __future__ import annotations

import ml_collections

from giftjax.config_files import sibling

smoke_cpu = sibling(__file__, "smoke_cpu")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The hybrid recipe (``arg="short"``: a faster run for tests)."""
    c = smoke_cpu.get_config(arg)
    c.algo.name = "hybrid"
    c.algo.hybrid.rl = "gift"
    c.algo.hybrid.sft_weighting = "chord"
    c.algo.gac.mode = "adaptive"
    c.algo.gac.smoothing = "separate"
    c.algo.gac.estimator = "gradient"  # needs train.micro_batches >= 2 (the smoke's is 2)
    c.algo.gac.prior_warmup = 40
    c.algo.gac.prior_decay = 320
    c.train.warmup_sft_steps = 0  # the SFT branch trains on demonstrations from step 1
    c.train.steps = 120 if arg != "short" else 30
    return c
