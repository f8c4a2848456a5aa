"""GAC's overhead on a hybrid SFT+RL step: compiled FLOPs and wall time, GAC vs fixed mu.

Both steps run the same model, the same micro-batching (one ``lax.scan`` per branch, exact
token-mean accumulation) and the same optimiser tail (global-norm clipping, AdamW):

- **fixed**: ``giftjax.train.accumulate_grads`` without statistics, ``(1 - mu) g_rl + mu g_sft``
  written out by hand with a constant ``mu``, then ``optax.chain(clip, adamw)``: what a
  fixed-weight hybrid costs. It returns the same metrics as ``hybrid_step`` (both losses and
  both gradient norms; without the losses XLA would drop their final reductions and the
  comparison would charge GAC for logging).
- **gac**: ``giftjax.train.hybrid_step`` with ``optax.chain(optim.gac(), clip, adamw)`` and the
  ``gradient`` estimator (one squared norm per micro-batch gradient, ``|g_sft - g_rl|^2`` and
  the controller's scalar update).

FLOPs come from ``jax.jit(step).lower(...).compile().cost_analysis()``. Wall time is measured
in one process, the two steps interleaved (their order alternating each round), each call
blocked until ready; the ratio of the medians is reported, with the median of the per-round
ratios beside it, so other load on the machine cancels out. An A/A control (the fixed step
timed twice in the same rotation) shows the noise floor, and GAC's own operations are also
timed alone.

The model is ``giftjax.models``' ``tiny`` preset.

Run:  python benchmarks/gac_overhead.py  [--repeats 60 --single-thread]
Writes benchmarks/results/gac_overhead.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
if "--single-thread" in sys.argv:  # must be set before jax starts its CPU backend
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    ).strip()

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from giftjax import losses, optim
from giftjax.models import Decoder
from giftjax.models.presets import get_preset
from giftjax.train import accumulate_grads, hybrid_step

RESULTS = Path(__file__).parent / "results" / "gac_overhead.md"


def build_model():
    """Return (model, description): giftjax.models' ``tiny`` preset."""
    config = get_preset("tiny")
    return Decoder(config, rngs=nnx.Rngs(0)), f"giftjax.models tiny preset ({config})"


# --------------------------------------------------------------------------------------
# The hybrid step.
# --------------------------------------------------------------------------------------


def make_losses(graphdef, rest):
    def token_logps(params, mb):
        logits = nnx.merge(graphdef, params, rest)(mb["tokens"])  # [B, T, V]
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        return jnp.take_along_axis(logp, mb["targets"][..., None], axis=-1)[..., 0]  # [B, T]

    def sft_loss(params, mb):  # the SFT branch GAC was published with: CHORD-weighted NLL
        return losses.sft_loss(token_logps(params, mb), mb["mask"], weighting="chord")

    def rl_loss(params, mb):  # GRPO, first update on a fresh rollout batch (ratio 1)
        logps = token_logps(params, mb)
        old = jax.lax.stop_gradient(logps)
        return losses.grpo_loss(logps, old, mb["mask"], mb["adv"])

    return sft_loss, rl_loss


def make_batches(k, b, t, vocab, seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(t // 2, t + 1, size=(k, b))
    return {
        "tokens": jnp.asarray(rng.integers(0, vocab, size=(k, b, t)), jnp.int32),
        "targets": jnp.asarray(rng.integers(0, vocab, size=(k, b, t)), jnp.int32),
        "mask": jnp.asarray(np.arange(t)[None, None] < lengths[..., None]),
        "adv": jnp.asarray(rng.normal(size=(k, b)), jnp.float32),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--microbatches", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8, help="sequences per micro-batch")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument(
        "--single-thread",
        action="store_true",
        help="run XLA's CPU code on one thread (less sensitive to other load on the machine)",
    )
    args = parser.parse_args(argv)

    model, description = build_model()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    vocab = nnx.merge(graphdef, params, rest)(jnp.zeros((1, 1), jnp.int32)).shape[-1]
    sft_loss, rl_loss = make_losses(graphdef, rest)
    k, b, t = args.microbatches, args.batch, args.length
    sft_mbs, rl_mbs = make_batches(k, b, t, vocab, 1), make_batches(k, b, t, vocab, 2)
    tail = [optax.clip_by_global_norm(1.0), optax.adamw(1e-4)]

    gac_tx = optax.chain(optim.gac(), *tail)
    fixed_tx = optax.chain(*tail)
    mu = 0.5

    def gac_step(params, opt_state, sft_mbs, rl_mbs, unroll=1):
        return hybrid_step(
            params,
            opt_state,
            sft_mbs,
            rl_mbs,
            sft_loss_fn=sft_loss,
            rl_loss_fn=rl_loss,
            tx=gac_tx,
            unroll=unroll,
        )

    def combine(g_sft, g_rl):
        return jax.tree.map(lambda s, r: (1 - mu) * r + mu * s, g_sft, g_rl)

    def fixed_step(params, opt_state, sft_mbs, rl_mbs, unroll=1):
        kw = {"collect_stats": False, "unroll": unroll}
        sft = accumulate_grads(sft_loss, params, sft_mbs, **kw)
        rl = accumulate_grads(rl_loss, params, rl_mbs, **kw)
        grads = combine(sft.grads, rl.grads)
        updates, opt_state = fixed_tx.update(grads, opt_state, params)
        metrics = {  # what hybrid_step logs, less the gac/ scalars
            "loss/sft": sft.loss,
            "loss/rl": rl.loss,
            "grad_norm/sft": optax.tree.norm(sft.grads),
            "grad_norm/rl": optax.tree.norm(rl.grads),
        }
        return optax.apply_updates(params, updates), opt_state, metrics

    def analyse(fn, *args):
        cost = jax.jit(fn).lower(*args).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost["flops"]), float(cost.get("bytes accessed", float("nan")))

    runs = {}
    for name, fn, tx in (("gac", gac_step, gac_tx), ("fixed", fixed_step, fixed_tx)):
        state = tx.init(params)
        compiled = jax.jit(fn).lower(params, state, sft_mbs, rl_mbs).compile()
        # cost_analysis() counts a loop body once: count FLOPs on the unrolled program.
        flops, nbytes = analyse(partial(fn, unroll=True), params, state, sft_mbs, rl_mbs)
        runs[name] = {"compiled": compiled, "state": state, "flops": flops, "bytes": nbytes}
    # A/A control: the fixed step compiled a second time, as a separate executable, and timed
    # as if it were another program; its ratio to the fixed step is the noise floor of this
    # machine during this run (the same executable twice would profit from warm caches).
    fixed_copy = lambda *a: fixed_step(*a)  # a distinct function: its own lowering and compile
    state = fixed_tx.init(params)
    runs["fixed (again)"] = {
        "compiled": jax.jit(fixed_copy).lower(params, state, sft_mbs, rl_mbs).compile(),
        "state": state,
    }

    # Cross-check: GAC's own operations compiled alone. Extra = the transformation (norms, D^2,
    # controller, combination) minus the plain combination, plus one squared norm per
    # micro-batch gradient.
    zeros = jax.tree.map(jnp.zeros_like, params)
    stats = optim.GacStats(
        sft_sq_norm_sum=1.0, rl_sq_norm_sum=1.0, num_microbatches=k, rl_num_microbatches=k
    )
    gac_alone = optim.gac()
    gac_update = lambda g_s, g_r, st: gac_alone.update({"sft": g_s, "rl": g_r}, st, gac_stats=stats)
    flops_gac_update = analyse(gac_update, zeros, zeros, gac_alone.init(params))[0]
    flops_combine = analyse(combine, zeros, zeros)[0]
    flops_norm = analyse(optim.tree_sq_norm, zeros)[0]
    isolated_extra = flops_gac_update - flops_combine + 2 * k * flops_norm

    def median_time(fn, *args, calls=200):
        fn = jax.jit(fn)
        jax.block_until_ready(fn(*args))
        samples = []
        for _ in range(calls):
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)

    grads = jax.tree.map(lambda x: jnp.full_like(x, 0.01), params)
    t_gac_update = median_time(gac_update, grads, grads, gac_alone.init(params))
    t_combine = median_time(combine, grads, grads)
    # The 2K micro-batch norms in one call (stacked), less the cost of a call doing nothing.
    stacked = jax.tree.map(lambda x: jnp.stack([x * (1 + i) for i in range(2 * k)]), grads)
    t_norms = median_time(jax.vmap(optim.tree_sq_norm), stacked)
    t_call = median_time(lambda x: x + 1, jnp.zeros(()))
    isolated_time = (t_gac_update - t_combine) + (t_norms - t_call)

    names = ["gac", "fixed", "fixed (again)"]
    cpu_times = {name: [] for name in names}

    def timed(name):
        r = runs[name]
        start, cpu_start = time.perf_counter(), time.process_time()
        out = r["compiled"](params, r["state"], sft_mbs, rl_mbs)
        jax.block_until_ready(out)
        cpu_times[name].append(time.process_time() - cpu_start)
        return time.perf_counter() - start

    for _ in range(3):  # warm-up
        for name in names:
            timed(name)
    for name in names:
        cpu_times[name].clear()
    times = {name: [] for name in names}
    for i in range(args.repeats):
        for name in names[i % 3 :] + names[: i % 3]:  # rotate the order every round
            times[name].append(timed(name))

    med = {n: statistics.median(v) for n, v in times.items()}
    wall_ratio = med["gac"] / med["fixed"]
    pairs = np.asarray(times["gac"]) / np.asarray(times["fixed"])  # per-round ratios
    pair_ratio = float(np.median(pairs))
    rng = np.random.default_rng(0)
    boot = np.median(rng.choice(pairs, size=(2000, pairs.size)), axis=1)
    ci = np.percentile(boot, [2.5, 97.5])
    cpu_ratio = statistics.median(cpu_times["gac"]) / statistics.median(cpu_times["fixed"])
    isolated_ratio = 1.0 + isolated_time / med["fixed"]
    aa_ratio = med["fixed (again)"] / med["fixed"]
    aa_pairs = np.asarray(times["fixed (again)"]) / np.asarray(times["fixed"])
    aa_boot = np.median(rng.choice(aa_pairs, size=(2000, aa_pairs.size)), axis=1)
    aa_ci = np.percentile(aa_boot, [2.5, 97.5])
    flop_ratio = runs["gac"]["flops"] / runs["fixed"]["flops"]
    extra = (runs["gac"]["flops"] - runs["fixed"]["flops"]) / runs["fixed"]["flops"]

    device = jax.devices()[0]
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "# GAC overhead: hybrid SFT+RL step, GAC vs fixed mu",
        "",
        f"Written by `benchmarks/gac_overhead.py` on {stamp}"
        f" (jax {jax.__version__}, {device.platform} `{device.device_kind}`, "
        f"{jax.device_count()} device(s), Python {platform.python_version()}).",
        "",
        f"- Model: {description}; {num_params:,} parameters.",
        f"- Micro-batching: K = {k} micro-batches per branch, {b} sequences x {t} tokens each "
        f"({k * b * t:,} token slots per branch), one `lax.scan` per branch, exact token-mean "
        "accumulation; losses `losses.sft_loss(weighting='chord')` and `losses.grpo_loss`; "
        "tail `clip_by_global_norm(1.0)`, `adamw(1e-4)`.",
        "- fixed: hand-written `(1 - mu) g_rl + mu g_sft` with mu = 0.5, no statistics; it "
        "returns the same losses and gradient norms as `hybrid_step` (less the `gac/` scalars).",
        "- gac: `optim.gac()` defaults, `gradient` estimator (per-micro-batch squared norms).",
        "",
        "| | fixed mu | GAC | GAC / fixed |",
        "|---|---:|---:|---:|",
        f"| compiled FLOPs (scans unrolled) | {runs['fixed']['flops']:,.0f} | "
        f"{runs['gac']['flops']:,.0f} | "
        f"{flop_ratio:.5f} |",
        f"| bytes accessed | {runs['fixed']['bytes']:,.0f} | {runs['gac']['bytes']:,.0f} | "
        f"{runs['gac']['bytes'] / runs['fixed']['bytes']:.5f} |",
        f"| wall time, median of {args.repeats} (ms) | {1e3 * med['fixed']:.2f} | "
        f"{1e3 * med['gac']:.2f} | {wall_ratio:.4f} |",
        "",
        f"Extra FLOPs of GAC: {100 * extra:.3f}% of the fixed-mu step by the whole-step "
        f"cost analysis; {100 * isolated_extra / runs['fixed']['flops']:.3f}% counting GAC's "
        f"own operations compiled alone ({isolated_extra:,.0f} FLOPs: the transformation "
        f"{flops_gac_update:,.0f} minus the plain combination {flops_combine:,.0f}, plus "
        f"{2 * k} micro-batch squared norms of {flops_norm:,.0f}) (acceptance: < 0.5%). "
        f"Wall-time ratio: {wall_ratio:.4f} (ratio of medians; median of per-round ratios "
        f"{pair_ratio:.4f}, 95% bootstrap interval [{ci[0]:.4f}, {ci[1]:.4f}]; acceptance: "
        f"< 1.01). Process CPU-time ratio (medians): {cpu_ratio:.4f}. XLA CPU threads: "
        f"{'one' if args.single_thread else 'default'}; load average at the end: "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores.",
        "",
        f"Noise floor (A/A control, the fixed step compiled again as a separate executable and "
        f"timed in the same rotation): ratio of "
        f"medians {aa_ratio:.4f}, median of per-round ratios {float(np.median(aa_pairs)):.4f}, "
        f"95% bootstrap interval [{aa_ci[0]:.4f}, {aa_ci[1]:.4f}].",
        "",
        f"Cross-check, GAC's own operations timed alone (jitted, median of 200 calls each): "
        f"the transformation {1e3 * t_gac_update:.3f} ms minus the plain combination "
        f"{1e3 * t_combine:.3f} ms, plus the {2 * k} micro-batch squared norms in one call "
        f"{1e3 * t_norms:.3f} ms less an empty call {1e3 * t_call:.3f} ms = "
        f"{1e3 * isolated_time:.3f} ms per step, i.e. a wall-time ratio of {isolated_ratio:.4f}.",
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return {
        "flop_extra": extra,
        "isolated_extra": isolated_extra / runs["fixed"]["flops"],
        "wall_ratio": wall_ratio,
        "pair_ratio": pair_ratio,
        "pair_ratio_ci": tuple(ci),
        "cpu_ratio": cpu_ratio,
        "isolated_ratio": isolated_ratio,
        "aa_ratio": aa_ratio,
    }


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
