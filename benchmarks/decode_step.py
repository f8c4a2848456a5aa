"""Time one jitted decode step of the Qwen2-shaped benchmark decoder at several cache sizes.

Interleaves the cache sizes in one process and reports medians (ms), so machine load hits all
alike; `--hlo DIR` also writes the optimized HLO of each step for inspection (look for copies /
transposes of cache-sized buffers).

    .venv/bin/python benchmarks/decode_step.py --batch 32 --slots 32 96 384
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")

import jax
import jax.numpy as jnp
from flax import nnx

from giftjax.models import Decoder, ModelConfig


def build() -> Decoder:
    config = ModelConfig(
        family="qwen2",
        vocab_size=4096,
        hidden_size=256,
        intermediate_size=688,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        head_dim=64,
        qkv_bias=True,
        tie_word_embeddings=False,
        dtype="float32",
    )
    return Decoder(config, rngs=nnx.Rngs(0))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--slots", type=int, nargs="+", default=[32, 96, 384])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--steps", type=int, default=10, help="decode steps per timed call")
    parser.add_argument("--hlo", default=None)
    args = parser.parse_args()
    model = build()
    graphdef, state = nnx.split(model)
    b = args.batch

    def steps(state, cache, tok):
        m = nnx.merge(graphdef, state)

        def body(_, carry):
            cache, tok = carry
            logits, cache = m.decode_step(tok[:, None], cache=cache)
            return cache, jnp.argmax(logits[:, 0], -1).astype(jnp.int32)

        return jax.lax.fori_loop(0, args.steps, body, (cache, tok))

    fn = jax.jit(steps, donate_argnums=(1,))
    tok = jnp.zeros((b,), jnp.int32)
    compiled, caches = {}, {}
    for s in args.slots:
        cache = model.init_cache(b, s)
        cache = cache._replace(mask=cache.mask.at[:, : s // 2].set(True), index=jnp.int32(s // 2))
        compiled[s] = fn.lower(state, cache, tok).compile()
        caches[s] = cache
        if args.hlo:
            os.makedirs(args.hlo, exist_ok=True)
            with open(os.path.join(args.hlo, f"decode_S{s}.txt"), "w") as f:
                f.write(compiled[s].as_text())
    times = {s: [] for s in args.slots}
    for _ in range(args.repeats):
        for s in args.slots:
            cache = caches[s]
            fresh = jax.tree.map(jnp.copy, cache)
            jax.block_until_ready(fresh)
            t0 = time.perf_counter()
            out = compiled[s](state, fresh, tok)
            jax.block_until_ready(out)
            times[s].append((time.perf_counter() - t0) / args.steps)
    load = os.getloadavg()[0]
    for s in args.slots:
        print(f"B={b} S={s}: {1e3 * statistics.median(times[s]):.2f} ms/step (load {load:.1f})")


if __name__ == "__main__":
    main()
