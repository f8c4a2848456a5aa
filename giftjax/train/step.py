"""The jitted pieces of a train step: response log-probs, the loss table, and the updates.

Shape letters: B rows of one update (whole groups, ``B = P_u x G``), K micro-batches,
``b = B / K`` rows per micro-batch, T = Tp + M tokens per row (Tp left-padded prompt tokens,
M response tokens), D model width, V vocabulary.

A row is ``tokens [T] = prompt [Tp] ++ response [M]``. The response log-probs come from the
model's final hidden states at positions ``Tp-1 .. T-2`` (each predicts the next token) through
``kernels.token_logprobs_sharded``, which never builds ``[B, M, V]`` logits.

Every update is exact under micro-batching: each loss returns ``aux["numerator"]`` and
``aux["denominator"]``; :func:`giftjax.train.hybrid.accumulate_grads` differentiates the
numerator of each micro-batch in one ``lax.scan``, sums, and divides once by the summed
denominator, so the loss and the gradient do not depend on ``train.micro_batches``
(micro-batches hold whole groups, so GIFT's and GRPO's group statistics are unchanged).

``rollout.old_logps`` picks pi_old of the GRPO family. ``"recompute"`` (default): the
trainer's log-probs of the rollout batch, one extra forward pass before the first update when
``train.updates_per_rollout > 1`` (with one update the policy IS pi_old and the ratio is
exactly 1: no pass). ``"sampler"``: the sampler's log-probs, no pass: each token's policy term
is weighted by the truncated importance weight ``w = min(exp(logp - sampler_logp), C)`` (``C =
rollout.tis_cap``, no gradient through ``w``) with the ratio taken at the current weights
(value 1, gradient ``grad log pi``), i.e. the gradient ``w A grad log pi``. On the first
update after sampling ``logp`` is the trainer's pi_old, so ``w = min(exp(trainer_old -
sampler), C)`` corrects the training-inference mismatch alone; on later updates it also
carries the policy's own drift since sampling, bounded by ``C`` in place of PPO's clip (the
clip range is then inactive). Where the clipped ratio is inactive the two modes give the same
loss and gradient when the sampler and trainer agree. GIFT's implicit reward always uses the
trainer's own log-probs. Metrics: ``logprob/mismatch`` and ``logprob/tis_truncated`` (share of
response tokens whose weight was capped).

The loss is picked by ``algo.name`` from :data:`RL_LOSSES` (gift, grpo, dapo, dr_grpo,
gspo); ``sft`` and ``dpo`` train on their own data; ``hybrid`` mixes an SFT branch and an RL
branch with GAC (:func:`giftjax.train.hybrid.hybrid_step`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh

from giftjax import kernels, losses
from giftjax import sharding as sharding_lib
from giftjax.models import lora as lora_lib
from giftjax.train.hybrid import accumulate_grads, hybrid_step
from giftjax.train.state import TrainState

Array = jax.Array
Batch = Mapping[str, Array]


# ------------------------------------------------------------------------------------------
# Log-probs of response tokens.
# ------------------------------------------------------------------------------------------


def response_logps(
    graphdef: nnx.GraphDef,
    params: Any,
    tokens: Array,
    attn_mask: Array,
    *,
    prompt_len: int,
    temperature: float,
    mesh: Mesh,
    rules: Any,
    group_size: int = 1,
) -> Array:
    """Per-token log-probs of the response part of each row under the policy ``params``.

    ``logp[i, j] = log softmax(h[i, Tp-1+j] / temperature @ W)[tokens[i, Tp+j]]``.

    With ``group_size`` G > 1 the rows are groups of G responses to one prompt (rows
    ``g*G .. g*G+G-1`` share their prompt columns, as every RL rollout batch does): each
    prompt then goes through the model once, not G times
    (:meth:`giftjax.models.Decoder.shared_prefix_hidden`), and only the first row of each
    group's prompt is read. The log-probs are the same up to float rounding.

    Args:
      graphdef: the model's NNX graphdef.
      params: its parameters (``nnx.State``).
      tokens: [B, T] int32, prompt (left-padded, Tp columns) then response (M columns).
      attn_mask: [B, T] 1 for real tokens (prompt padding and tokens after EOS are 0).
      prompt_len: Tp (static).
      temperature: the sampler's temperature (the log-probs are those it sampled from; 0,
        greedy, is scored at 1).
      mesh, rules: the device mesh and logical-axis rules.
      group_size: G; 1 (or B not a multiple of G, or M < 2) runs every row in full.

    Returns:
      [B, M] float32.
    """
    if tokens.ndim != 2 or attn_mask.shape != tokens.shape:
        raise ValueError(
            f"tokens and attn_mask must both be [B, T]; got {tokens.shape}, {attn_mask.shape}."
        )
    if not 0 < prompt_len < tokens.shape[1]:
        raise ValueError(f"prompt_len={prompt_len} must be in (0, T={tokens.shape[1]}).")
    model = nnx.merge(graphdef, params)
    b, t = tokens.shape
    g = int(group_size)
    if g > 1 and b % g == 0 and t - prompt_len >= 2:
        hp, hs = model.shared_prefix_hidden(
            tokens[::g, :prompt_len],
            attn_mask[::g, :prompt_len],
            tokens[:, prompt_len:-1],
            attn_mask[:, prompt_len:-1],
            group_size=g,
        )  # [P, Tp, D], [B, M-1, D]
        last = jnp.repeat(hp[:, -1:], g, axis=0)  # [B, 1, D]: position Tp-1
        hidden = jnp.concatenate([last, hs], axis=1)  # [B, M, D]
    else:
        hidden = model(tokens[:, :-1], attn_mask[:, :-1], return_hidden=True)  # [B, T-1, D]
        hidden = hidden[:, prompt_len - 1 :]  # [B, M, D]: position Tp-1+j predicts token Tp+j
    targets = tokens[:, prompt_len:]  # [B, M]
    lm_head = model.lm_head_weight().astype(hidden.dtype)  # [D, V]
    rules = sharding_lib.get_rules(rules)
    table = dict(rules)
    vocab_axis = "tensor" if table.get("vocab") == "tensor" else None
    temp = float(temperature) if temperature > 0 else 1.0
    if vocab_axis is None and mesh.shape["tensor"] > 1:
        raise ValueError("a mesh with tensor > 1 needs the fsdp_tp rules (vocab over tensor).")
    token_axes = tuple(a for a in ("data", "fsdp") if mesh.shape[a] > 1)
    n_tokens = targets.size
    shards = 1
    for a in token_axes:
        shards *= mesh.shape[a]
    if n_tokens % shards:
        token_axes = ()
    return kernels.token_logprobs_sharded(
        hidden,
        lm_head,
        targets,
        mesh=mesh,
        token_axes=token_axes,
        vocab_axis="tensor",
        temperature=temp,
    )


def logps_fn(
    graphdef: nnx.GraphDef,
    *,
    prompt_len: int,
    temperature: float,
    mesh: Mesh,
    rules: Any,
    group_size: int = 1,
) -> Callable[[Any, Array, Array], Array]:
    """``(params, tokens [B, T], attn_mask [B, T]) -> [B, M]``: :func:`response_logps` with
    the run's static settings bound."""
    return functools.partial(
        response_logps,
        graphdef,
        prompt_len=prompt_len,
        temperature=temperature,
        mesh=mesh,
        rules=rules,
        group_size=group_size,
    )


def rollout_group_size(config: ml_collections.ConfigDict) -> int:
    """The group size the log-prob passes over RL rollout rows may share prompts over:
    ``rollout.group_size`` when ``train.share_prompts`` is on, else 1."""
    return config.rollout.group_size if config.train.share_prompts else 1


# ------------------------------------------------------------------------------------------
# The loss table: name -> f(logps [b, M], microbatch, settings) -> (loss, aux).
# ------------------------------------------------------------------------------------------


def _gift(logps: Array, mb: Batch, s: ml_collections.ConfigDict) -> tuple[Array, dict]:
    # The implicit reward k = sum_t (logps - ref) always uses the trainer's own log-probs
    # (the recomputed pi_old, the initial model, or the current policy), never the sampler's,
    # whatever rollout.old_logps says: no importance weight enters GIFT's regression.
    kw: dict[str, Any] = {"group_size": s.group_size, "beta": s.algo.gift.beta}
    if s.algo.gift.preset:
        kw["preset"] = s.algo.gift.preset
    if s.algo.gift.std_floor is not None:
        kw["std_floor"] = s.algo.gift.std_floor
    ref = mb["ref_logps"] if "ref_logps" in mb else jax.lax.stop_gradient(logps)
    return losses.gift_loss(logps, ref, mb["resp_mask"], mb["rewards"], **kw)


def _grpo_family(preset: str) -> Callable[..., tuple[Array, dict]]:
    def loss(logps: Array, mb: Batch, s: ml_collections.ConfigDict) -> tuple[Array, dict]:
        g = s.algo.grpo
        # The preset's published values, then the config's explicit ones on top. (Passing
        # both to grpo_loss(preset=...) would drop an override equal to grpo_loss's own
        # default, e.g. agg="token-mean" or kl_coef=0.0 under the grpo preset.)
        kw: dict[str, Any] = {
            **losses.grpo.GRPO_PRESETS[preset],
            "max_len": s.rollout.max_new_tokens,
        }
        for key in ("clip_low", "clip_high", "kl_coef", "agg"):
            if g[key] is not None:
                kw[key] = g[key]
        # pi_old: recomputed before the first update, or the current policy itself when there
        # is one update per rollout batch (the ratio is then exactly 1; no extra pass).
        old = mb["old_logps"] if "old_logps" in mb else jax.lax.stop_gradient(logps)
        extra: dict[str, Array] = {}
        if s.rollout.old_logps == "sampler":
            # pi_old is the sampler: no trainer pass. The ratio is taken at the current weights
            # (value 1) and the truncated weight min(exp(trainer - sampler), C) carries the
            # correction from the sampler to the trainer's policy (module docstring).
            old = jax.lax.stop_gradient(logps)
            kw["is_weights"], extra = losses.truncated_is_weights(
                logps, mb["sampler_logps"], mb["resp_mask"], cap=s.rollout.tis_cap
            )
        if "ref_logps" in mb:
            kw["ref_logps"] = mb["ref_logps"]
        elif s.uses_kl:
            kw["ref_logps"] = jax.lax.stop_gradient(logps)
        loss_value, aux = losses.grpo_loss(logps, old, mb["resp_mask"], mb["advantages"], **kw)
        return loss_value, {**aux, **extra}

    return loss


RL_LOSSES: dict[str, Callable[..., tuple[Array, dict]]] = {
    "gift": _gift,
    "grpo": _grpo_family("grpo"),
    "dapo": _grpo_family("dapo"),
    "dr_grpo": _grpo_family("dr_grpo"),
    "gspo": _grpo_family("gspo"),
}


def get_rl_loss(name: str) -> Callable[..., tuple[Array, dict]]:
    """The RL loss called ``name``; an unknown name lists the known ones."""
    if name not in RL_LOSSES:
        raise ValueError(f"unknown RL loss {name!r}; known: {sorted(RL_LOSSES)}.")
    return RL_LOSSES[name]


def uses_kl(config: ml_collections.ConfigDict, name: str) -> bool:
    """Whether the GRPO-family loss ``name`` has a KL term (so needs reference log-probs)."""
    if name not in losses.grpo.GRPO_PRESETS:
        return False
    kl = config.algo.grpo.kl_coef
    if kl is None:
        kl = losses.grpo.GRPO_PRESETS[name].get("kl_coef", 0.0)
    return bool(kl)


def advantage_method(config: ml_collections.ConfigDict, name: str) -> str:
    """The group-advantage method of a GRPO-family run (dr_grpo: mean-centred, unscaled)."""
    return config.algo.grpo.advantage or ("dr_grpo" if name == "dr_grpo" else "grpo")


# ------------------------------------------------------------------------------------------
# Updates.
# ------------------------------------------------------------------------------------------


def _mismatch(logps: Array, mb: Batch) -> dict[str, Array]:
    """``logprob/mismatch``: mean |sampler log-prob - trainer log-prob| over response tokens
    (meaningful on the first update of a rollout batch, while the weights are the sampler's)."""
    if "sampler_logps" not in mb:
        return {}
    m = mb["resp_mask"]
    diff = jnp.abs(jax.lax.stop_gradient(logps) - mb["sampler_logps"]) * m
    return {"logprob/mismatch": jnp.sum(diff) / jnp.maximum(jnp.sum(m), 1.0)}


def _split_microbatches(batch: Batch, k: int) -> dict[str, Array]:
    """[B, ...] -> [K, B/K, ...] for every leaf (contiguous rows: whole groups stay whole)."""
    return {key: x.reshape(k, x.shape[0] // k, *x.shape[1:]) for key, x in batch.items()}


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


def settings(config: ml_collections.ConfigDict, rl_name: str) -> ml_collections.FrozenConfigDict:
    """What the loss functions read: the config plus derived fields, frozen (hashable)."""
    c = ml_collections.ConfigDict(config.to_dict())
    c.group_size = config.rollout.group_size
    c.uses_kl = uses_kl(config, rl_name)
    return ml_collections.FrozenConfigDict(c)


def rl_microbatch_loss(
    graphdef: nnx.GraphDef,
    config: ml_collections.ConfigDict,
    *,
    name: str,
    mesh: Mesh,
    prompt_len: int,
) -> Callable[[Any, Batch], tuple[Array, dict]]:
    """``(params, mb) -> (loss, aux)``: the RL loss ``name`` on one micro-batch of rollout
    rows (``tokens``, ``attn_mask`` [b, T]; ``resp_mask`` [b, M]; ``rewards`` [b]; the
    GRPO family's ``advantages`` [b]; optional ``old_logps``, ``ref_logps``,
    ``sampler_logps`` [b, M]), with ``logprob/mismatch`` added when ``sampler_logps`` is given.
    """
    s = settings(config, name)
    loss_fn = get_rl_loss(name)
    logps_of = logps_fn(
        graphdef,
        prompt_len=prompt_len,
        temperature=config.rollout.temperature,
        mesh=mesh,
        rules=config.mesh.rules,
        group_size=rollout_group_size(config),
    )

    def mb_loss(params, mb):
        logps = logps_of(params, mb["tokens"], mb["attn_mask"])
        loss, aux = loss_fn(logps, mb, s)
        return loss, {**aux, **_mismatch(logps, mb)}

    return mb_loss


def is_lora(config: ml_collections.ConfigDict) -> bool:
    """Whether the run trains LoRA adapters only (``model.lora.rank > 0``)."""
    return config.model.lora.rank > 0


def on_trainable(loss_fn, params: Any, lora: bool):
    """``(trainable, loss_fn of trainable)``: with LoRA the adapters and a loss that merges
    them with the frozen base weights (no gradient, no optimiser state for the base)."""
    if not lora:
        return params, loss_fn
    trainable, frozen = lora_lib.split_trainable(params, True)

    def fn(p, *args):
        return loss_fn(lora_lib.merge_trainable(p, frozen), *args)

    return trainable, fn


def _accumulating_update(
    mb_loss, tx: optax.GradientTransformation, k: int, *, both=False, lora=False
):
    """``(state, batch) -> (state, metrics)``: exact micro-batch accumulation, then ``tx``.

    ``both=True`` hands ``{"sft": g, "rl": g}`` to ``tx`` (a GAC chain: SFT warm-up steps of a
    hybrid run, where the mixed gradient is ``g`` whatever the weight). ``lora=True``
    differentiates the adapters only.
    """

    def update(state: TrainState, batch: Batch):
        mbs = _split_microbatches(batch, k)
        trainable, loss_fn = on_trainable(mb_loss, state.params, lora)
        acc = accumulate_grads(loss_fn, trainable, mbs, collect_stats=False)
        grads = {"sft": acc.grads, "rl": acc.grads} if both else acc.grads
        state, metrics = _apply(tx, state, grads, lora=lora)
        if both:
            metrics["grad/norm"] = optax.tree.norm(acc.grads)
        return state, {**acc.aux, **metrics, "loss": acc.loss}

    return update


def make_rl_update(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    *,
    mesh: Mesh,
    prompt_len: int,
    state_sharding: TrainState,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, Array]]]:
    """The jitted RL update ``(state, batch) -> (state, metrics)``; the state is donated.

    ``batch`` holds one update's B rows (whole groups), as :func:`rl_microbatch_loss` takes
    them with a leading [B] axis; it is split into ``train.micro_batches`` micro-batches.
    """
    mb_loss = rl_microbatch_loss(
        graphdef, config, name=config.algo.name, mesh=mesh, prompt_len=prompt_len
    )
    update = _accumulating_update(mb_loss, tx, config.train.micro_batches, lora=is_lora(config))
    return _jit_update(update, state_sharding, mesh)


def _jit_update(update, state_sharding: TrainState, mesh: Mesh):
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.jit(
        update,
        in_shardings=(state_sharding, None),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,),
    )


def sft_microbatch_loss(
    graphdef: nnx.GraphDef,
    *,
    prompt_len: int,
    weighting: str,
    mesh: Mesh,
    rules: Any,
) -> Callable[[Any, Batch], tuple[Array, dict]]:
    """``(params, mb) -> sft_loss`` on demonstration rows (``tokens``, ``attn_mask``,
    ``resp_mask``), teacher-forced at temperature 1."""

    logps_of = logps_fn(graphdef, prompt_len=prompt_len, temperature=1.0, mesh=mesh, rules=rules)

    def loss(params, mb):
        logps = logps_of(params, mb["tokens"], mb["attn_mask"])
        return losses.sft_loss(logps, mb["resp_mask"], weighting=weighting)

    return loss


def make_sft_update(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    *,
    mesh: Mesh,
    prompt_len: int,
    state_sharding: TrainState,
    weighting: str = "none",
):
    """The jitted SFT update on demonstrations (the ``sft`` algorithm and the warm-up; in a
    hybrid run the warm-up gradient is both GAC branches, so it is applied unmixed)."""
    mb_loss = sft_microbatch_loss(
        graphdef, prompt_len=prompt_len, weighting=weighting, mesh=mesh, rules=config.mesh.rules
    )
    both = config.algo.name == "hybrid"  # warm-up steps of a hybrid run go through GAC
    update = _accumulating_update(
        mb_loss, tx, config.train.micro_batches, both=both, lora=is_lora(config)
    )
    return _jit_update(update, state_sharding, mesh)


def make_dpo_update(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    *,
    mesh: Mesh,
    prompt_len: int,
    state_sharding: TrainState,
):
    """The jitted DPO update on preference pairs.

    ``batch``: ``chosen_tokens``, ``chosen_attn``, ``rejected_tokens``, ``rejected_attn``
    [B, T]; ``chosen_mask``, ``rejected_mask`` [B, M]; ``ref_chosen``, ``ref_rejected`` [B]
    (sequence log-probs under the reference).
    """
    k = config.train.micro_batches
    d = config.algo.dpo
    logps_of = logps_fn(
        graphdef, prompt_len=prompt_len, temperature=1.0, mesh=mesh, rules=config.mesh.rules
    )

    def seq_logps(params, tokens, attn, mask):
        return losses.sequence_logps(logps_of(params, tokens, attn), mask)

    def mb_loss(params, mb):
        chosen = seq_logps(params, mb["chosen_tokens"], mb["chosen_attn"], mb["chosen_mask"])
        rejected = seq_logps(
            params, mb["rejected_tokens"], mb["rejected_attn"], mb["rejected_mask"]
        )
        return losses.dpo_loss(
            chosen,
            rejected,
            mb["ref_chosen"],
            mb["ref_rejected"],
            beta=d.beta,
            loss_type=d.loss_type,
            label_smoothing=d.label_smoothing,
        )

    update = _accumulating_update(mb_loss, tx, k, lora=is_lora(config))
    return _jit_update(update, state_sharding, mesh)


def make_hybrid_update(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    *,
    mesh: Mesh,
    prompt_len: int,
    demo_prompt_len: int,
    state_sharding: TrainState,
):
    """The jitted hybrid SFT+RL update under GAC: ``(state, rl_batch, sft_batch)``.

    The RL branch is ``algo.hybrid.rl``'s loss on the rollout rows, the SFT branch
    ``sft_loss(weighting=algo.hybrid.sft_weighting)`` on the demonstrations; both are
    accumulated over ``train.micro_batches`` micro-batches and mixed by ``optim.gac`` with the
    ``gradient`` estimator's statistics (measured unless ``algo.gac.collect_stats`` is False).
    """
    k = config.train.micro_batches
    sft_loss = sft_microbatch_loss(
        graphdef,
        prompt_len=demo_prompt_len,
        weighting=config.algo.hybrid.sft_weighting,
        mesh=mesh,
        rules=config.mesh.rules,
    )
    rl_mb_loss = rl_microbatch_loss(
        graphdef, config, name=config.algo.hybrid.rl, mesh=mesh, prompt_len=prompt_len
    )

    lora = is_lora(config)

    def update(state: TrainState, rl_batch: Batch, sft_batch: Batch):
        rl_mbs = _split_microbatches(rl_batch, k)
        sft_mbs = _split_microbatches(sft_batch, k)
        trainable, sft_fn = on_trainable(sft_loss, state.params, lora)
        _, rl_fn = on_trainable(rl_mb_loss, state.params, lora)
        params, opt_state, metrics = hybrid_step(
            trainable,
            state.opt_state,
            sft_mbs,
            rl_mbs,
            sft_loss_fn=sft_fn,
            rl_loss_fn=rl_fn,
            tx=tx,
            collect_stats=config.algo.gac.collect_stats,
        )
        if lora:
            params = lora_lib.merge_trainable(params, lora_lib.base_state(state.params))
        metrics = {**metrics, "params/norm": optax.tree.norm(params)}
        return state.replace(params=params, opt_state=opt_state), metrics

    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.jit(
        update,
        in_shardings=(state_sharding, None, None),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,),
    )


def make_logps_fn(
    graphdef: nnx.GraphDef,
    config: ml_collections.ConfigDict,
    *,
    mesh: Mesh,
    prompt_len: int,
    temperature: float,
    param_sharding: Any,
    group_size: int = 1,
):
    """The jitted ``(params, tokens [B, T], attn_mask [B, T]) -> logps [B, M]`` used for the
    reference and pi_old log-probs (no gradient); ``group_size`` as in :func:`response_logps`
    (:func:`rollout_group_size` for rollout rows, 1 for demonstrations)."""
    fn = logps_fn(
        graphdef,
        prompt_len=prompt_len,
        temperature=temperature,
        mesh=mesh,
        rules=config.mesh.rules,
        group_size=group_size,
    )
    return jax.jit(
        lambda p, t, a: jax.lax.stop_gradient(fn(p, t, a)),
        in_shardings=(param_sharding, None, None),
    )


def make_update(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    *,
    mesh: Mesh,
    prompt_len: int,
    state_sharding: TrainState,
):
    """The jitted update of ``algo.name``: :func:`make_rl_update` for the RL losses,
    :func:`make_hybrid_update` (``(state, rl_batch, sft_batch)``) for ``hybrid``,
    :func:`make_dpo_update` for ``dpo`` and :func:`make_sft_update` for ``sft``."""
    kw = {"mesh": mesh, "prompt_len": prompt_len, "state_sharding": state_sharding}
    name = config.algo.name
    if name in RL_LOSSES:
        return make_rl_update(graphdef, tx, config, **kw)
    if name == "hybrid":
        return make_hybrid_update(graphdef, tx, config, demo_prompt_len=prompt_len, **kw)
    if name == "dpo":
        return make_dpo_update(graphdef, tx, config, **kw)
    if name == "sft":
        return make_sft_update(graphdef, tx, config, weighting=config.algo.sft.weighting, **kw)
    raise ValueError(
        f"config.algo.name={name!r} has no update; known: {sorted(RL_LOSSES)}, "
        "'hybrid', 'dpo', 'sft'."
    )
