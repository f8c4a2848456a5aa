"""What GAC measures: the statistics ``update`` receives, their checks and the noise estimates.

``GacStats`` carries this step's measurements (the loss-side proxy statistics, or the summed
squared norms of K micro-batch gradients per branch); ``measure_gradient`` and
``measure_proxy`` turn them, with the two mean gradient trees, into ``(s_sft^2, s_rl^2, D^2,
valid)`` for the controller in ``gac.py``.
Tree reductions reduce each leaf to a float32 scalar and add the scalars, so under jit with
sharded leaves XLA reduces each shard locally and all-reduces one scalar.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array

_PROXY_FIELDS = ("sft_var", "rl_var", "disagreement")
_GRADIENT_FIELDS = ("sft_sq_norm_sum", "rl_sq_norm_sum", "num_microbatches")
_GRADIENT_OPTIONAL = ("rl_num_microbatches",)


class GacStats(NamedTuple):
    """What the trainer measured this step, passed to ``update`` as ``gac_stats=``.

    Fill the fields of the transformation's estimator and leave the others ``None``:

    - ``estimator="proxy"``: ``GacStats(sft_var, rl_var, disagreement)``, the loss-side
      statistics of [`gac_proxy_stats`][giftjax.optim.gac_proxy_stats].
    - ``estimator="gradient"``: ``GacStats(sft_sq_norm_sum=..., rl_sq_norm_sum=...,
      num_microbatches=K)``; ``sum_k |g_k|^2`` over the K micro-batch gradients of each branch,
      whose plain mean is the tree passed to ``update`` (``D^2`` is computed inside from the two
      trees). When the branches have different micro-batch counts, ``num_microbatches`` is the
      SFT branch's and ``rl_num_microbatches`` the RL branch's.

    All fields are scalars (Python numbers or ``()`` arrays, traced or not).
    """

    sft_var: Any = None  # proxy: s_sft^2, () float
    rl_var: Any = None  # proxy: s_rl^2, () float
    disagreement: Any = None  # proxy: D^2, () float
    sft_sq_norm_sum: Any = None  # gradient: sum_k |g_sft,k|^2, () float
    rl_sq_norm_sum: Any = None  # gradient: sum_k |g_rl,k|^2, () float
    num_microbatches: Any = None  # gradient: K (SFT branch, and RL unless given below), () int
    rl_num_microbatches: Any = None  # gradient: K of the RL branch if it differs, () int


def tree_sq_norm(tree: Any) -> Array:
    """``sum over leaves of sum(x^2)`` in float32: the squared global norm."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros((), jnp.float32)
    return sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves)


def tree_sq_dist(a: Any, b: Any) -> Array:
    """``|a - b|^2`` over two trees of the same structure, in float32."""
    diffs = jax.tree.map(lambda x, y: x.astype(jnp.float32) - y.astype(jnp.float32), a, b)
    return tree_sq_norm(diffs)


def split_updates(updates: Any) -> tuple[Any, Any]:
    """Check ``updates = {"sft": g_sft, "rl": g_rl}`` and return the two trees."""
    if not isinstance(updates, Mapping) or set(updates.keys()) != {"sft", "rl"}:
        got = (
            f"a mapping with keys {sorted(map(str, updates.keys()))}"
            if isinstance(updates, Mapping)
            else f"a {type(updates).__name__}"
        )
        raise ValueError(
            "gac: updates must be {'sft': g_sft, 'rl': g_rl} (two gradient trees of the "
            f"parameters' structure), got {got}. Chain gac first: "
            "optax.chain(optim.gac(...), optax.clip_by_global_norm(1.0), optax.adamw(lr))."
        )
    g_sft, g_rl = updates["sft"], updates["rl"]
    s_def, r_def = jax.tree.structure(g_sft), jax.tree.structure(g_rl)
    if s_def != r_def:
        raise ValueError(
            "gac: updates['sft'] and updates['rl'] must have the same tree structure, got "
            f"{s_def} and {r_def}."
        )
    for i, (s, r) in enumerate(zip(jax.tree.leaves(g_sft), jax.tree.leaves(g_rl), strict=True)):
        if tuple(s.shape) != tuple(r.shape):
            raise ValueError(
                f"gac: leaf {i} has shape {tuple(s.shape)} in updates['sft'] but "
                f"{tuple(r.shape)} in updates['rl']; the two trees must match leaf by leaf."
            )
    return g_sft, g_rl


def check_stats(stats: Any, estimator: str) -> None:
    """Check that ``stats`` carries the fields of ``estimator`` (``None`` is allowed)."""
    if stats is None:
        return
    if not isinstance(stats, GacStats):
        raise TypeError(
            f"gac: gac_stats must be an optim.GacStats or None, got {type(stats).__name__}."
        )
    given = tuple(f for f in GacStats._fields if getattr(stats, f) is not None)
    need = _PROXY_FIELDS if estimator == "proxy" else _GRADIENT_FIELDS
    other = _GRADIENT_FIELDS + _GRADIENT_OPTIONAL if estimator == "proxy" else _PROXY_FIELDS
    missing = [f for f in need if getattr(stats, f) is None]
    foreign = [f for f in other if getattr(stats, f) is not None]
    if missing or foreign:
        other_name = "gradient" if estimator == "proxy" else "proxy"
        hint = (
            f" Fields {foreign} belong to estimator={other_name!r}: pass "
            f"estimator={other_name!r} to optim.gac(...) if that is what you measured."
            if foreign
            else ""
        )
        raise ValueError(
            f"gac(estimator={estimator!r}) needs GacStats with {list(need)} set, got one with "
            f"{list(given)} set (missing: {missing}).{hint}"
        )
    for f in given:
        if jnp.ndim(getattr(stats, f)) != 0:
            raise ValueError(
                f"gac: gac_stats.{f} must be a scalar, got shape {jnp.shape(getattr(stats, f))}."
            )


def measure_gradient(g_sft: Any, g_rl: Any, stats: GacStats) -> tuple[Array, Array, Array, Array]:
    """``(s_sft^2, s_rl^2, D^2, valid)`` from the two mean trees and the micro-batch sums.

    ``s^2 = (sum_k |g_k|^2 - K |g_mean|^2) / (K (K - 1))`` is the variance of the mean of K
    micro-batch gradients (unbiased, clamped at 0); ``D^2 = |g_sft - g_rl|^2 - s_sft^2 -
    s_rl^2`` clamped at 0 removes the noise that ``|g_sft - g_rl|^2`` carries on average.
    Valid when both K >= 2 and every value is finite.
    """
    k_sft = jnp.asarray(stats.num_microbatches, jnp.float32)
    k_rl = k_sft if stats.rl_num_microbatches is None else stats.rl_num_microbatches
    k_rl = jnp.asarray(k_rl, jnp.float32)

    def mean_var(sq_sum, mean_tree, k):
        centred = jnp.asarray(sq_sum, jnp.float32) - k * tree_sq_norm(mean_tree)
        return jnp.maximum(centred / jnp.maximum(k * (k - 1.0), 1.0), 0.0)

    sft_var = mean_var(stats.sft_sq_norm_sum, g_sft, k_sft)
    rl_var = mean_var(stats.rl_sq_norm_sum, g_rl, k_rl)
    disagreement = jnp.maximum(tree_sq_dist(g_sft, g_rl) - sft_var - rl_var, 0.0)
    valid = (k_sft >= 2.0) & (k_rl >= 2.0)
    return sft_var, rl_var, disagreement, valid


def measure_proxy(stats: GacStats) -> tuple[Array, Array, Array, Array]:
    """``(s_sft^2, s_rl^2, D^2, valid)`` from the loss-side statistics."""
    sft_var = jnp.asarray(stats.sft_var, jnp.float32)
    rl_var = jnp.asarray(stats.rl_var, jnp.float32)
    disagreement = jnp.asarray(stats.disagreement, jnp.float32)
    valid = (sft_var >= 0.0) & (rl_var >= 0.0) & (disagreement >= 0.0)
    return sft_var, rl_var, disagreement, valid
