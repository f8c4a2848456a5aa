"""The hybrid SFT+RL step: both gradient trees by micro-batch accumulation, then GAC.

One step takes an SFT micro-batch stack (demonstrations) and an RL micro-batch stack (rollouts),
runs one ``lax.scan`` over each, and hands ``{"sft": g_sft, "rl": g_rl}`` with the ``gradient``
estimator's statistics to an optimiser that chains [`gac`][giftjax.optim.gac.gac] first. Each
micro-batch gets exactly one forward and one backward pass, which is what a fixed-weight hybrid
costs; the statistics add one squared norm per micro-batch gradient (a few FLOPs per parameter).

Both gradients are exact token means over their micro-batches, and the noise statistic is
measured on the way ([`accumulate_grads`][giftjax.train.accumulate_grads]).

Shape letters: ``K`` micro-batches, leading axis of every leaf of a micro-batch stack.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import optax

from giftjax import optim
from giftjax.train.accumulate import Array, LossFn, accumulate_grads, as_float32


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
      gac_stats: statistics measured elsewhere (e.g.
        [`gac_proxy_stats`][giftjax.optim.gac_proxy_stats] from the rollout's log-probs) for
        ``collect_stats=False``.
      unroll: ``lax.scan`` unrolling of the micro-batch loops (see
        [`accumulate_grads`][giftjax.train.accumulate_grads]).

    Returns:
      ``(new_params, new_opt_state, metrics)``; metrics hold ``loss/sft``, ``loss/rl``,
      both losses' own aux metrics (``sft/...`` and the RL loss's family, averaged over
      micro-batches),
      ``grad_norm/sft``, ``grad_norm/rl`` and, when ``tx`` holds a GAC state, ``gac/mu`` (the
      weight applied in this step), ``gac/mu_raw``, ``gac/prior`` and the rest of
      [`gac_metrics`][giftjax.optim.gac_metrics], ``grad/norm`` (of the mixed gradient) and ``loss``
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
        "grad_norm/sft": optax.tree.norm(as_float32(sft.grads)),
        "grad_norm/rl": optax.tree.norm(as_float32(rl.grads)),
        **sft.aux,  # sft/... keys
        **rl.aux,  # the RL loss's family/... keys
    }
    gac_state = optim.find_gac_state(opt_state, required=False)
    if gac_state is not None:
        metrics.update(optim.gac_metrics(gac_state))
        # The mixed gradient and loss with the weight applied at this step (state.mu).
        mu = gac_state.mu
        mixed = jax.tree.map(lambda a, b: (1.0 - mu) * a + mu * b, rl.grads, sft.grads)
        metrics["grad/norm"] = optax.tree.norm(as_float32(mixed))
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
      sft_loss_fn: see [`hybrid_step`][giftjax.train.hybrid_step].
      rl_loss_fn: see [`hybrid_step`][giftjax.train.hybrid_step].
      collect_stats: see [`hybrid_step`][giftjax.train.hybrid_step].
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
