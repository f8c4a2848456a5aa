"""Memory and time of per-token log-probs: naive vs the fused xla and pallas kernels.

1. Compiled temporary memory of fwd+bwd (``memory_analysis().temp_size_in_bytes``) at
   N=16384 tokens, D=3584, V=152064 (Qwen2.5-7B's LM head), bf16, compiled ahead of
   time for ONE TPU v5p chip through libtpu (no TPU needed). Measured on the TPU
   compile, not the CPU one: the CPU backend upcasts bf16 matmul operands to f32 and
   so shows an f32 copy of the LM head that a TPU never makes.
2. CPU wall time of fwd+bwd, xla vs naive, at N=4096, D=512, V=32768 in float32:
   both compiled once, then run interleaved (naive, xla, naive, xla, ...) in this
   one process, and the ratio of medians reported, so that load from other
   processes on the machine hits both alike.

naive = ``log_softmax(hidden @ W)`` (float32 logits) then ``take_along_axis``.

Usage: ``python benchmarks/logprobs.py [--repeats 15] [--out benchmarks/results/logprobs.md]``
"""

from __future__ import annotations

import os

# Before jax is imported: CPU execution, TPU topologies for AOT compiles only.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
# libtpu takes a machine-wide lock file; AOT compiles need no exclusive TPU access.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import argparse
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from giftjax import kernels
from giftjax.kernels._matmul import dot_f32

MIB = 2**20


def naive_logprobs(hidden, lm_head, targets):
    """``[BT, V]`` float32 logits, ``log_softmax``, then the target column."""
    logits = dot_f32(hidden, lm_head, (1, 0))  # [BT, V]
    logp_all = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(logp_all, targets[:, None], axis=-1)[:, 0]


def logsumexp_logprobs(hidden, lm_head, targets):
    """The plain formula ``z_t - logsumexp(z)`` on ``[BT, V]`` float32 logits."""
    logits = dot_f32(hidden, lm_head, (1, 0))  # [BT, V]
    target = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
    return target - jax.nn.logsumexp(logits, axis=-1)


def fused(impl):
    return lambda h, w, t: kernels.token_logprobs(h, w, t, impl=impl)


IMPLS = {"naive": naive_logprobs, "xla": fused("xla"), "pallas": fused("pallas")}


def fwd_bwd(logprobs_fn):
    """``(loss, (d hidden, d lm_head))`` of ``sum(weights * logp)``."""

    def loss(h, w, t, weights):
        return jnp.sum(weights * logprobs_fn(h, w, t))

    return jax.value_and_grad(loss, argnums=(0, 1))


def tpu_memory(n=16384, d=3584, v=152064, topology="v5p:2x2x1"):
    """Temporary bytes of the fwd+bwd compile for one chip of ``topology``, per impl."""
    from jax.experimental import topologies
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    device = topologies.get_topology_desc(platform="tpu", topology_name=topology).devices[0]
    one_chip = NamedSharding(Mesh(np.array([device]), ("x",)), P())
    args = [
        jax.ShapeDtypeStruct((n, d), jnp.bfloat16, sharding=one_chip),
        jax.ShapeDtypeStruct((d, v), jnp.bfloat16, sharding=one_chip),
        jax.ShapeDtypeStruct((n,), jnp.int32, sharding=one_chip),
        jax.ShapeDtypeStruct((n,), jnp.float32, sharding=one_chip),
    ]
    runs = {
        "naive": fwd_bwd(naive_logprobs),
        "naive, z_t - logsumexp(z)": fwd_bwd(logsumexp_logprobs),
        "xla": fwd_bwd(IMPLS["xla"]),
        "pallas": fwd_bwd(IMPLS["pallas"]),
    }
    out = {}
    for name, fn in runs.items():
        compiled = jax.jit(fn).lower(*args).compile()
        out[name] = compiled.memory_analysis().temp_size_in_bytes
        print(f"  {name:22s} temp {out[name] / MIB:10.1f} MiB", flush=True)
    return out


def cpu_time(n=4096, d=512, v=32768, repeats=15):
    """Median fwd+bwd seconds of naive and xla, runs interleaved: (wall, process CPU)."""
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
    w = jnp.asarray(0.05 * rng.normal(size=(d, v)), jnp.float32)
    t = jnp.asarray(rng.integers(0, v, size=(n,)), jnp.int32)
    weights = jnp.asarray(rng.normal(size=(n,)), jnp.float32)
    fns = {name: jax.jit(fwd_bwd(IMPLS[name])) for name in ("naive", "xla")}
    for fn in fns.values():  # compile and warm up
        jax.block_until_ready(fn(h, w, t, weights))
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            jax.block_until_ready(fn(h, w, t, weights))
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    median = lambda d: {name: statistics.median(ts) for name, ts in d.items()}
    return median(wall), median(cpu)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", default="benchmarks/results/logprobs.md")
    args = parser.parse_args()

    print("TPU v5p (one chip) AOT compile, fwd+bwd, N=16384 D=3584 V=152064 bf16:")
    mem = tpu_memory()
    floor = 16384 * 3584 * 4  # one f32 [BT, D] accumulator: the hidden gradient
    print("CPU fwd+bwd, N=4096 D=512 V=32768 f32, interleaved medians:")
    load_before = os.getloadavg()[0]
    secs, cpu_secs = cpu_time(repeats=args.repeats)
    load_after = os.getloadavg()[0]
    ratio = secs["xla"] / secs["naive"]
    cpu_ratio = cpu_secs["xla"] / cpu_secs["naive"]
    print(f"  wall: naive {secs['naive']:.3f} s, xla {secs['xla']:.3f} s, xla/naive {ratio:.2f}")
    print(f"  cpu:  naive {cpu_secs['naive']:.3f} s, xla {cpu_secs['xla']:.3f} s, {cpu_ratio:.2f}")

    lines = [
        "# Per-token log-probs: memory and time",
        "",
        "Written by `benchmarks/logprobs.py` (jax " + jax.__version__ + ").",
        "",
        "## TPU v5p, one chip (ahead-of-time compile through libtpu), fwd+bwd",
        "",
        "N=16384 tokens, D=3584, V=152064, bf16 inputs; loss `sum(weights * logp)` with a",
        "per-token weight input (as in an RL loss). `naive` is `log_softmax` then",
        "`take_along_axis`; the second naive row writes the same formula as",
        "`z_t - logsumexp(z)`, for which XLA keeps one [BT, V] f32 buffer instead of two",
        "(the smaller, conservative baseline).",
        "Temporary memory of the compiled executable (`memory_analysis().temp_size_in_bytes`);",
        "the outputs (d hidden, d lm_head) are not temporaries. Floor: one f32 [BT, D]",
        f'hidden-gradient accumulator = {floor / MIB:.0f} MiB. "smallest naive / this" divides',
        "the smaller naive figure by the row's.",
        "",
        "| implementation | temp memory (MiB) | smallest naive / this | this / floor |",
        "|---|---:|---:|---:|",
    ]
    smallest_naive = min(mem["naive"], mem["naive, z_t - logsumexp(z)"])
    for name, b in mem.items():
        lines.append(
            f"| {name} | {b / MIB:.1f} | {smallest_naive / max(b, 1):.1f}x | {b / floor:.3f} |"
        )
    lines += [
        "",
        "## CPU, fwd+bwd wall time",
        "",
        f"N=4096, D=512, V=32768, float32; medians of {args.repeats} interleaved runs in one "
        f"process on {os.cpu_count()} cores shared with other jobs (1-minute load average "
        f"{load_before:.1f} before, {load_after:.1f} after). Wall time is what the acceptance",
        "names; the process CPU time (both cores' busy time) is steadier when the machine",
        "is loaded.",
        "",
        "| implementation | median wall (s) | wall / naive | median CPU (s) | CPU / naive |",
        "|---|---:|---:|---:|---:|",
        f"| naive | {secs['naive']:.3f} | 1.00 | {cpu_secs['naive']:.3f} | 1.00 |",
        f"| xla | {secs['xla']:.3f} | {ratio:.2f} | {cpu_secs['xla']:.3f} | {cpu_ratio:.2f} |",
        "",
    ]
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
