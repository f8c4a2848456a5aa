"""Loss demo: each giftjax loss, its value and gradient norm, on one generated batch.

  python -m giftjax.demo --config=configs/demo.py --workdir=/tmp/giftjax-demo

A toy policy (a table of logits per position) samples ``G`` responses for each of ``P``
prompts; the reward of a response is the fraction of its tokens that are even. Every loss
is computed from the same per-token log-probs under ``jax.jit``, differentiated with
respect to the policy's logits, and logged to ``WORKDIR/metrics.jsonl``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections

from giftjax import losses

Array = jax.Array


def make_batch(config: ml_collections.ConfigDict) -> dict[str, Array]:
    """Sample the toy batch: tokens ``[B, T]``, policy/ref/old logits ``[B, T, V]``, ..."""
    P, G = config.batch.prompts, config.batch.group_size
    T, V = config.batch.tokens, config.batch.vocab
    B = P * G
    keys = jax.random.split(jax.random.PRNGKey(config.seed), 5)
    prompt_logits = jax.random.normal(keys[0], (P, T, V))
    logits = jnp.repeat(prompt_logits, G, axis=0)  # [B, T, V]: one policy per prompt
    tokens = jax.random.categorical(keys[1], logits)  # [B, T]
    lengths = jax.random.randint(keys[2], (B,), T // 4, T + 1)
    mask = jnp.arange(T)[None, :] < lengths[:, None]  # [B, T]
    rewards = jnp.sum((tokens % 2 == 0) * mask, -1) / lengths  # [B]
    return {
        "logits": logits,
        "ref_logits": logits + 0.3 * jax.random.normal(keys[3], logits.shape),
        "old_logits": logits + 0.05 * jax.random.normal(keys[4], logits.shape),
        "tokens": tokens,
        "mask": mask,
        "rewards": rewards.astype(jnp.float32),
    }


def token_logps(logits: Array, tokens: Array) -> Array:
    """``log_softmax(logits)[tokens]``: ``[B, T, V], [B, T] -> [B, T]`` float32."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]


def loss_table(config: ml_collections.ConfigDict) -> dict[str, Callable[[Array, dict], Array]]:
    """Name -> ``f(policy_logits, batch) -> (loss, aux)``, each a different loss."""
    G = config.batch.group_size

    def inputs(logits, b):
        return (
            token_logps(logits, b["tokens"]),
            jax.lax.stop_gradient(token_logps(b["ref_logits"], b["tokens"])),
            jax.lax.stop_gradient(token_logps(b["old_logits"], b["tokens"])),
        )

    def gift(logits, b, preset=None):
        lp, ref, _ = inputs(logits, b)
        return losses.gift_loss(
            lp, ref, b["mask"], b["rewards"], group_size=G, beta=config.gift_beta, preset=preset
        )

    def grpo(logits, b, preset):
        lp, ref, old = inputs(logits, b)
        adv = losses.group_advantages(b["rewards"], group_size=G)
        return losses.grpo_loss(lp, old, b["mask"], adv, ref_logps=ref, preset=preset)

    def pairs(logits, b):
        # Best and worst response of each group as a preference pair: [P] each.
        lp, ref, _ = inputs(logits, b)
        seq, seq_ref = (losses.sequence_logps(x, b["mask"]).reshape(-1, G) for x in (lp, ref))
        r = b["rewards"].reshape(-1, G)
        best, worst = jnp.argmax(r, 1)[:, None], jnp.argmin(r, 1)[:, None]
        pick = lambda x, i: jnp.take_along_axis(x, i, 1)[:, 0]
        return pick(seq, best), pick(seq, worst), pick(seq_ref, best), pick(seq_ref, worst)

    def una(logits, b):
        lp, ref, _ = inputs(logits, b)
        good = (b["rewards"] > jnp.median(b["rewards"])).astype(jnp.float32)
        return losses.una_loss(lp, ref, b["mask"], good, beta=config.una_beta)

    def sft(logits, b, weighting):
        lp, _, _ = inputs(logits, b)
        return losses.sft_loss(lp, b["mask"], weighting=weighting)

    return {
        "gift": gift,
        "gift[author]": lambda x, b: gift(x, b, "author"),
        "grpo": lambda x, b: grpo(x, b, "grpo"),
        "dapo": lambda x, b: grpo(x, b, "dapo"),
        "dr_grpo": lambda x, b: grpo(x, b, "dr_grpo"),
        "gspo": lambda x, b: grpo(x, b, "gspo"),
        "dpo": lambda x, b: losses.dpo_loss(*pairs(x, b), beta=config.dpo_beta),
        "una": una,
        "sft": lambda x, b: sft(x, b, "none"),
        "sft[chord]": lambda x, b: sft(x, b, "chord"),
    }


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict[str, float]]:
    """Compute every loss and its gradient norm; print a table and write metrics.jsonl."""
    batch = make_batch(config)
    results: dict[str, dict[str, float]] = {}
    print(f"{'loss':<14}{'value':>12}{'|grad|':>12}{'ms':>9}")
    for name, fn in loss_table(config).items():
        value_and_grad = jax.jit(jax.value_and_grad(fn, has_aux=True))
        (loss, _), grad = value_and_grad(batch["logits"], batch)  # compile
        start = time.perf_counter()
        (loss, _), grad = jax.block_until_ready(value_and_grad(batch["logits"], batch))
        ms = 1e3 * (time.perf_counter() - start)
        results[name] = {"loss": float(loss), "grad_norm": float(jnp.linalg.norm(grad))}
        print(
            f"{name:<14}{results[name]['loss']:>12.5f}{results[name]['grad_norm']:>12.4g}{ms:>9.2f}"
        )
    record = {"step": 0, "reward/mean": float(jnp.mean(batch["rewards"]))}
    for name, r in results.items():
        record[f"loss/{name}"] = r["loss"]
        record[f"grad_norm/{name}"] = r["grad_norm"]
    record["loss"] = results["gift"]["loss"]
    with open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    return results


def _main(argv: list[str]) -> None:
    from absl import app

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    os.makedirs(_WORKDIR.value, exist_ok=True)
    run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    from giftjax.runtime import quiet_accelerator_probes

    _CONFIG = config_flags.DEFINE_config_file("config", None, "configs/demo.py", lock_config=True)
    _WORKDIR = flags.DEFINE_string("workdir", None, "Where metrics.jsonl is written.")
    flags.mark_flags_as_required(["config", "workdir"])
    quiet_accelerator_probes()
    app.run(_main)
