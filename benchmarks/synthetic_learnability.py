"""How fast a tiny decoder learns each synthetic task with plain SFT (a warm-up probe).

For each kind: a fresh 2-layer, width-64 decoder (the `tiny` preset with the synthetic
vocabulary) is trained with teacher-forced cross-entropy on the demonstrations (optax.adam,
batch 32); after 0/25/50/100/200 steps the mean `score` of greedy and of temperature-1 samples
(G samples per prompt) is measured on fixed train and held-out prompts, with the mean
within-group standard deviation of the sampled scores (RL's signal) and the wall time.

    .venv/bin/python benchmarks/synthetic_learnability.py --seeds 0 1 \
        --out benchmarks/results/synthetic_learnability.md

Columns: `loss` is the last SFT batch's loss (nan before any step); `greedy` and `sampled` are mean
scores (`giftjax.data.score`, partial credit in [0, 1]) on 64 fixed prompts of the split;
`group std` is the mean over prompts of the standard deviation of the G = 8 temperature-1
scores of one prompt (RL's signal); `exact` is the share of greedy answers scoring 1; `sft s`
is the time spent in SFT steps so far (the first step's compile included); `wall s` is the time
since the kind started (evaluation and its compiles included).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from giftjax import sampling
from giftjax.data import (
    SYNTHETIC_VOCAB_SIZE,
    SyntheticTask,
    build_tokenizer,
    decode_responses,
    encode_demonstrations,
    encode_prompts,
    score,
)
from giftjax.losses import sft_loss
from giftjax.models import Decoder
from giftjax.models.presets import get_preset

MAX_PROMPT, MAX_RESPONSE = 12, 8
COLUMNS = __doc__.split("Columns: ")[1].strip()


def make_model(seed: int) -> Decoder:
    tok = build_tokenizer()
    config = get_preset(
        "tiny",
        vocab_size=SYNTHETIC_VOCAB_SIZE,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return Decoder(config, rngs=nnx.Rngs(seed))


def sft_step_fn(graphdef, tx):
    @jax.jit
    def step(state, opt_state, batch):
        def loss_fn(state):
            model = nnx.merge(graphdef, state)
            tokens = jnp.concatenate([batch["prompt_ids"], batch["response_ids"]], axis=1)
            mask = jnp.concatenate([batch["prompt_mask"], batch["response_mask"]], axis=1)
            logits = model(tokens, mask)  # [B, Tp + Tr, V]
            tp = batch["prompt_ids"].shape[1]
            pred = logits[:, tp - 1 : -1]  # [B, Tr, V]: position t predicts token t + 1
            logps = jnp.take_along_axis(
                jax.nn.log_softmax(pred, axis=-1), batch["response_ids"][..., None], axis=-1
            )[..., 0]
            return sft_loss(logps, batch["response_mask"])[0]

        loss, grads = jax.value_and_grad(loss_fn)(state)
        updates, opt_state = tx.update(grads, opt_state, state)
        return optax.apply_updates(state, updates), opt_state, loss

    return step


def evaluate(model, tok, items, *, key, num_samples: int) -> dict[str, float]:
    ids, mask = encode_prompts(tok, [x["prompt"] for x in items], max_prompt_len=MAX_PROMPT)
    answers = [x["answer"] for x in items]
    out = {}
    for name, temp, g in (("greedy", 0.0, 1), ("sampled", 1.0, num_samples)):
        res = sampling.generate(
            model,
            jnp.asarray(ids),
            jnp.asarray(mask),
            max_new_tokens=MAX_RESPONSE,
            key=key,
            temperature=temp,
            num_samples=g,
            eos_id=tok.eos_token_id,
        )
        texts = decode_responses(tok, res.tokens, res.mask)
        scores = np.array([score(t, a) for t, a in zip(texts, np.repeat(answers, g), strict=True)])
        out[name] = float(scores.mean())
        out[name + "_exact"] = float((scores == 1.0).mean())
        if g > 1:
            out["group_std"] = float(scores.reshape(-1, g).std(axis=1, ddof=1).mean())
    return out


def run(kind: str, args) -> list[dict]:
    tok = build_tokenizer()
    train = SyntheticTask(kind=kind, split="train", size=1_000_000, seed=args.seed)
    evals = {
        "train": [train[i] for i in range(args.eval_prompts)],
        "heldout": [
            SyntheticTask(kind=kind, split="heldout", size=args.eval_prompts, seed=args.seed)[i]
            for i in range(args.eval_prompts)
        ],
    }
    model = make_model(args.seed)
    graphdef, state = nnx.split(model)
    tx = optax.adam(args.lr)
    opt_state = tx.init(state)
    step = sft_step_fn(graphdef, tx)
    rows, t0, train_s, loss = [], time.perf_counter(), 0.0, float("nan")
    checkpoints = sorted(set(args.steps))
    rng = np.random.default_rng(args.seed + 1)
    for s in range(checkpoints[-1] + 1):
        if s in checkpoints:
            model = nnx.merge(graphdef, state)
            row = {"kind": kind, "seed": args.seed, "step": s, "loss": loss, "train_s": train_s}
            for split, items in evals.items():
                key = jax.random.key(1000 + s)
                for k, v in evaluate(model, tok, items, key=key, num_samples=args.g).items():
                    row[f"{split}/{k}"] = v
            row["wall_s"] = time.perf_counter() - t0
            rows.append(row)
            print(format_row(row), flush=True)
        if s == checkpoints[-1]:
            break
        idx = rng.integers(0, len(train), size=args.batch)
        items = [train[int(i)] for i in idx]
        batch = encode_demonstrations(
            tok,
            [x["prompt"] for x in items],
            [x["demonstration"] for x in items],
            max_prompt_len=MAX_PROMPT,
            max_response_len=MAX_RESPONSE,
        )
        ts = time.perf_counter()
        state, opt_state, loss = step(state, opt_state, batch)
        loss = float(loss)
        train_s += time.perf_counter() - ts
    return rows


HEADER = (
    "| kind | seed | step | loss | train greedy | train sampled | train group std | train exact "
    "| heldout greedy | heldout sampled | sft s | wall s |"
)


def format_row(r: dict) -> str:
    return (
        f"| {r['kind']} | {r['seed']} | {r['step']} | {r['loss']:.3f} | {r['train/greedy']:.3f} | "
        f"{r['train/sampled']:.3f} | {r['train/group_std']:.3f} | "
        f"{r['train/greedy_exact']:.3f} | {r['heldout/greedy']:.3f} | "
        f"{r['heldout/sampled']:.3f} | {r['train_s']:.1f} | {r['wall_s']:.1f} |"
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kinds", nargs="+", default=["reverse", "add"])
    p.add_argument("--steps", nargs="+", type=int, default=[0, 25, 50, 100, 200])
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--g", type=int, default=8, help="samples per prompt at temperature 1")
    p.add_argument("--eval-prompts", type=int, default=64)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--out", help="also write the table to this markdown file")
    args = p.parse_args()
    head = (
        f"jax {jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} CPUs), "
        f"Python {platform.python_version()}; adam lr {args.lr}, batch {args.batch}, "
        f"G = {args.g}, {args.eval_prompts} eval prompts per split"
    )
    print(head)
    print(HEADER)
    print("|---" * (HEADER.count("|") - 1) + "|")
    rows = []
    for seed in args.seeds:
        args.seed = seed
        for kind in args.kinds:
            rows += run(kind, args)
    if args.out:
        when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        lines = [
            "# SFT learnability of the synthetic tasks (tiny decoder)",
            "",
            f"Written by `benchmarks/synthetic_learnability.py` on {when}: {head}.",
            "",
            "Model: the `tiny` preset (2 layers, width 64) with vocab_size = "
            f"{SYNTHETIC_VOCAB_SIZE}; teacher-forced cross-entropy on the response tokens.",
            "",
            "Columns: " + " ".join(COLUMNS.split()),
            "",
            HEADER,
            "|---" * (HEADER.count("|") - 1) + "|",
            *(format_row(r) for r in rows),
            "",
        ]
        with open(args.out, "w", encoding="utf-8") as f:
            f.write("\n".join(lines))


if __name__ == "__main__":
    main()
