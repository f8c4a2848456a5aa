"""The trainer's jitted programs on abstract values: shape checks and ahead-of-time compiles.

A run executes three kinds of device program per RL step, all on one mesh and one copy of
the weights (docs/architecture.md, "One RL step"):

- ``sampler``: ``giftjax.sampling.generate`` on the policy parameters, P prompts x G samples,
  a KV cache of ``data.max_prompt_len + rollout.max_new_tokens`` slots;
- ``logps``: the response log-probs of the P*G rollout rows under pi_old or the reference
  (only when the algorithm needs them);
- ``train``: one optimiser update on P*G / updates_per_rollout rows, micro-batched.

:func:`programs` builds each of them from the config alone: the parameters are
``jax.ShapeDtypeStruct`` leaves of the model preset's shapes (no weights are read or made),
placed with the shardings the Trainer gives them, and each program is the function the Trainer
jits (``step.make_update``, ``step.make_logps_fn``, ``sampling.generate``) with the batch
shapes and placements the loop hands it. ``jax.eval_shape(p.fn, *p.args)`` checks a recipe on
any mesh; ``p.fn.lower(*p.args).compile()`` on a mesh of TPU topology devices gives the
per-chip memory of a real run (``giftjax.aot``).

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
from giftjax.train import step as step_lib

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


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
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


def abstract_state(
    config: ml_collections.ConfigDict, mesh: Mesh
) -> tuple[nnx.GraphDef, Any, state_lib.TrainState, state_lib.TrainState]:
    """The run's graphdef, optimiser and abstract TrainState (sharded ShapeDtypeStructs).

    Returns:
      ``(graphdef, tx, state, state_sharding)``, as ``Trainer.__init__`` builds them (the
      reference parameters are kept when ``algo.reference == "initial"`` or for dpo). With
      LoRA (``model.lora.rank > 0``) the parameters hold the adapters, the optimiser state
      covers them alone and no reference copy is kept (the base is the reference).
    """
    mcfg = model_config(config)
    c = config
    lora = step_lib.is_lora(c)

    def build() -> Decoder:
        model = Decoder(mcfg, rngs=nnx.Rngs(params=c.seed))
        if lora:
            model, _ = state_lib.add_lora(model, c)
        return model

    model = nnx.eval_shape(build)  # abstract: no weights are made
    model.set_sharding(mesh, config.mesh.rules)
    warmup = c.train.warmup_sft_steps
    per_step = c.train.updates_per_rollout if c.algo.name in config_lib.RL_ALGOS else 1
    tx = state_lib.make_optimizer(c, warmup + c.train.steps * per_step)
    graphdef, params = nnx.split(model)
    # The Trainer's own init_state, traced: the same state tree, no arrays made.
    state = jax.eval_shape(
        lambda p: state_lib.init_state(
            nnx.merge(graphdef, p),
            tx,
            seed=c.seed,
            keep_reference=state_lib.keeps_reference(c),
            lora=lora,
        )[1],
        params,
    )
    shardings = state_lib.state_shardings(state, mesh, c.mesh.rules)
    return graphdef, tx, _with_shardings(state, shardings), shardings


def _rows(shape: tuple[int, ...], dtype: Any, mesh: Mesh, rules: Any) -> jax.ShapeDtypeStruct:
    """A batch array [B, ...] with rows over the data axes (``sharding.shard_batch``)."""
    names = ("batch", "length", *([None] * (len(shape) - 2)))[: len(shape)]
    sh = sharding_lib.named_sharding(names, shape, mesh, rules, what=f"batch {shape}")
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sh)


def rl_batch_keys(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The keys of one RL update's batch, as ``Trainer._rl_step`` fills them."""
    c = config
    name = c.algo.name
    rl_name = c.algo.hybrid.rl if name == "hybrid" else name
    needs_old = c.train.updates_per_rollout > 1 and rl_name in step_lib.RL_LOSSES
    needs_ref = c.algo.reference == "initial" and (
        rl_name == "gift" or step_lib.uses_kl(c, rl_name)
    )
    keys = ["tokens", "attn_mask", "resp_mask", "rewards", "sampler_logps"]
    if rl_name in step_lib.losses.grpo.GRPO_PRESETS:
        keys.append("advantages")
    if needs_old:
        keys.append("old_logps")
    if needs_ref or (needs_old and (rl_name == "gift" or step_lib.uses_kl(c, rl_name))):
        keys.append("ref_logps")
    return tuple(keys)


def rl_batch(config: ml_collections.ConfigDict, mesh: Mesh, rows: int) -> dict[str, Any]:
    """Abstract rollout rows: tokens/attn_mask [rows, Tp+M] int32, resp_mask and the
    log-probs [rows, M] float32, rewards/advantages [rows] float32."""
    tp, m = config.data.max_prompt_len, config.rollout.max_new_tokens
    rules = sharding_lib.get_rules(config.mesh.rules)
    shapes = {
        "tokens": ((rows, tp + m), jnp.int32),
        "attn_mask": ((rows, tp + m), jnp.int32),
        "resp_mask": ((rows, m), jnp.float32),
        "rewards": ((rows,), jnp.float32),
        "advantages": ((rows,), jnp.float32),
        "sampler_logps": ((rows, m), jnp.float32),
        "old_logps": ((rows, m), jnp.float32),
        "ref_logps": ((rows, m), jnp.float32),
    }
    return {k: _rows(*shapes[k], mesh, rules) for k in rl_batch_keys(config)}


def demo_batch(config: ml_collections.ConfigDict, mesh: Mesh, rows: int) -> dict[str, Any]:
    """Abstract demonstration rows (``rollout.demonstration_batch``): tokens/attn_mask
    [rows, Tp+Mr] int32, resp_mask [rows, Mr] float32."""
    tp, mr = config.data.max_prompt_len, config.data.max_response_len
    rules = sharding_lib.get_rules(config.mesh.rules)
    return {
        "tokens": _rows((rows, tp + mr), jnp.int32, mesh, rules),
        "attn_mask": _rows((rows, tp + mr), jnp.int32, mesh, rules),
        "resp_mask": _rows((rows, mr), jnp.float32, mesh, rules),
    }


def _sampler_fn(graphdef: nnx.GraphDef, params: Any, config: ml_collections.ConfigDict, mesh, ids):
    """``fn(params, prompt_ids [R, Tp], prompt_mask [R, Tp], key) -> SampleOutput``: the
    computation ``sampling.generate`` runs with the rollout's settings, as
    ``rollout.sample_responses`` calls it (the model's EOS and pad ids stand in for the
    tokenizer's)."""
    r = config.rollout
    mcfg = model_config(config)
    fn, _ = sampling.generate_fn(
        nnx.merge(graphdef, params),
        ids,
        ids,
        max_new_tokens=r.max_new_tokens,
        temperature=r.temperature,
        top_p=r.top_p if r.temperature else 1.0,
        top_k=r.top_k if r.temperature else 0,
        num_samples=r.group_size,
        eos_id=mcfg.eos_token_id if r.stop_at_eos else None,
        pad_id=mcfg.pad_token_id,
        mesh=mesh,
        rules=config.mesh.rules,
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
      only: which of PROGRAMS to build (``logps`` is left out when the algorithm has no
        reference or pi_old pass).

    Returns:
      The programs in PROGRAMS order. ``train`` is the RL update of an RL algorithm (its
      hybrid SFT+RL update for ``hybrid``), else the SFT or DPO update.
    """
    unknown = set(only) - set(PROGRAMS)
    if unknown:
        raise ValueError(f"only={only!r} names unknown programs {sorted(unknown)}; use {PROGRAMS}.")
    c = config
    config_lib.validate(c, num_devices=mesh.size)
    graphdef, tx, state, state_sharding = abstract_state(c, mesh)
    tp = c.data.max_prompt_len
    p, g, u = c.rollout.prompts_per_step, c.rollout.group_size, c.train.updates_per_rollout
    rl = c.algo.name in config_lib.RL_ALGOS
    opt_ref = per_device_bytes((state.opt_state, state.ref_params))
    out: list[Program] = []

    if "train" in only:
        update = step_lib.make_update(
            graphdef, tx, c, mesh=mesh, prompt_len=tp, state_sharding=state_sharding
        )
        if c.algo.name == "hybrid":
            args = (state, rl_batch(c, mesh, p * g // u), demo_batch(c, mesh, p // u))
        elif rl:
            args = (state, rl_batch(c, mesh, p * g // u))
        elif c.algo.name == "dpo":
            demo = demo_batch(c, mesh, p)
            seq = _rows((p,), jnp.float32, mesh, sharding_lib.get_rules(c.mesh.rules))
            args = (
                state,
                {
                    **{f"chosen_{k}": demo[v] for k, v in _DPO_FIELDS},
                    **{f"rejected_{k}": demo[v] for k, v in _DPO_FIELDS},
                    "ref_chosen": seq,
                    "ref_rejected": seq,
                },
            )
        else:
            args = (state, demo_batch(c, mesh, p))
        out.append(Program("train", update, args, 0))

    if "logps" in only and rl and {"old_logps", "ref_logps"} & set(rl_batch_keys(c)):
        fn = step_lib.make_logps_fn(
            graphdef,
            c,
            mesh=mesh,
            prompt_len=tp,
            temperature=c.rollout.temperature,
            param_sharding=state_sharding.params,
            group_size=step_lib.rollout_group_size(c),  # as the Trainer's pi_old pass
        )
        batch = rl_batch(c, mesh, p * g)
        args = (state.params, batch["tokens"], batch["attn_mask"])
        out.append(Program("logps", fn, args, opt_ref))

    if "sampler" in only and rl:
        ways = mesh.shape["data"] * mesh.shape["fsdp"]
        prompts = -(-p // ways) * ways if (p * g) % ways else p  # sample_responses' padding
        replicated = NamedSharding(mesh, PartitionSpec())
        ids = jax.ShapeDtypeStruct((prompts, tp), jnp.int32, sharding=replicated)
        key = jax.eval_shape(lambda: jax.random.key(0))
        key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=replicated)
        fn = jax.jit(_sampler_fn(graphdef, state.params, c, mesh, ids))
        out.append(Program("sampler", fn, (state.params, ids, ids, key), opt_ref))
    return out


_DPO_FIELDS = (("tokens", "tokens"), ("attn", "attn_mask"), ("mask", "resp_mask"))


def kv_cache_bytes(config: ml_collections.ConfigDict, mesh: Mesh) -> int:
    """Per-device bytes of the sampler's KV cache: keys and values [L, P*G, Tp+M, K, H] in the
    compute dtype, sharded like activations (``kv_cache.CACHE_AXES``)."""
    mcfg = model_config(config)
    r = config.rollout
    ways = mesh.shape["data"] * mesh.shape["fsdp"]
    p = r.prompts_per_step
    rows = (-(-p // ways) * ways if (p * r.group_size) % ways else p) * r.group_size
    slots = config.data.max_prompt_len + r.max_new_tokens
    shape = (mcfg.num_layers, rows, slots, mcfg.num_kv_heads, mcfg.head_dim)
    names = ("layers", "batch", "length", "kv_heads", "head_dim")
    sh = sharding_lib.named_sharding(names, shape, mesh, config.mesh.rules, what="KV cache")
    one = jax.ShapeDtypeStruct(shape, jnp.dtype(mcfg.dtype), sharding=sh)
    return 2 * per_device_bytes(one)
