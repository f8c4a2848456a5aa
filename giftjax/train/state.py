"""The train state pytree, the model it belongs to, and the optimiser that updates it.

``TrainState`` holds everything a run needs to continue exactly where it stopped: the number
of completed steps, the policy parameters, the optimiser state (GAC's state inside for
hybrid runs), the run's base PRNG key, and, when ``algo.reference == "initial"``, a frozen
copy of the starting parameters.

With LoRA (``model.lora.rank > 0``) the parameters are the frozen base weights plus the
adapters (``nnx.LoRAParam``); the optimiser state covers the adapters only, and the initial
model is the base with the adapters off, so no reference copy is kept.

The model's structure (an NNX graphdef) is static and is rebuilt from the config, never
stored.

Randomness: step ``s`` draws with ``fold_in(rng, s)``; nothing host-random enters a run, so a
resumed run repeats an uninterrupted one bit for bit.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from giftjax import models, optim
from giftjax import sharding as sharding_lib
from giftjax.models.presets import PRESETS
from giftjax.train.config import ConfigError
from giftjax.train.plan import PLAN_ROWS


@flax.struct.dataclass
class TrainState:
    """What a checkpoint holds (a pytree; the graphdef is static and lives outside).

    Attributes:
      step: () int32, completed steps (SFT warm-up steps included).
      params: the policy's ``nnx.State`` (every leaf an array in ``model.param_dtype``).
      opt_state: the optax state of ``params``.
      rng: the run's base PRNG key data, [2] uint32 (``jax.random.key_data``).
      ref_params: the frozen reference parameters (``algo.reference == "initial"``, dpo): the
        initial parameters, replaced by the policy at the end of the SFT warm-up; else None.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    ref_params: Any = None


def model_config(config: ml_collections.ConfigDict, vocab_size: int | None = None):
    """The ModelConfig of ``config.model`` (a preset, with dtypes, remat and vocabulary)."""
    m = config.model
    if m.preset not in PRESETS:
        raise ValueError(
            f"config.model.preset={m.preset!r} is unknown; known presets: {sorted(PRESETS)} "
            "(or set config.model.hf_path to a local checkpoint)."
        )
    base = PRESETS[m.preset]
    vocab = m.vocab_size or vocab_size or base.vocab_size
    shape = {k: int(v) for k, v in m.shape.items() if v is not None}
    return dataclasses.replace(
        base,
        vocab_size=int(vocab),
        dtype=m.dtype,
        param_dtype=m.param_dtype,
        remat=m.remat,
        **shape,
    )


def build_model(
    config: ml_collections.ConfigDict, mesh: Mesh, *, vocab_size: int | None = None
) -> nnx.Module:
    """The policy on ``mesh``: loaded from ``model.hf_path`` or initialised from ``seed``."""
    rules = config.mesh.rules
    if config.model.hf_path:
        path = config.model.hf_path
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ConfigError(
                f"config.model.hf_path={path!r} holds no config.json: give a local Hugging Face "
                "checkpoint folder (`python -m giftjax.export` writes one from a giftjax run)."
            )
        return models.load_hf(
            config.model.hf_path,
            dtype=jnp.dtype(config.model.dtype),
            param_dtype=jnp.dtype(config.model.param_dtype),
            mesh=mesh,
            rules=rules,
            remat=config.model.remat,  # the checkpoint's config.json knows no remat policy
        )
    mcfg = model_config(config, vocab_size)
    model = models.Decoder(mcfg, rngs=nnx.Rngs(params=config.seed))
    return sharding_lib.shard_params(model, mesh, rules)


def add_lora(
    model: nnx.Module, config: ml_collections.ConfigDict, mesh: Mesh | None = None
) -> tuple[nnx.Module, nnx.GraphDef | None]:
    """The run's ``model.lora`` settings and seed applied to ``model``: ``(model with adapters,
    base graphdef)`` (the graphdef of the base, adapters off), placed on ``mesh`` when given;
    ``(model, None)`` when ``model.lora.rank == 0``."""
    lc = config.model.lora
    if lc.rank == 0:
        return model, None
    lora_model, base_graphdef = models.lora.apply_lora(
        model,
        rank=lc.rank,
        alpha=lc.alpha,
        targets=lc.targets,
        seed=config.seed,
        train_norms=lc.train_norms,
    )
    if mesh is not None:
        lora_model = sharding_lib.shard_params(lora_model, mesh, config.mesh.rules)
    return lora_model, base_graphdef


def load_tokenizer(config: ml_collections.ConfigDict) -> Any:
    """The run's tokenizer; it must have a pad token and an EOS token."""
    name = config.model.tokenizer or config.model.hf_path
    if name == "synthetic":
        from giftjax import data as data_lib  # grain, tokenizers: seconds to import

        tok = data_lib.build_tokenizer()
    else:
        if not os.path.isdir(name):
            raise ValueError(
                f"config.model.tokenizer={name!r} is not a folder; give a local tokenizer "
                "folder (or 'synthetic' for the synthetic task's tokenizer)."
            )
        tok = models.load_tokenizer(name)
    if tok.pad_token_id is None:
        raise ValueError(
            f"the tokenizer {name!r} has no pad token: set one (e.g. "
            "tokenizer.pad_token = tokenizer.eos_token, then save_pretrained) and point "
            "config.model.tokenizer at the saved folder."
        )
    if tok.eos_token_id is None:
        raise ValueError(f"the tokenizer {name!r} has no EOS token; responses could never end.")
    return tok


def learning_rate_schedule(config: ml_collections.ConfigDict, total_updates: int):
    """``optim.learning_rate`` with linear warm-up then constant, cosine or linear decay."""
    o = config.optim
    lr, warm = o.learning_rate, o.warmup_steps
    decay_steps = max(total_updates - warm, 1)
    if o.schedule == "constant":
        main = optax.constant_schedule(lr)
    elif o.schedule == "cosine":
        main = optax.cosine_decay_schedule(lr, decay_steps)
    else:
        main = optax.linear_schedule(lr, 0.0, decay_steps)
    if not warm:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), main], [warm])


def make_optimizer(
    config: ml_collections.ConfigDict, total_updates: int
) -> optax.GradientTransformation:
    """AdamW after global-norm clipping; hybrid runs put GAC first (it takes both gradients)."""
    o = config.optim
    parts = []
    if PLAN_ROWS[config.algo.name][0] == "hybrid":  # GAC takes both gradients
        g = config.algo.gac
        prior = optim.chord_prior(
            warmup=g.prior_warmup, decay=g.prior_decay, peak=g.prior_peak, valley=g.prior_valley
        )
        parts.append(
            optim.gac(
                alpha=g.alpha,
                prior=prior,
                blend=g.blend,
                ema=g.ema,
                refresh_every=g.refresh_every,
                max_step=g.max_step,
                init=g.init,
                smoothing=g.smoothing,
                estimator=g.estimator,
                mode=g.mode,
            )
        )
    if o.clip_norm:
        parts.append(optax.clip_by_global_norm(o.clip_norm))
    schedule = learning_rate_schedule(config, total_updates)
    parts.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay))
    return optax.chain(*parts)


def init_state(
    model: nnx.Module,
    tx: optax.GradientTransformation,
    *,
    seed: int,
    keep_reference: bool,
    lora: bool = False,
) -> tuple[nnx.GraphDef, TrainState]:
    """The graphdef of ``model`` and a fresh TrainState (arrays where the model's are); with
    ``lora`` the optimiser state is for the adapters only."""
    graphdef, params = nnx.split(model)
    trainable, _ = models.lora.split_trainable(params, lora)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(trainable),
        rng=jax.random.key_data(jax.random.key(seed)),
        ref_params=jax.tree.map(jnp.copy, params) if keep_reference else None,
    )
    return graphdef, state


def state_shardings(state: TrainState, mesh: Mesh, rules: str) -> TrainState:
    """NamedShardings for every leaf of ``state``: parameters (and the reference, and every
    optimiser moment shaped like them) by their logical names, everything else replicated."""
    rules = sharding_lib.get_rules(rules)
    param_sh = sharding_lib.param_shardings(state.params, mesh, rules)
    replicated = NamedSharding(mesh, PartitionSpec())
    by_shape: dict[tuple, NamedSharding] = {}
    for leaf, sh in zip(jax.tree.leaves(state.params), jax.tree.leaves(param_sh), strict=True):
        by_shape.setdefault((leaf.shape, str(leaf.dtype)), sh)

    def like_params(x):
        # Optimiser moments mirror the parameters; match them by shape (ambiguity between two
        # parameters of one shape is harmless: they carry the same logical axes here or both
        # shardings divide the shape, which `named_sharding` checked).
        for (shape, _), sh in by_shape.items():
            if getattr(x, "shape", None) == shape:
                return sh
        return replicated

    return TrainState(
        step=replicated,
        params=param_sh,
        opt_state=jax.tree.map(like_params, state.opt_state),
        rng=replicated,
        ref_params=param_sh if state.ref_params is not None else None,
    )


def abstract_state(state: TrainState, shardings: TrainState) -> TrainState:
    """ShapeDtypeStructs with shardings: what a checkpoint restore is asked for."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
    )


def num_params(params: Any) -> int:
    """Number of parameters in a params tree."""
    return sum(int(x.size) for x in jax.tree.leaves(params))
