"""The trainer's jitted programs on abstract values: shape checks and ahead-of-time compiles.

A run executes three kinds of device program per RL step, all on one mesh and one copy of
the weights (docs/development/architecture.md, "One RL step"):

- ``sampler``: ``giftjax.sampling.generate`` on the policy parameters, P prompts x G samples,
  a KV cache of ``data.max_prompt_len + rollout.max_new_tokens`` slots;
- ``logps``: the response log-probs of the P*G rollout rows under pi_old or the reference
  (only when the run plan has such a pass; for dpo the reference over the P pairs);
- ``train``: one optimiser update on P*G / updates_per_rollout rows, micro-batched.

`programs` builds each of them from the config alone: the parameters are
``jax.ShapeDtypeStruct`` leaves of the model preset's shapes (no weights are read or made),
placed with the shardings the Trainer gives them, and each program is the function the Trainer
jits (``updates.make_update``, ``logprobs.make_logps_fn``, ``sampling.generate``) with the
batch shapes and placements the loop hands it. Which programs exist and what their batches hold
comes from the same `giftjax.train.plan.RunPlan` the Trainer follows.
``jax.eval_shape(p.fn, *p.args)`` checks a recipe on any mesh; ``p.fn.lower(*p.args)
.compile()`` on a mesh of TPU topology devices gives the per-chip memory of a real run
(``giftjax.aot``).

Shape letters: P prompts, G samples, U updates per rollout, Tp prompt tokens, M new tokens,
Mr demonstration tokens.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from giftjax import sampling
from giftjax import sharding as sharding_lib
from giftjax.models import Decoder, ModelConfig, from_hf_dict
from giftjax.train import config as config_lib
from giftjax.train import state as state_lib
from giftjax.train.logprobs import make_logps_fn
from giftjax.train.plan import DEMO_KEYS, ROLLOUT_KEYS, RunPlan
from giftjax.train.rollout import sampler_settings
from giftjax.train.updates import UpdateContext, make_update

PROGRAMS = ("train", "logps", "sampler")


@dataclasses.dataclass(frozen=True)
class Program:
    """One jitted device program and abstract arguments to call, lower or eval_shape it with.

    Attributes:
      name: one of PROGRAMS.
      fn: the jitted function.
      args: ``jax.ShapeDtypeStruct`` pytrees with shardings (``fn(*args)``).
      resident: per-device bytes of the train state that live in device memory while ``fn``
        runs but are not among its arguments (the optimiser state while sampling).
    """

    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    resident: int


def abstract_model_config(config: ml_collections.ConfigDict) -> ModelConfig:
    """The ModelConfig the run trains: ``model.hf_path``'s config.json when that folder exists
    (what ``load_hf`` reads), else the preset's shapes, with the config's dtypes, remat and
    ``model.shape`` overrides."""
    path = os.path.join(config.model.hf_path, "config.json") if config.model.hf_path else ""
    if path and os.path.isfile(path):
        shape = {k: int(v) for k, v in config.model.shape.items() if v is not None}
        with open(path, encoding="utf-8") as f:
            return from_hf_dict(
                json.load(f),
                dtype=config.model.dtype,
                param_dtype=config.model.param_dtype,
                remat=config.model.remat,
                **shape,
            )
    return state_lib.model_config(config)


def _with_shardings(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def per_device_bytes(tree: Any) -> int:
    """Bytes one device holds of a pytree of sharded ``ShapeDtypeStruct`` (or arrays)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += int(jnp.dtype(x.dtype).itemsize) * math.prod(shape)
    return total


def abstract_run(
    config: ml_collections.ConfigDict, mesh: Mesh
) -> tuple[UpdateContext, state_lib.TrainState]:
    """The run's update context and abstract TrainState (sharded ShapeDtypeStructs).

    Returns:
      ``(ctx, state)``: the graphdef, optimiser, plan and state shardings as
      ``Trainer.__init__`` builds them (the reference copy kept as ``plan.keeps_reference``
      says). With LoRA (``model.lora.rank > 0``) the parameters hold the adapters, the
      optimiser state covers them alone and no reference copy is kept (the base is the
      reference).
    """
    mcfg = abstract_model_config(config)
    c = config
    plan = RunPlan.from_config(c, mesh.size)
    model = nnx.eval_shape(  # abstract: no weights are made
        lambda: state_lib.add_lora(Decoder(mcfg, rngs=nnx.Rngs(params=c.seed)), c)[0]
    )
    model.set_sharding(mesh, config.mesh.rules)
    tx = state_lib.make_optimizer(c, plan.total_updates)
    graphdef, params = nnx.split(model)
    # The Trainer's own init_state, traced: the same state tree, no arrays made.
    state = jax.eval_shape(
        lambda p: state_lib.init_state(
            nnx.merge(graphdef, p),
            tx,
            seed=c.seed,
            keep_reference=plan.keeps_reference,
            lora=plan.lora,
        )[1],
        params,
    )
    shardings = state_lib.state_shardings(state, mesh, c.mesh.rules)
    ctx = UpdateContext.create(graphdef, tx, c, mesh=mesh, state_sharding=shardings)
    return ctx, _with_shardings(state, shardings)


def _rows(shape: tuple[int, ...], dtype: Any, mesh: Mesh, rules: Any) -> jax.ShapeDtypeStruct:
    """A batch array [B, ...] with rows over the data axes (``sharding.shard_batch``)."""
    names = ("batch", "length", *([None] * (len(shape) - 2)))[: len(shape)]
    sh = sharding_lib.named_sharding(names, shape, mesh, rules, what=f"batch {shape}")
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sh)


# Shape and dtype of every batch key: T rollout rows (Tp + M), "demo" rows (Tp + Mr).
def _key_shapes(config: ml_collections.ConfigDict, rows: int) -> dict[str, tuple[tuple, Any]]:
    tp, m, mr = (
        config.data.max_prompt_len,
        config.rollout.max_new_tokens,
        config.data.max_response_len,
    )
    rollout = {
        "tokens": ((rows, tp + m), jnp.int32),
        "attn_mask": ((rows, tp + m), jnp.int32),
        "resp_mask": ((rows, m), jnp.float32),
        "rewards": ((rows,), jnp.float32),
        "advantages": ((rows,), jnp.float32),
        "sampler_logps": ((rows, m), jnp.float32),
        "old_logps": ((rows, m), jnp.float32),
        "ref_logps": ((rows, m), jnp.float32),
    }
    demo = {
        "tokens": ((rows, tp + mr), jnp.int32),
        "attn_mask": ((rows, tp + mr), jnp.int32),
        "resp_mask": ((rows, mr), jnp.float32),
    }
    pairs = {
        f"{side}_{k}": demo[v]
        for side in ("chosen", "rejected")
        for k, v in (("tokens", "tokens"), ("attn", "attn_mask"), ("mask", "resp_mask"))
    }
    pairs.update({"ref_chosen": ((rows,), jnp.float32), "ref_rejected": ((rows,), jnp.float32)})
    return {"rollout": rollout, "demo": demo, "pairs": pairs}


def abstract_batch(
    config: ml_collections.ConfigDict, mesh: Mesh, keys: tuple[str, ...], rows: int
) -> dict[str, Any]:
    """Abstract batch arrays of ``keys`` (one of ``plan.update_batches``), ``rows`` rows each,
    placed as ``sharding.shard_batch`` places them: rollout rows (tokens/attn_mask [rows,
    Tp+M] int32, resp_mask and log-probs [rows, M] float32, rewards/advantages [rows]),
    demonstrations ([rows, Tp+Mr]) or DPO pairs (chosen_*/rejected_*, ref_* [rows])."""
    rules = sharding_lib.get_rules(config.mesh.rules)
    shapes = _key_shapes(config, rows)
    kind = "pairs" if "chosen_tokens" in keys else "rollout" if "rewards" in keys else "demo"
    return {k: _rows(*shapes[kind][k], mesh, rules) for k in keys}


def _sampler_fn(graphdef: nnx.GraphDef, params: Any, config: ml_collections.ConfigDict, mesh, ids):
    """``fn(params, prompt_ids [R, Tp], prompt_mask [R, Tp], key) -> SampleOutput``: the
    computation ``sampling.generate`` runs with the rollout's settings, as
    ``rollout.sample_responses`` calls it (the model's EOS and pad ids stand in for the
    tokenizer's)."""
    r = config.rollout
    mcfg = abstract_model_config(config)
    fn, _ = sampling.generate_fn(
        nnx.merge(graphdef, params),
        ids,
        ids,
        max_new_tokens=r.max_new_tokens,
        num_samples=r.group_size,
        pad_id=mcfg.pad_token_id,
        mesh=mesh,
        rules=config.mesh.rules,
        **sampler_settings(config, r.temperature, eos_id=mcfg.eos_token_id),
    )
    return fn


def programs(
    config: ml_collections.ConfigDict, mesh: Mesh, *, only: tuple[str, ...] = PROGRAMS
) -> list[Program]:
    """The run's device programs on ``mesh``, each with abstract arguments.

    Args:
      config: a recipe (validated here for ``mesh.size`` devices).
      mesh: the run's mesh, e.g. ``sharding.make_mesh(config_lib.mesh_shape(config, n),
        devices=...)`` over CPU devices (eval_shape) or TPU topology devices (compile).
      only: which of PROGRAMS to build.

    Returns:
      The programs in PROGRAMS order, as the run plan has them: ``train`` is the plan's
      update (RL, hybrid SFT+RL, DPO or SFT); ``logps`` the first no-gradient log-prob pass
      of ``plan.logps_passes`` (pi_old or the reference over the rollout rows, DPO's
      reference over the pairs), left out when there is none; ``sampler`` the rollout's
      ``generate`` (rl and hybrid).
    """
    unknown = set(only) - set(PROGRAMS)
    if unknown:
        raise ValueError(f"only={only!r} names unknown programs {sorted(unknown)}; use {PROGRAMS}.")
    c = config
    config_lib.validate(c, num_devices=mesh.size)
    ctx, state = abstract_run(c, mesh)
    plan = ctx.plan
    tp = c.data.max_prompt_len
    opt_ref = per_device_bytes((state.opt_state, state.ref_params))
    out: list[Program] = []

    if "train" in only:
        batches = tuple(
            abstract_batch(c, mesh, keys, rows)
            for keys, rows in zip(plan.update_batches, plan.rows_per_update, strict=True)
        )
        out.append(Program("train", make_update(ctx), (state, *batches), 0))

    if "logps" in only and plan.logps_passes:
        # Rollout rows at the sampler's temperature, shared prompts (the Trainer's pi_old and
        # reference passes), or DPO's pair rows teacher-forced at temperature 1.
        rollout = plan.samples_rollouts
        fn = make_logps_fn(
            ctx.graphdef,
            c,
            mesh=mesh,
            prompt_len=tp,
            temperature=c.rollout.temperature if rollout else 1.0,
            param_sharding=ctx.state_sharding.params,
            group_size=plan.logps_group_size if rollout else 1,
        )
        rows = plan.prompts * plan.samples
        batch = abstract_batch(c, mesh, ROLLOUT_KEYS if rollout else DEMO_KEYS, rows)
        args = (state.params, batch["tokens"], batch["attn_mask"])
        out.append(Program("logps", fn, args, opt_ref))

    if "sampler" in only and plan.samples_rollouts:
        replicated = NamedSharding(mesh, PartitionSpec())
        ids = jax.ShapeDtypeStruct((plan.sampled_prompt_rows, tp), jnp.int32, sharding=replicated)
        key = jax.eval_shape(lambda: jax.random.key(0))
        key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=replicated)
        fn = jax.jit(_sampler_fn(ctx.graphdef, state.params, c, mesh, ids))
        out.append(Program("sampler", fn, (state.params, ids, ids, key), opt_ref))
    return out


def kv_cache_bytes(config: ml_collections.ConfigDict, mesh: Mesh) -> int:
    """Per-device bytes of the sampler's KV cache: keys and values [L, P*G, Tp+M, K, H] in the
    compute dtype, sharded like activations (``kv_cache.CACHE_AXES``)."""
    mcfg = abstract_model_config(config)
    r = config.rollout
    ways = sharding_lib.data_ways(mesh)
    rows = sharding_lib.sampled_prompts(r.prompts_per_step, r.group_size, ways) * r.group_size
    slots = config.data.max_prompt_len + r.max_new_tokens
    shape = (mcfg.num_layers, rows, slots, mcfg.num_kv_heads, mcfg.head_dim)
    names = ("layers", "batch", "length", "kv_heads", "head_dim")
    sh = sharding_lib.named_sharding(names, shape, mesh, config.mesh.rules, what="KV cache")
    one = jax.ShapeDtypeStruct(shape, jnp.dtype(mcfg.dtype), sharding=sh)
    return 2 * per_device_bytes(one)
