"""Optimiser transformations: GAC, the noise-aware SFT/RL gradient-mixing controller.

``optax.chain(optim.gac(...), optax.clip_by_global_norm(1.0), optax.adamw(lr))`` takes
``{"sft": g_sft, "rl": g_rl}`` and ``gac_stats=optim.GacStats(...)``. Imports only jax, optax,
``giftjax.kernels`` and the shared helpers of ``giftjax.losses`` (argument checks, CHORD's phi).
"""

from giftjax.optim.gac import (
    ESTIMATORS,
    MODES,
    SMOOTHINGS,
    GacState,
    closed_form_mu,
    find_gac_state,
    gac,
    gac_metrics,
)
from giftjax.optim.gac_stats import GacStats, tree_sq_norm
from giftjax.optim.proxy_stats import gac_proxy_stats, trimmed_var
from giftjax.optim.schedules import chord_prior

__all__ = [
    "ESTIMATORS",
    "MODES",
    "SMOOTHINGS",
    "GacState",
    "GacStats",
    "chord_prior",
    "closed_form_mu",
    "find_gac_state",
    "gac",
    "gac_metrics",
    "gac_proxy_stats",
    "tree_sq_norm",
    "trimmed_var",
]
