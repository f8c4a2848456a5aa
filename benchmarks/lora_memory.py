"""Per-chip memory of one RL update, LoRA vs full fine-tuning, by ahead-of-time TPU compile.

Compiles the trainer's own jitted update (``giftjax.train.updates.make_rl_update``: micro-batched
GRPO with a KL to the initial model, AdamW, the donated TrainState) on this CPU machine for a
TPU topology through libtpu, with abstract inputs (no weights are materialised), and reports
the compiler's per-chip memory: the arguments (the TrainState and one update's batch), the
temporaries, and the peak ``arguments + temporaries + outputs - aliased`` (the donated state's
outputs reuse its buffers).

- Full fine-tuning: the state holds the policy, the reference copy (``algo.reference =
  "initial"``) and AdamW's two moments of every weight.
- LoRA (``--ranks``): the base weights, the adapters and AdamW's moments of the adapters; the
  reference is the base with the adapters off (no copy).

    python benchmarks/lora_memory.py --preset qwen2.5-7b --topology v5p:2x2x2 --ranks 0,16

Writes a markdown table to ``benchmarks/results/lora_memory.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax
import jax.numpy as jnp
from flax import nnx
from jax.experimental import topologies

from giftjax import sharding
from giftjax.models import Decoder, lora
from giftjax.models.presets import get_preset
from giftjax.train import config as config_lib
from giftjax.train import state as state_lib
from giftjax.train import updates as updates_lib

GIB = 2**30


def _config(args, rank: int):
    c = config_lib.base_config()
    c.model.preset = args.preset
    c.model.dtype = args.dtype
    c.model.remat = args.remat
    c.model.lora.rank = rank
    c.model.lora.alpha = 2.0 * max(rank, 1)
    c.mesh.rules = args.rules
    c.algo.name = "grpo"  # preset KL 0.04 to the initial model
    c.algo.reference = "initial"
    c.rollout.group_size = args.group
    c.rollout.prompts_per_step = args.rows // args.group
    c.rollout.max_new_tokens = args.response_len
    c.data.max_prompt_len = args.prompt_len
    c.train.micro_batches = args.micro_batches
    c.optim.learning_rate = 1e-5
    return c


def compile_update(args, rank: int, mesh) -> dict[str, float]:
    """Compiles the RL update of ``rank`` (0: full fine-tuning); returns its memory in GiB."""
    c = _config(args, rank)
    mcfg = get_preset(args.preset, dtype=args.dtype, remat=args.remat)
    targets = "q,k,v,o,gate,up,down"

    def build():
        model = Decoder(mcfg, rngs=nnx.Rngs(0))
        if rank:
            model, _ = lora.apply_lora(model, rank=rank, alpha=c.model.lora.alpha, targets=targets)
        return model

    model = nnx.eval_shape(build)  # abstract: no weights are materialised
    model.set_sharding(mesh, args.rules)
    graphdef, params = nnx.split(model)
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    tx = state_lib.make_optimizer(c, total_updates=1000)

    def make_state(p):
        trainable = lora.adapter_state(p) if rank else p
        return state_lib.TrainState(
            step=jnp.zeros((), jnp.int32),
            params=p,
            opt_state=tx.init(trainable),
            rng=jnp.zeros((2,), jnp.uint32),
            ref_params=None if rank else p,
        )

    abstract = jax.eval_shape(make_state, params)
    shardings = state_lib.state_shardings(abstract, mesh, args.rules)
    state = state_lib.abstract_state(abstract, shardings)
    ctx = updates_lib.UpdateContext.create(
        graphdef, tx, c, mesh=mesh, prompt_len=args.prompt_len, state_sharding=shardings
    )
    update = updates_lib.make_rl_update(ctx)
    b, t, m = args.rows, args.prompt_len + args.response_len, args.response_len
    rows2 = sharding.batch_sharding(2, mesh, args.rules)
    rows1 = sharding.batch_sharding(1, mesh, args.rules)
    batch = {
        "tokens": jax.ShapeDtypeStruct((b, t), jnp.int32, sharding=rows2),
        "attn_mask": jax.ShapeDtypeStruct((b, t), jnp.int32, sharding=rows2),
        "resp_mask": jax.ShapeDtypeStruct((b, m), jnp.float32, sharding=rows2),
        "rewards": jax.ShapeDtypeStruct((b,), jnp.float32, sharding=rows1),
        "advantages": jax.ShapeDtypeStruct((b,), jnp.float32, sharding=rows1),
        "ref_logps": jax.ShapeDtypeStruct((b, m), jnp.float32, sharding=rows2),
        "sampler_logps": jax.ShapeDtypeStruct((b, m), jnp.float32, sharding=rows2),
    }
    start = time.perf_counter()
    compiled = update.lower(state, batch).compile()
    seconds = time.perf_counter() - start
    mem = compiled.memory_analysis()
    args_b, out_b = mem.argument_size_in_bytes, mem.output_size_in_bytes
    temp_b, alias_b = mem.temp_size_in_bytes, mem.alias_size_in_bytes
    trainable = lora.adapter_state(params) if rank else params
    return {
        "trainable": sum(x.size for x in jax.tree.leaves(trainable)),
        "state": sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract)) / GIB,
        "args": args_b / GIB,
        "temp": temp_b / GIB,
        "peak": (args_b + temp_b + out_b - alias_b) / GIB,
        "compile_s": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="qwen2.5-7b")
    parser.add_argument("--topology", default="v5p:2x2x2")
    parser.add_argument("--mesh", default="1,-1,1", help="data,fsdp,tensor sizes")
    parser.add_argument("--rules", default="fsdp", choices=sorted(sharding.RULES))
    parser.add_argument("--ranks", default="0,16", help="LoRA ranks to compile (0: full)")
    parser.add_argument("--rows", type=int, default=64, help="rows of one update (P_u x G)")
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--micro-batches", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--response-len", type=int, default=768)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--remat", default="full")
    parser.add_argument("--out", default="benchmarks/results/lora_memory.md")
    args = parser.parse_args()

    devices = topologies.get_topology_desc(platform="tpu", topology_name=args.topology).devices
    mesh = sharding.make_mesh([int(s) for s in args.mesh.split(",")], devices=devices)
    rows = []
    for rank in (int(r) for r in args.ranks.split(",")):
        r = compile_update(args, rank, mesh)
        what = "full fine-tuning" if rank == 0 else f"LoRA r={rank} (q,k,v,o,gate,up,down)"
        rows.append(
            f"| {what} | {r['trainable'] / 1e6:,.1f} M | {r['state']:.1f} | {r['args']:.2f} | "
            f"{r['temp']:.2f} | **{r['peak']:.2f}** | {r['compile_s']:.0f} |"
        )
        print(rows[-1], flush=True)
    header = (
        f"# LoRA vs full update: per-chip memory ({args.preset}, {args.topology}, "
        f"{len(devices)} chips)\n\n"
        f"Written by `python benchmarks/lora_memory.py "
        f"{' '.join(sys.argv[1:])}`: an ahead-of-time compile through libtpu on a CPU host of "
        f"the trainer's GRPO update (KL 0.04 to the initial model, AdamW, float32 parameters, "
        f"{args.dtype} compute, remat={args.remat}), mesh {dict(mesh.shape)} with the "
        f"`{args.rules}` rules, {args.rows} rows of {args.prompt_len}+{args.response_len} "
        f"tokens in {args.micro_batches} micro-batches. Memory per chip in GiB as the compiler "
        f"reports it; peak = arguments + temporaries + outputs - aliased (the state is "
        f"donated). 'State' is the whole TrainState over all chips.\n\n"
        "| update | trainable | state (GiB, total) | arguments | temporaries | peak | "
        "compile (s) |\n|---|---|---|---|---|---|---|\n"
    )
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(header + "\n".join(rows) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
