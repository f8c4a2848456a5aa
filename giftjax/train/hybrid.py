"""The hybrid SFT+RL step: both gradient trees by micro-batch accumulation, then GAC.

One step takes an SFT micro-batch stack (demonstrations) and an RL micro-batch stack (rollouts),
runs one ``lax.scan`` over each, and hands ``{"sft": g_sft, "rl": g_rl}`` with the ``gradient``
estimator's statistics to an optimiser that chains :func:`giftjax.optim.gac` first. Each
micro-batch gets exactly one forward and one backward pass, which is what a fixed-weight hybrid
costs; the statistics add one squared norm per micro-batch gradient (a few FLOPs per parameter).

Exact token means. A loss fn returns ``(loss, aux)`` with ``aux["numerator"]`` and
``aux["denominator"]`` (see :mod:`giftjax.losses.common`). The scan differentiates the
*numerator* of each micro-batch, sums those gradients and the denominators, and divides once:

    g = sum_k grad(num_k) / sum_k den_k,

which is the gradient of the whole batch's loss however the tokens fall into micro-batches.
For the noise statistic each micro-batch gradient is normalised by the same total, times K:

    g_k = K grad(num_k) / sum_j den_j,   so that   mean_k g_k = g   exactly,

and ``sum_k |g_k|^2 = K^2 sum_k |grad(num_k)|^2 / (sum_j den_j)^2`` is accumulated without
knowing the total in advance. When the micro-batches hold equal denominators, ``g_k`` is each
micro-batch's own mean gradient; otherwise the spread of the denominators counts as noise too.

Shape letters: ``K`` micro-batches, leading axis of every leaf of a micro-batch stack.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from giftjax import optim
from giftjax.losses.common import safe_divide

Array = jax.Array
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
      :class:`BranchGrads`. The gradient is accumulated in float32 and returned in each
      parameter's dtype.
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
            sq_sum = sq_sum + optim.tree_sq_norm(g)
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


def hybrid_step(
    params: Any,
    opt_state: optax.OptState,
    sft_microbatches: Any,
    rl_microbatches: Any,
    *,
    sft_loss_fn: LossFn,
    rl_loss_fn: LossFn,
    tx: optax.GradientTransformation,
    collect_stats: bool = True,
    gac_stats: optim.GacStats | None = None,
    unroll: int | bool = 1,
) -> tuple[Any, optax.OptState, dict[str, Array]]:
    """One hybrid SFT+RL update: accumulate both gradients, mix them with GAC, apply.

    Args:
      params: the parameters (a pytree; for an NNX model, ``graphdef, params =
        nnx.split(model, nnx.Param, ...)`` and the loss fns ``nnx.merge`` them).
      opt_state: ``tx``'s state.
      sft_microbatches: demonstrations, every leaf stacked ``[K_sft, ...]`` (or a list).
      rl_microbatches: rollouts, every leaf stacked ``[K_rl, ...]`` (or a list).
      sft_loss_fn: ``(params, microbatch) -> (loss, aux)`` with numerator and denominator.
      rl_loss_fn: the same for the RL branch.
      tx: an optimiser taking ``{"sft": g_sft, "rl": g_rl}``, i.e. ``optax.chain(optim.gac(...),
        ...)``.
      collect_stats: measure the ``gradient`` estimator's statistics and pass them as
        ``gac_stats`` (needs K >= 2 in each branch to refresh GAC's statistics).
      gac_stats: statistics measured elsewhere (e.g. :func:`giftjax.optim.gac_proxy_stats`
        from the rollout's log-probs) for ``collect_stats=False``.
      unroll: ``lax.scan`` unrolling of the micro-batch loops (see :func:`accumulate_grads`).

    Returns:
      ``(new_params, new_opt_state, metrics)``; metrics hold ``loss/sft``, ``loss/rl``,
      both losses' own aux metrics (``sft/...`` and the RL loss's family, averaged over
      micro-batches),
      ``grad_norm/sft``, ``grad_norm/rl`` and, when ``tx`` holds a GAC state, ``gac/mu`` (the
      weight applied in this step), ``gac/mu_raw``, ``gac/prior`` and the rest of
      :func:`giftjax.optim.gac_metrics`, ``grad/norm`` (of the mixed gradient) and ``loss``
      (the mixed loss ``(1 - mu) loss/rl + mu loss/sft``).
    """
    if collect_stats and gac_stats is not None:
        raise ValueError(
            "hybrid_step: pass either collect_stats=True (the gradient estimator's statistics "
            "are measured here) or gac_stats=... with collect_stats=False, not both."
        )
    kw = {"collect_stats": collect_stats, "unroll": unroll}
    sft = accumulate_grads(sft_loss_fn, params, sft_microbatches, name="sft_loss_fn", **kw)
    rl = accumulate_grads(rl_loss_fn, params, rl_microbatches, name="rl_loss_fn", **kw)
    if collect_stats:
        gac_stats = optim.GacStats(
            sft_sq_norm_sum=sft.sq_norm_sum,
            rl_sq_norm_sum=rl.sq_norm_sum,
            num_microbatches=sft.num_microbatches,
            rl_num_microbatches=rl.num_microbatches,
        )
    updates, opt_state = tx.update(
        {"sft": sft.grads, "rl": rl.grads}, opt_state, params, gac_stats=gac_stats
    )
    params = optax.apply_updates(params, updates)
    metrics = {
        "loss/sft": sft.loss,
        "loss/rl": rl.loss,
        "grad_norm/sft": jnp.sqrt(optim.tree_sq_norm(sft.grads)),
        "grad_norm/rl": jnp.sqrt(optim.tree_sq_norm(rl.grads)),
        **sft.aux,  # sft/... keys
        **rl.aux,  # the RL loss's family/... keys
    }
    gac_state = optim.find_gac_state(opt_state, required=False)
    if gac_state is not None:
        metrics.update(optim.gac_metrics(gac_state))
        # The mixed gradient and loss with the weight applied at this step (state.mu).
        mu = gac_state.mu
        mixed = jax.tree.map(lambda a, b: (1.0 - mu) * a + mu * b, rl.grads, sft.grads)
        metrics["grad/norm"] = jnp.sqrt(optim.tree_sq_norm(mixed))
        metrics["loss"] = (1.0 - mu) * rl.loss + mu * sft.loss
    return params, opt_state, metrics


def make_hybrid_step(
    tx: optax.GradientTransformation,
    sft_loss_fn: LossFn,
    rl_loss_fn: LossFn,
    *,
    collect_stats: bool = True,
    donate: bool = True,
    in_shardings: Sequence[Any] | None = None,
    out_shardings: Sequence[Any] | None = None,
) -> Callable[..., tuple[Any, optax.OptState, dict[str, Array]]]:
    """A jitted ``step(params, opt_state, sft_microbatches, rl_microbatches, gac_stats=None)``.

    Args:
      tx: the optimiser, ``optax.chain(optim.gac(...), ...)``.
      sft_loss_fn: see :func:`hybrid_step`.
      rl_loss_fn: see :func:`hybrid_step`.
      collect_stats: see :func:`hybrid_step`.
      donate: donate ``params`` and ``opt_state`` (updated in place on the device).
      in_shardings: optional ``jax.jit`` in_shardings for the five arguments.
      out_shardings: optional ``jax.jit`` out_shardings for ``(params, opt_state, metrics)``.

    Returns:
      The jitted step.
    """

    def step(params, opt_state, sft_microbatches, rl_microbatches, gac_stats=None):
        return hybrid_step(
            params,
            opt_state,
            sft_microbatches,
            rl_microbatches,
            sft_loss_fn=sft_loss_fn,
            rl_loss_fn=rl_loss_fn,
            tx=tx,
            collect_stats=collect_stats,
            gac_stats=gac_stats,
        )

    kwargs: dict[str, Any] = {"donate_argnums": (0, 1) if donate else ()}
    if in_shardings is not None:
        kwargs["in_shardings"] = tuple(in_shardings)
    if out_shardings is not None:
        kwargs["out_shardings"] = tuple(out_shardings)
    return jax.jit(step, **kwargs)
