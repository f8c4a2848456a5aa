"""Ahead-of-time TPU compile of one training step (forward + backward) of a model preset.

Compiles on this CPU machine for a TPU topology through libtpu (docs/architecture.md,
section 5), with the parameters sharded by the logical rules, and prints the per-device memory
the compiler reports, to check that a production config fits HBM before launching a pod.

    python benchmarks/model_tpu_aot.py --preset qwen2.5-7b --topology v5p:2x2x2 \
        --rules fsdp --batch 16 --length 1024
"""

import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")

import jax
import jax.numpy as jnp
from flax import nnx
from jax.experimental import topologies

from giftjax import sharding
from giftjax.models import Decoder
from giftjax.models.presets import get_preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="qwen2.5-7b")
    parser.add_argument("--topology", default="v5p:2x2x2")
    parser.add_argument("--rules", default="fsdp", choices=sorted(sharding.RULES))
    parser.add_argument("--mesh", default="1,-1,1", help="data,fsdp,tensor sizes")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--remat", default="full")
    args = parser.parse_args()

    devices = topologies.get_topology_desc(platform="tpu", topology_name=args.topology).devices
    mesh = sharding.make_mesh([int(s) for s in args.mesh.split(",")], devices=devices)
    abstract = nnx.eval_shape(
        lambda: Decoder(get_preset(args.preset, remat=args.remat), rngs=nnx.Rngs(0))
    )
    abstract.set_sharding(mesh, args.rules)
    graphdef, state = nnx.split(abstract)
    shardings = sharding.param_shardings(state, mesh, args.rules)
    state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
    )
    tokens = jax.ShapeDtypeStruct(
        (args.batch, args.length), jnp.int32, sharding=sharding.batch_sharding(2, mesh, args.rules)
    )

    def loss(state, tokens, mask):
        logits = nnx.merge(graphdef, state)(tokens, mask)  # [B, T, V] float32
        logp = jax.nn.log_softmax(logits[:, :-1])
        target = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
        return -jnp.sum(target * mask[:, 1:]) / jnp.sum(mask[:, 1:])

    step = jax.jit(jax.value_and_grad(loss), out_shardings=(None, shardings))
    start = time.perf_counter()
    compiled = step.lower(state, tokens, tokens).compile()
    seconds = time.perf_counter() - start
    mem = compiled.memory_analysis()
    gib = 2**30
    print(
        f"| {args.preset} | {args.topology} ({len(devices)} chips) | {args.rules} "
        f"{dict(mesh.shape)} | B={args.batch} T={args.length} remat={args.remat} "
        f"| args {mem.argument_size_in_bytes / gib:.2f} GiB | out "
        f"{mem.output_size_in_bytes / gib:.2f} GiB | temp {mem.temp_size_in_bytes / gib:.2f} GiB "
        f"| compile {seconds:.0f} s |"
    )


if __name__ == "__main__":
    main()
