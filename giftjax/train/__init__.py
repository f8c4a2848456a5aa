"""Training: train state, jitted steps, the RL loop, checkpoints, metrics.

This package composes the others (losses, optim, models, sampling).
"""

from giftjax.train.hybrid import BranchGrads, accumulate_grads, hybrid_step, make_hybrid_step

__all__ = ["BranchGrads", "accumulate_grads", "hybrid_step", "make_hybrid_step"]
