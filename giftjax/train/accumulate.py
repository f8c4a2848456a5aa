"""Exact micro-batch accumulation: one gradient tree from K micro-batches in one ``lax.scan``.

Exact token means. A loss fn returns ``(loss, aux)`` with ``aux["numerator"]`` and
``aux["denominator"]`` (see `giftjax.losses.common`). The scan differentiates the
*numerator* of each micro-batch, sums those gradients and the denominators, and divides once:

    g = sum_k grad(num_k) / sum_k den_k,

which is the gradient of the whole batch's loss however the tokens fall into micro-batches.
For the noise statistic each micro-batch gradient is normalised by the same total, times K:

    g_k = K grad(num_k) / sum_j den_j,   so that   mean_k g_k = g   exactly,

and ``sum_k |g_k|^2 = K^2 sum_k |grad(num_k)|^2 / (sum_j den_j)^2`` is accumulated without
knowing the total in advance. When the micro-batches hold equal denominators, ``g_k`` is each
micro-batch's own mean gradient; otherwise the spread of the denominators counts as noise too.

Shape letters: ``K`` micro-batches, leading axis of every leaf of a micro-batch stack; B rows
of one update, ``b = B / K`` rows per micro-batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from giftjax.losses.common import safe_divide

Array = jax.Array
Batch = Mapping[str, Array]
LossFn = Callable[[Any, Any], tuple[Array, dict[str, Array]]]


class BranchGrads(NamedTuple):
    """One branch's accumulated gradient and what was measured on the way."""

    grads: Any  # tree of the params' structure and dtypes: sum_k grad(num_k) / sum_k den_k
    loss: Array  # () float32: sum_k num_k / sum_k den_k (0 if the denominator is 0)
    sq_norm_sum: Array  # () float32: sum_k |g_k|^2 with g_k = K grad(num_k) / sum_j den_j
    num_microbatches: int  # K (static)
    aux: dict[str, Array]  # the loss's scalar aux metrics, averaged over micro-batches


def _stack(microbatches: Any, name: str) -> tuple[Any, int]:
    """Return the micro-batches stacked along a leading axis, and K."""
    if isinstance(microbatches, (list, tuple)) and not hasattr(microbatches, "_fields"):
        if not microbatches:
            raise ValueError(f"{name} is an empty list; give at least one micro-batch.")
        microbatches = jax.tree.map(lambda *xs: jnp.stack(xs), *microbatches)
    leaves = jax.tree.leaves(microbatches)
    if not leaves:
        raise ValueError(f"{name} has no arrays.")
    sizes = {int(jnp.shape(x)[0]) if jnp.ndim(x) else -1 for x in leaves}
    if len(sizes) != 1 or -1 in sizes:
        raise ValueError(
            f"{name} must be stacked along a leading micro-batch axis K shared by every leaf, "
            f"got leading sizes {sorted(sizes)} (-1: a scalar leaf)."
        )
    return microbatches, sizes.pop()


def accumulate_grads(
    loss_fn: LossFn,
    params: Any,
    microbatches: Any,
    *,
    collect_stats: bool = True,
    unroll: int | bool = 1,
    name: str = "loss_fn",
) -> BranchGrads:
    """Exact token-mean gradient of ``loss_fn`` over K micro-batches in one ``lax.scan``.

    Args:
      loss_fn: ``(params, microbatch) -> (loss, aux)`` with ``aux["numerator"]`` and
        ``aux["denominator"]`` (scalars; the denominator must not depend on ``params``).
      params: a pytree of floating arrays (an ``nnx.State`` of ``nnx.Param`` works).
      microbatches: a pytree whose leaves have a leading axis K, or a list of K micro-batches.
      collect_stats: accumulate ``sum_k |g_k|^2`` (else ``sq_norm_sum`` is 0).
      unroll: passed to ``lax.scan`` (``True`` unrolls every micro-batch, e.g. so that
        ``cost_analysis()``, which counts a loop body once, counts them all).
      name: used in error messages.

    Returns:
      [`BranchGrads`][giftjax.train.BranchGrads]. The gradient is accumulated in float32 and
      returned in each parameter's dtype.
    """
    microbatches, k = _stack(microbatches, name.replace("loss_fn", "microbatches"))

    def numerator(p, mb):
        out = loss_fn(p, mb)
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict)):
            raise TypeError(f"{name} must return (loss, aux) with aux a dict, got {type(out)}.")
        aux = out[1]
        missing = [key for key in ("numerator", "denominator") if key not in aux]
        if missing:
            raise ValueError(
                f"{name} must return aux['numerator'] and aux['denominator'] (exact "
                f"accumulation, see giftjax.losses.common.finish); missing {missing}, got keys "
                f"{sorted(aux)}."
            )
        return jnp.asarray(aux["numerator"], jnp.float32), aux

    grad_fn = jax.grad(numerator, has_aux=True)
    zeros = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)

    def body(carry, mb):
        g_sum, sq_sum, num, den = carry
        g, aux = grad_fn(params, mb)
        g_sum = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), g_sum, g)
        if collect_stats:
            sq_sum = sq_sum + optax.tree.norm(as_float32(g), squared=True)
        num = num + jnp.asarray(aux["numerator"], jnp.float32)
        den = den + jnp.asarray(aux["denominator"], jnp.float32)
        metrics = {
            key: jnp.asarray(v, jnp.float32)
            for key, v in aux.items()
            if key not in ("numerator", "denominator") and jnp.ndim(v) == 0
        }
        return (g_sum, sq_sum, num, den), metrics

    scalar = jnp.zeros((), jnp.float32)
    (g_sum, sq_sum, num, den), per_mb = jax.lax.scan(
        body, (zeros, scalar, scalar, scalar), microbatches, unroll=unroll
    )
    inv = safe_divide(1.0, den)  # 0 when no tokens
    grads = jax.tree.map(lambda g, p: (g * inv).astype(jnp.result_type(p)), g_sum, params)
    return BranchGrads(
        grads=grads,
        loss=num * inv,
        sq_norm_sum=sq_sum * jnp.square(k * inv),
        num_microbatches=k,
        aux={key: jnp.mean(v) for key, v in per_mb.items()},
    )


def as_float32(tree: Any) -> Any:
    """Every leaf of ``tree`` in float32 (norms of bfloat16 gradients are taken in float32)."""
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def split_microbatches(batch: Batch, k: int) -> dict[str, Array]:
    """[B, ...] -> [K, B/K, ...] for every leaf (contiguous rows: whole groups stay whole)."""
    return {key: x.reshape(k, x.shape[0] // k, *x.shape[1:]) for key, x in batch.items()}


def _split_updates(batch: Batch, parts: int) -> list[Batch]:
    """``parts`` batches of consecutive rows, ``[B, ...] -> parts x [B/parts, ...]`` for every
    leaf (whole groups stay whole): the updates of one rollout batch.

    Jitted (``split_updates``), so the split is one compiled program. Sliced eagerly, each
    array's slice is a program of its own that every process of a multi-host run must dispatch
    in step with the others, and two processes were seen to stall there
    (tests/test_multihost.py).
    """
    rows = next(iter(batch.values())).shape[0]
    if any(x.shape[0] != rows for x in batch.values()) or rows % parts:
        shapes = {key: x.shape for key, x in batch.items()}
        raise ValueError(
            f"split_updates: {parts} updates need the same number of rows, a multiple of "
            f"{parts}, in every array; got {shapes}."
        )
    n = rows // parts
    return [{key: x[i * n : (i + 1) * n] for key, x in batch.items()} for i in range(parts)]


split_updates = jax.jit(_split_updates, static_argnums=1)
