"""Training: the config, run plan, train state, jitted updates, the RL loop, checkpoints, metrics.

This package composes the others (losses, optim, models, sampling, rewards, data).
``train(config, workdir)`` runs a config to the end (resuming from the workdir's newest
checkpoint); ``base_config()`` holds every key with its default. ``Trainer`` and ``train``
are imported on first use, so that ``from giftjax.train import hybrid_step`` stays light
(the loop brings in the data pipeline, the rewards and orbax).
"""

from giftjax.train.accumulate import BranchGrads, accumulate_grads
from giftjax.train.config import ConfigError, base_config, validate
from giftjax.train.hybrid import hybrid_step, make_hybrid_step

__all__ = [
    "BranchGrads",
    "ConfigError",
    "Trainer",
    "accumulate_grads",
    "base_config",
    "hybrid_step",
    "make_hybrid_step",
    "train",
    "validate",
]


def __getattr__(name: str):
    if name in ("Trainer", "train"):
        from giftjax.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'giftjax.train' has no attribute {name!r}")
