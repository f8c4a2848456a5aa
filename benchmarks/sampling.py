"""Generated tokens per second: giftjax.sampling.generate vs transformers' PyTorch generate.

Same weights (a random Qwen2-shaped decoder: 4 layers, width 256, 4 heads with 2 KV heads,
MLP 688, vocabulary 4096, float32), same CPU, one process. Prompts of 32 tokens, 64 new tokens
(no EOS, so every run generates exactly 64 tokens per row), batch 8 and 32, greedy and sampled
(temperature 1, no top-k/top-p on both sides). PyTorch runs with torch.set_num_threads(2)
(and, as a second reference, 1 thread);
XLA's CPU client uses the machine's cores (2 here).

Compile time (giftjax's first call minus its steady-state median) is reported apart.
Steady-state time is the median of repeated runs, giftjax and torch runs interleaved so that
load from other processes on the machine hits both alike.

    .venv/bin/python benchmarks/sampling.py            # writes benchmarks/results/sampling.md
    .venv/bin/python benchmarks/sampling.py --repeats 3 --batches 8   # quick look
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from giftjax import sampling
from giftjax.models import load_hf

PROMPT_LEN, NEW_TOKENS, VOCAB = 32, 64, 4096
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "sampling.md")


def build_models():
    config = transformers.Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))  # logits of order 1, not uniform
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        model = load_hf(d, dtype=jnp.float32)
    return hf, model


def run_giftjax(model, ids, mask, greedy: bool, seed: int):
    out = sampling.generate(
        model,
        ids,
        mask,
        max_new_tokens=NEW_TOKENS,
        key=jax.random.key(seed),
        temperature=0.0 if greedy else 1.0,
    )
    return np.asarray(jax.block_until_ready(out.tokens))


def run_torch(hf, ids_t, mask_t, greedy: bool, seed: int, threads: int = 2):
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = hf.generate(
            input_ids=ids_t,
            attention_mask=mask_t,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=not greedy,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            pad_token_id=0,
        )
    return out[:, PROMPT_LEN:].numpy()


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def bench_row(hf, model, batch: int, greedy: bool, repeats: int) -> dict:
    rng = np.random.default_rng(batch)
    ids = rng.integers(3, VOCAB, size=(batch, PROMPT_LEN)).astype(np.int32)
    mask = np.ones_like(ids)
    ids_t, mask_t = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)

    first, jax_tokens = timed(run_giftjax, model, jnp.asarray(ids), jnp.asarray(mask), greedy, 0)
    _, torch_tokens = timed(run_torch, hf, ids_t, mask_t, greedy, 0)  # warm-up
    agree = float(np.mean(jax_tokens == torch_tokens)) if greedy else float("nan")
    times = {"jax": [], "torch": [], "torch1": []}
    for r in range(repeats):
        runs = [
            ("jax", lambda r=r: run_giftjax(model, jnp.asarray(ids), jnp.asarray(mask), greedy, r)),
            ("torch", lambda r=r: run_torch(hf, ids_t, mask_t, greedy, r, threads=2)),
            ("torch1", lambda r=r: run_torch(hf, ids_t, mask_t, greedy, r, threads=1)),
        ]
        shift = r % len(runs)  # rotate the order so no run always follows the same one
        for name, fn in runs[shift:] + runs[:shift]:
            times[name].append(timed(fn)[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    n_tok = batch * NEW_TOKENS
    row = dict(
        batch=batch,
        mode="greedy" if greedy else "sampled (T=1)",
        compile_s=first - med["jax"],
        agree=agree,
    )
    for k, m in med.items():
        row[f"{k}_tps"], row[f"{k}_ms"] = n_tok / m, 1e3 * m
    row["speedup"], row["speedup1"] = med["torch"] / med["jax"], med["torch1"] / med["jax"]
    print(row, flush=True)
    return row


def write_table(rows: list[dict], repeats: int, path: str) -> str:
    lines = [
        "# Sampling throughput: giftjax vs transformers (PyTorch) on CPU",
        "",
        f"Qwen2-shaped decoder (4 layers, width 256, 4 heads / 2 KV heads, MLP 688, vocab "
        f"{VOCAB}, float32), {PROMPT_LEN}-token prompts, {NEW_TOKENS} new tokens per row, no "
        f"EOS. Steady state = median of {repeats} runs, giftjax and torch interleaved in one "
        f"process; torch.set_num_threads(2) as the issue asks, and torch with 1 thread as a second "
        f"reference (on a loaded 2-core machine, 2 OpenMP threads can be slower than 1). "
        f"Compile = giftjax first call minus its median.",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load "
        f"average {os.getloadavg()[0]:.1f} at the end (shared with other jobs); jax "
        f"{jax.__version__}, torch {torch.__version__}, transformers {transformers.__version__}.",
        "",
        "| batch | mode | giftjax tok/s | torch (2 threads) tok/s | speedup | "
        "torch (1 thread) tok/s | speedup vs 1 thread | giftjax compile s | "
        "greedy tokens equal |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        agree = "n/a" if np.isnan(r["agree"]) else f"{100 * r['agree']:.1f}%"
        lines.append(
            f"| {r['batch']} | {r['mode']} | {r['jax_tps']:,.0f} | {r['torch_tps']:,.0f} | "
            f"{r['speedup']:.1f}x | {r['torch1_tps']:,.0f} | {r['speedup1']:.1f}x | "
            f"{r['compile_s']:.1f} | {agree} |"
        )
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return text


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(2)
    hf, model = build_models()
    rows = [
        bench_row(hf, model, b, greedy, args.repeats)
        for b in args.batches
        for greedy in (True, False)
    ]
    print(write_table(rows, args.repeats, args.out))


if __name__ == "__main__":
    main()
