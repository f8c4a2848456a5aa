"""Forward vs forward+backward of the RL-step decoder on CPU: wall time, CPU time, op profile.

The loss is the one an RL update differentiates (docs/development/architecture.md, one RL
step), on the configuration of `benchmarks/rl_step.py`: a Qwen2-shaped decoder (4 layers,
width 256, 4 heads / 2 KV heads, head_dim 64, MLP 688, vocabulary 4096, tied embeddings, q/k/v bias,
float32 parameters and compute) at B=32 rows of T=96 tokens::

    hidden = model(tokens, mask, return_hidden=True)[:, :-1]                   # [B, T-1, D]
    loss = sum(mask[:, 1:] * token_logprobs(hidden, lm_head, tokens[:, 1:], impl="xla"))

Every variant is compiled ahead of time, then all are timed interleaved in one process (median
of `--repeats` rounds, each call blocked until ready), so load from other processes hits every
variant alike. Process CPU time (all threads) is reported beside wall time: on a shared
machine it moves far less than wall time. Variants:

- `default` / `highest`: jax_default_matmul_precision unset (what a user gets) or "highest"
  (what tests/conftest.py sets). On XLA:CPU both compute float32 matmuls in float32: the
  loss and gradients come out bit-identical and the times agree.
- `--remat P ...`: the layer rematerialisation policies to time (ModelConfig.remat).
- `--mlp-3d`: also time the MLP written on [B, T, .] operands (giftjax's MLP before the
  RL-step speed work moved it to [B*T, .] rows), whose weight gradients contract two axes;
  XLA:CPU then materialises transposed copies of the gate/up gradients fused with the SiLU
  backward: forward+backward cost ~4.3x the forward (CPU time, this loss) instead of ~3.6x.

`--profile DIR` also writes a device trace of the first variant's forward+backward and prints
its most expensive XLA ops; `--hlo DIR` writes each compiled forward+backward.

Run:  python benchmarks/model_backward.py [--repeats 9 --remat none full --mlp-3d --profile DIR]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import gzip
import json
import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")

import jax
import jax.numpy as jnp
from flax import nnx

from giftjax.kernels import token_logprobs
from giftjax.models import Decoder, ModelConfig
from giftjax.models import layers as layers_lib

# The decoder of benchmarks/rl_step.py (the giftjax-vs-tunix RL step): Qwen2-shaped, tied
# embeddings, float32.
BENCH_CONFIG = ModelConfig(
    family="qwen2",
    vocab_size=4096,
    hidden_size=256,
    intermediate_size=688,
    num_layers=4,
    num_heads=4,
    num_kv_heads=2,
    head_dim=64,
    qkv_bias=True,
    tie_word_embeddings=True,
    dtype="float32",
)


def mlp_3d(self, x, constrain=layers_lib.no_constraint):
    """The MLP on [B, T, .] operands (giftjax's before it ran on [B*T, .] rows), for comparison."""
    dt = x.dtype
    gate = x @ self.gate_proj[...].astype(dt)  # [B, T, F]
    up = x @ self.up_proj[...].astype(dt)  # [B, T, F]
    hidden = constrain(jax.nn.silu(gate) * up, ("batch", "length", "mlp"))  # [B, T, F]
    return hidden @ self.down_proj[...].astype(dt)  # [B, T, D]


@contextlib.contextmanager
def _traced_with(precision: str, mlp3d: bool):
    """Trace under a matmul precision and, optionally, the [B, T, .] MLP."""
    original = layers_lib.MLP.__call__
    if mlp3d:
        if BENCH_CONFIG.mlp_bias:
            raise ValueError("mlp_3d has no MLP bias; the benchmark config has none.")
        layers_lib.MLP.__call__ = mlp_3d
    try:
        with jax.default_matmul_precision(None if precision == "default" else precision):
            yield
    finally:
        layers_lib.MLP.__call__ = original


def make_loss(graphdef):
    """loss(state, tokens [B, T], mask [B, T]) -> () float32, the masked sum of log-probs."""

    def loss(state, tokens, mask):
        model = nnx.merge(graphdef, state)
        hidden = model(tokens, mask, return_hidden=True)[:, :-1]  # [B, T-1, D]
        logps = token_logprobs(hidden, model.lm_head_weight(), tokens[:, 1:], impl="xla")
        return jnp.sum(mask[:, 1:] * logps)

    return loss


def compile_variants(args, tokens, mask):
    """{name: (compiled fn, state)} for forward and forward+backward of every variant."""
    out = {}
    for remat in args.remat:
        graphdef, state = nnx.split(Decoder(BENCH_CONFIG.replace(remat=remat), rngs=nnx.Rngs(0)))
        loss = make_loss(graphdef)
        for precision in args.precision:
            for mlp3d in (False, True) if args.mlp_3d else (False,):
                name = f"{precision}/remat={remat}" + ("/mlp-3d" if mlp3d else "")
                with _traced_with(precision, mlp3d):
                    fwd = jax.jit(loss).lower(state, tokens, mask).compile()
                    fb = jax.jit(jax.value_and_grad(loss)).lower(state, tokens, mask).compile()
                out[name] = (fwd, fb, state)
    return out


def time_variants(variants, tokens, mask, repeats):
    """Median wall and CPU seconds per call, {name: {"fwd": (wall, cpu), "fb": ...}}."""
    calls = [
        (n, k, f, st)
        for n, (fwd, fb, st) in variants.items()
        for k, f in (("fwd", fwd), ("fb", fb))
    ]
    for _, _, f, st in calls:
        jax.block_until_ready(f(st, tokens, mask))
    wall = collections.defaultdict(list)
    cpu = collections.defaultdict(list)
    for r in range(repeats):
        for n, k, f, st in calls[:: 1 if r % 2 == 0 else -1]:  # alternate the order
            t0, c0 = time.perf_counter(), time.process_time()
            jax.block_until_ready(f(st, tokens, mask))
            wall[n, k].append(time.perf_counter() - t0)
            cpu[n, k].append(time.process_time() - c0)
    return {
        n: {k: (statistics.median(wall[n, k]), statistics.median(cpu[n, k])) for k in ("fwd", "fb")}
        for n in variants
    }


def profile(fn, args_, out_dir: str, top: int = 25, calls: int = 3) -> None:
    """Writes a trace of `calls` runs of `fn(*args_)` and prints the `top` XLA ops by time."""
    jax.block_until_ready(fn(*args_))
    with jax.profiler.trace(out_dir, create_perfetto_trace=True):
        for _ in range(calls):
            jax.block_until_ready(fn(*args_))
    path = sorted(glob.glob(os.path.join(out_dir, "**", "*.trace.json.gz"), recursive=True))[-1]
    with gzip.open(path) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    total, count = collections.Counter(), collections.Counter()
    skip = ("ThunkExecutor", "$", "Slinky", "while", "end:", "Thread", "Pjit", "Common", "Parse")
    for e in events:
        if e.get("ph") == "X" and not e["name"].startswith(skip):
            total[e["name"]] += e.get("dur", 0)
            count[e["name"]] += 1
    grand = sum(total.values())
    print(f"\nProfile ({path}): {grand / calls / 1e3:.1f} ms of XLA ops per call")
    for name, us in total.most_common(top):
        share = 100 * us / grand
        print(f"  {us / calls / 1e3:8.2f} ms {share:5.1f}%  x{count[name] // calls:<3d} {name}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--remat", nargs="+", default=["none"])
    parser.add_argument("--precision", nargs="+", default=["default", "highest"])
    parser.add_argument("--mlp-3d", action="store_true", help="also time the [B, T, .] MLP")
    parser.add_argument("--profile", default=None, help="trace directory for the first variant")
    parser.add_argument("--hlo", default=None, help="directory for the compiled HLO texts")
    args = parser.parse_args()
    tokens = jax.random.randint(
        jax.random.key(1), (args.batch, args.length), 0, BENCH_CONFIG.vocab_size
    )
    mask = jnp.ones((args.batch, args.length), jnp.int32)
    variants = compile_variants(args, tokens, mask)
    if args.hlo:
        os.makedirs(args.hlo, exist_ok=True)
        for name, (_, fb, _) in variants.items():
            with open(os.path.join(args.hlo, name.replace("/", "_") + ".txt"), "w") as f:
                f.write(fb.as_text())
    times = time_variants(variants, tokens, mask, args.repeats)
    print(
        f"B={args.batch} T={args.length}, jax {jax.__version__}, {os.cpu_count()} CPUs, "
        f"median of {args.repeats}; load average {os.getloadavg()}"
    )
    print(
        "| variant | fwd wall (s) | fwd+bwd wall (s) | fwd CPU (s) | fwd+bwd CPU (s) | CPU ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, t in times.items():
        (fw, fc), (bw, bc) = t["fwd"], t["fb"]
        print(f"| {name} | {fw:.3f} | {bw:.3f} | {fc:.3f} | {bc:.3f} | {bc / fc:.2f} |")
    if args.profile:
        name = next(iter(variants))
        _, fb, state = variants[name]
        print(f"\nprofiled variant: {name} (fwd+bwd)")
        profile(fb, (state, tokens, mask), args.profile)


if __name__ == "__main__":
    main()
