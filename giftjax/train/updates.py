"""The jitted optimiser updates: ``(state, *batches) -> (state, metrics)``, one per family.

Every builder takes one `UpdateContext` (the graphdef, optimiser, config, run plan,
mesh, prompt length and state shardings the Trainer and the abstract programs both build once)
and returns the jitted update with the state donated. Each update splits its batches into
``train.micro_batches`` micro-batches of whole groups, accumulates the exact gradient
([`accumulate_grads`][giftjax.train.accumulate_grads]) and applies ``tx`` to the trainable
parameters (the adapters alone with LoRA).

Shape letters: B rows of one update (whole groups, ``B = P_u x G``), K micro-batches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from giftjax.models import lora as lora_lib
from giftjax.train.accumulate import Batch, accumulate_grads, split_microbatches
from giftjax.train.hybrid import hybrid_step
from giftjax.train.objectives import (
    dpo_microbatch_loss,
    rl_microbatch_loss,
    sft_microbatch_loss,
)
from giftjax.train.plan import RunPlan
from giftjax.train.state import TrainState

Array = jax.Array
Update = Callable[..., tuple[TrainState, dict[str, Array]]]


@dataclasses.dataclass(frozen=True)
class UpdateContext:
    """What every update builder needs, built once per run.

    Attributes:
      graphdef: the policy's NNX graphdef.
      tx: the optimiser (GAC first for hybrid runs).
      config: the run's config.
      plan: the run plan of ``config``.
      mesh: the device mesh.
      prompt_len: Tp, the left-padded prompt length of every batch.
      state_sharding: the TrainState of NamedShardings (in and out shardings; donated).
    """

    graphdef: nnx.GraphDef
    tx: optax.GradientTransformation
    config: ml_collections.ConfigDict
    plan: RunPlan
    mesh: Mesh
    prompt_len: int
    state_sharding: TrainState

    @classmethod
    def create(
        cls,
        graphdef: nnx.GraphDef,
        tx: optax.GradientTransformation,
        config: ml_collections.ConfigDict,
        *,
        mesh: Mesh,
        state_sharding: TrainState,
        prompt_len: int | None = None,
    ) -> UpdateContext:
        """The context with the plan of ``config`` on ``mesh`` (``prompt_len`` defaults to
        ``data.max_prompt_len``)."""
        return cls(
            graphdef=graphdef,
            tx=tx,
            config=config,
            plan=RunPlan.for_mesh(config, mesh),  # = RunPlan.from_config on mesh.size devices
            mesh=mesh,
            prompt_len=config.data.max_prompt_len if prompt_len is None else prompt_len,
            state_sharding=state_sharding,
        )


def _apply(
    tx: optax.GradientTransformation, state: TrainState, grads: Any, *, lora: bool = False
) -> tuple[TrainState, dict[str, Array]]:
    """``tx`` on the trainable parameters (the adapters with LoRA: the base weights are
    passed through untouched, bit for bit)."""
    trainable, frozen = lora_lib.split_trainable(state.params, lora)
    updates, opt_state = tx.update(grads, state.opt_state, trainable)
    params = optax.apply_updates(trainable, updates)
    if lora:
        params = lora_lib.merge_trainable(params, frozen)
    metrics = {
        "grad/norm": optax.tree.norm(grads),
        "params/norm": optax.tree.norm(params),
    }
    return state.replace(params=params, opt_state=opt_state), metrics


def on_trainable(loss_fn, params: Any, lora: bool):
    """``(trainable, loss_fn of trainable)``: with LoRA the adapters and a loss that merges
    them with the frozen base weights (no gradient, no optimiser state for the base)."""
    if not lora:
        return params, loss_fn
    trainable, frozen = lora_lib.split_trainable(params, True)

    def fn(p, *args):
        return loss_fn(lora_lib.merge_trainable(p, frozen), *args)

    return trainable, fn


def _jit(ctx: UpdateContext, update: Update, num_batches: int = 1) -> Update:
    """``update`` jitted with the state's shardings in and out, the state donated."""
    replicated = NamedSharding(ctx.mesh, PartitionSpec())
    return jax.jit(
        update,
        in_shardings=(ctx.state_sharding, *([None] * num_batches)),
        out_shardings=(ctx.state_sharding, replicated),
        donate_argnums=(0,),
    )


def _accumulating_update(ctx: UpdateContext, mb_loss, *, both: bool = False) -> Update:
    """The jitted ``(state, batch) -> (state, metrics)``: exact micro-batch accumulation, then
    ``tx``. ``both=True`` hands ``{"sft": g, "rl": g}`` to ``tx`` (a GAC chain: SFT warm-up
    steps of a hybrid run, where the mixed gradient is ``g`` whatever the weight)."""
    k, lora, tx = ctx.config.train.micro_batches, ctx.plan.lora, ctx.tx

    def update(state: TrainState, batch: Batch):
        trainable, loss_fn = on_trainable(mb_loss, state.params, lora)
        acc = accumulate_grads(
            loss_fn, trainable, split_microbatches(batch, k), collect_stats=False
        )
        grads = {"sft": acc.grads, "rl": acc.grads} if both else acc.grads
        state, metrics = _apply(tx, state, grads, lora=lora)
        if both:
            metrics["grad/norm"] = optax.tree.norm(acc.grads)
        return state, {**acc.aux, **metrics, "loss": acc.loss}

    return _jit(ctx, update)


def make_rl_update(ctx: UpdateContext) -> Update:
    """The RL update ``(state, batch) -> (state, metrics)`` of the plan's RL objective;
    ``batch`` holds one update's B rollout rows (``plan.batch_keys``)."""
    mb_loss = rl_microbatch_loss(
        ctx.graphdef, ctx.config, name=ctx.plan.rl_loss, mesh=ctx.mesh, prompt_len=ctx.prompt_len
    )
    return _accumulating_update(ctx, mb_loss)


def make_sft_update(ctx: UpdateContext, weighting: str | None = None) -> Update:
    """The SFT update on demonstrations (the ``sft`` algorithm and the warm-up; in a hybrid
    run the warm-up gradient is both GAC branches, so it is applied unmixed). ``weighting``
    defaults to ``algo.sft.weighting``."""
    c = ctx.config
    mb_loss = sft_microbatch_loss(
        ctx.graphdef,
        prompt_len=ctx.prompt_len,
        weighting=c.algo.sft.weighting if weighting is None else weighting,
        mesh=ctx.mesh,
        rules=c.mesh.rules,
    )
    return _accumulating_update(ctx, mb_loss, both=ctx.plan.family == "hybrid")


def make_dpo_update(ctx: UpdateContext) -> Update:
    """The DPO update on preference pairs (``plan.batch_keys``: the chosen and rejected rows
    [B, T] and masks [B, M], the reference's sequence log-probs [B])."""
    mb_loss = dpo_microbatch_loss(
        ctx.graphdef, ctx.config, mesh=ctx.mesh, prompt_len=ctx.prompt_len
    )
    return _accumulating_update(ctx, mb_loss)


def make_hybrid_update(ctx: UpdateContext) -> Update:
    """The hybrid SFT+RL update under GAC: ``(state, rl_batch, sft_batch)``.

    The RL branch is ``algo.hybrid.rl``'s loss on the rollout rows, the SFT branch
    ``sft_loss(weighting=algo.hybrid.sft_weighting)`` on the demonstrations; both are
    accumulated over ``train.micro_batches`` micro-batches and mixed by ``optim.gac`` in
    [`hybrid_step`][giftjax.train.hybrid_step] with the ``gradient`` estimator's statistics
    (measured unless ``algo.gac.collect_stats`` is False).
    """
    c, k, lora = ctx.config, ctx.config.train.micro_batches, ctx.plan.lora
    sft_loss = sft_microbatch_loss(
        ctx.graphdef,
        prompt_len=ctx.prompt_len,
        weighting=c.algo.hybrid.sft_weighting,
        mesh=ctx.mesh,
        rules=c.mesh.rules,
    )
    rl_loss = rl_microbatch_loss(
        ctx.graphdef, c, name=ctx.plan.rl_loss, mesh=ctx.mesh, prompt_len=ctx.prompt_len
    )

    def update(state: TrainState, rl_batch: Batch, sft_batch: Batch):
        trainable, sft_fn = on_trainable(sft_loss, state.params, lora)
        _, rl_fn = on_trainable(rl_loss, state.params, lora)
        params, opt_state, metrics = hybrid_step(
            trainable,
            state.opt_state,
            split_microbatches(sft_batch, k),
            split_microbatches(rl_batch, k),
            sft_loss_fn=sft_fn,
            rl_loss_fn=rl_fn,
            tx=ctx.tx,
            collect_stats=c.algo.gac.collect_stats,
        )
        if lora:
            params = lora_lib.merge_trainable(params, lora_lib.base_state(state.params))
        metrics = {**metrics, "params/norm": optax.tree.norm(params)}
        return state.replace(params=params, opt_state=opt_state), metrics

    return _jit(ctx, update, num_batches=2)


BUILDERS: dict[str, Callable[[UpdateContext], Update]] = {
    "rl": make_rl_update,
    "hybrid": make_hybrid_update,
    "dpo": make_dpo_update,
    "sft": make_sft_update,
}


def make_update(ctx: UpdateContext) -> Update:
    """The jitted update of the plan's family: ``(state, batch)`` for rl, dpo and sft,
    ``(state, rl_batch, sft_batch)`` for hybrid (``plan.update_batches``)."""
    return BUILDERS[ctx.plan.family](ctx)
