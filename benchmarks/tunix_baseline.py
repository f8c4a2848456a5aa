"""tunix 0.1.7's GRPO on the configuration of `benchmarks/rl_step.py`: one full step, timed.

The baseline of the RL-step speed comparison (`benchmarks/rl_step.py --baseline tunix`):
tunix (`google-tunix==0.1.7`) builds GRPO from its own pieces, `RLCluster` (vanilla rollout
engine, actor/reference/rollout on one mesh, weights shared between actor and rollout) and
`GRPOLearner`, on the same problem as giftjax's RL step:

- 8 prompts x G=4 samples (32 rows), 32-token prompts, 64 new tokens at temperature 1 with no
  early stop (the EOS id is outside the model's vocabulary, so it is never sampled);
- the Qwen2-shaped decoder of `benchmarks/model_backward.py` (4 layers, width 256, 4 heads /
  2 KV heads, head_dim 64, MLP 688, vocabulary 4096, tied embeddings, q/k/v bias, float32),
  with the SAME initial weights: `tunix_qwen2_from_giftjax` copies a giftjax `Decoder` into
  `tunix.models.qwen2.model.Qwen2` (the reference model is a second copy);
- GRPO with KL to the reference (beta 0.04), one iteration per batch, one optimiser update per
  rollout; the reward function is passed in and sees the completion token ids.

One step, as tunix's `RLLearner.train` runs it for a batch (without its data-queue thread):
`learner._generate_and_compute_advantage` (rollout, reference log-probs, rewards, advantages),
then `rl_cluster.update_actor` (policy log-probs, GRPO loss, gradient, optimiser). The step
returns its wall time and the split: `rollout` (`RLCluster.generate`), `reference`
(`RLCluster.get_ref_per_token_logps`, blocked until ready), `update` (`update_actor`, which
waits for its computations) and `other` (rewards, advantages, host glue).

tunix and giftjax install side by side (same jax 0.10.2, flax 0.12.8, optax 0.2.8), so
`benchmarks/rl_step.py --baseline tunix` imports this module in giftjax's process:

    pip install -e ".[bench]"      # giftjax plus google-tunix==0.1.7
    python benchmarks/tunix_baseline.py --steps 10

Text crosses tunix's tokenizer interface as space-separated token ids (`IdTokenizer`), so
prompts are exactly the given ids and completions decode back to the sampled ids.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from giftjax.models import Decoder, ModelConfig

# The problem of benchmarks/rl_step.py (the giftjax-vs-tunix RL step).
NUM_PROMPTS, NUM_GENERATIONS, PROMPT_LEN, NEW_TOKENS = 8, 4, 32, 64
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

RewardFn = Callable[[np.ndarray], np.ndarray]  # completion ids [B, N] int -> rewards [B]


class IdTokenizer:
    """tunix's tokenizer interface over decimal token ids: "17 5 301" <-> [17, 5, 301].

    pad and EOS are `vocab_size` and `vocab_size + 1`, ids the model never samples, so no row
    stops early and no sampled token is mistaken for padding; no BOS is prepended.
    """

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def encode(self, text: str, **kwargs) -> list[int]:
        del kwargs
        return [int(tok) for tok in text.split()]

    def decode(self, ids, **kwargs) -> str:
        del kwargs
        return " ".join(str(int(i)) for i in ids)

    def bos_id(self) -> None:
        return None

    def pad_id(self) -> int:
        return self.vocab_size

    def eos_id(self) -> int:
        return self.vocab_size + 1


def tunix_qwen2_from_giftjax(model: Decoder):
    """A `tunix.models.qwen2.model.Qwen2` holding a copy of a giftjax Qwen2 decoder's weights.

    Layouts: giftjax stacks layers ([L, ...] leaves) and keeps q/k/v biases as [N, H] / [K, H];
    tunix has one module per layer, flat [N*H] / [K*H] biases and `nnx.Linear` MLP kernels.
    The projections' [D, N, H], [N, H, D], [D, F] and [F, D] layouts are the same.
    """
    from tunix.models.qwen2 import model as qwen2

    c = model.config
    if c.family != "qwen2" or not c.qkv_bias or c.o_bias or c.mlp_bias or c.qk_norm:
        raise ValueError(f"tunix's Qwen2 needs a plain qwen2 config; received {c}.")
    if c.rope_type != "default":
        raise ValueError(f"tunix's Qwen2 has default RoPE only; received {c.rope_type!r}.")
    config = qwen2.ModelConfig(
        num_layers=c.num_layers,
        vocab_size=c.vocab_size,
        embed_dim=c.hidden_size,
        hidden_dim=c.intermediate_size,
        num_heads=c.num_heads,
        head_dim=c.head_dim,
        num_kv_heads=c.num_kv_heads,
        rope_theta=int(c.rope_theta),
        norm_eps=c.rms_norm_eps,
        use_tied_embedding=c.tie_word_embeddings,
        dtype=jnp.dtype(c.dtype),
        param_dtype=jnp.dtype(c.param_dtype),
    )
    out = qwen2.Qwen2(config, rngs=nnx.Rngs(0))

    def put(var: nnx.Variable, value: jax.Array) -> None:
        if var[...].shape != value.shape:
            raise ValueError(f"shape {value.shape} does not fit tunix's {var[...].shape}.")
        var[...] = jnp.array(value, dtype=var[...].dtype)  # a copy, not shared

    put(out.embedder.input_embedding, model.embed[...])
    if not c.tie_word_embeddings:
        put(out.lm_head.w, model.lm_head[...])
    put(out.final_norm.w, model.final_norm.weight[...])
    g = model.layers
    for i, layer in enumerate(out.layers):
        put(layer.input_layernorm.w, g.input_norm.weight[...][i])
        put(layer.post_attention_layernorm.w, g.post_attn_norm.weight[...][i])
        put(layer.attn.q_proj.w, g.attn.q_proj[...][i])
        put(layer.attn.k_proj.w, g.attn.k_proj[...][i])
        put(layer.attn.v_proj.w, g.attn.v_proj[...][i])
        put(layer.attn.o_proj.w, g.attn.o_proj[...][i])
        put(layer.attn.q_bias, g.attn.q_bias[...][i].reshape(-1))
        put(layer.attn.k_bias, g.attn.k_bias[...][i].reshape(-1))
        put(layer.attn.v_bias, g.attn.v_bias[...][i].reshape(-1))
        put(layer.mlp.gate_proj.kernel, g.mlp.gate_proj[...][i])
        put(layer.mlp.up_proj.kernel, g.mlp.up_proj[...][i])
        put(layer.mlp.down_proj.kernel, g.mlp.down_proj[...][i])
    return out


def _timed(fn: Callable, times: dict[str, float], key: str) -> Callable:
    """Wraps `fn` so that each call adds its wall time (outputs ready) to `times[key]`."""

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        jax.block_until_ready([x for x in jax.tree.leaves(out) if isinstance(x, jax.Array)])
        times[key] = times.get(key, 0.0) + time.perf_counter() - t0
        return out

    return wrapper


def make_tunix_step(
    model: Decoder,
    prompt_ids: np.ndarray,
    reward_fn: RewardFn,
    *,
    num_generations: int = NUM_GENERATIONS,
    max_new_tokens: int = NEW_TOKENS,
    beta: float = 0.04,
    optimizer: optax.GradientTransformation | None = None,
    temperature: float = 1.0,
    seed: int = 0,
) -> Callable[[], dict[str, float]]:
    """tunix's GRPO (RLCluster + GRPOLearner) on a copy of `model`; returns `step()`.

    Args:
      model: a giftjax qwen2 `Decoder`; tunix's actor and reference start from copies of its
        weights (`tunix_qwen2_from_giftjax`).
      prompt_ids: [P, T_p] int prompts (no padding, ids in [0, V)); each step samples
        `num_generations` completions of each.
      reward_fn: completion ids [P*G, max_new_tokens] int32 (prompt-major, G consecutive rows
        per prompt) -> rewards [P*G] float; called on the host, as giftjax's step calls it.
      num_generations: G.
      max_new_tokens: tokens sampled per completion (there is no early stop).
      beta: KL coefficient to the reference model.
      optimizer: the actor's optax optimiser (default `optax.adamw(1e-6)`).
      temperature: sampling temperature (top-p 1, no top-k).
      seed: the rollout's sampling seed.

    Returns:
      `step()`: runs one GRPO step (rollout, reward, reference, update) and returns
      {"step", "rollout", "reference", "update", "other"} in seconds.
    """
    from tunix.rl import rl_cluster as rl_cluster_lib
    from tunix.rl.grpo import grpo_learner
    from tunix.rl.rollout import base_rollout

    prompt_ids = np.asarray(prompt_ids)
    if prompt_ids.ndim != 2 or not np.issubdtype(prompt_ids.dtype, np.integer):
        raise ValueError(f"prompt_ids must be [P, T] int; received {prompt_ids.shape}.")
    vocab = model.config.vocab_size
    if prompt_ids.min() < 0 or prompt_ids.max() >= vocab:
        raise ValueError(f"prompt_ids must lie in [0, {vocab}); received values outside.")
    tokenizer = IdTokenizer(vocab)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("fsdp", "tp"))
    roles = rl_cluster_lib.Role
    cluster_config = rl_cluster_lib.ClusterConfig(
        role_to_mesh={roles.ACTOR: mesh, roles.REFERENCE: mesh, roles.ROLLOUT: mesh},
        rollout_engine="vanilla",
        offload_to_cpu=False,
        training_config=rl_cluster_lib.RLTrainingConfig(
            actor_optimizer=optimizer if optimizer is not None else optax.adamw(1e-6),
            eval_every_n_steps=10**9,
            max_steps=10**9,
            pbar_description=None,
            # In prompts (tunix multiplies by G): the whole batch in one rollout and one
            # reference call, as RLLearner.train defaults them to the training batch.
            rollout_micro_batch_size=prompt_ids.shape[0],
            compute_logps_micro_batch_size=prompt_ids.shape[0],
        ),
        rollout_config=base_rollout.RolloutConfig(
            max_tokens_to_generate=max_new_tokens,
            max_prompt_length=prompt_ids.shape[1],
            kv_cache_size=prompt_ids.shape[1] + max_new_tokens,
            temperature=temperature,
            top_p=1.0,
            top_k=None,
            seed=seed,
            eos_tokens=[tokenizer.eos_id()],
        ),
    )
    cluster = rl_cluster_lib.RLCluster(
        actor=tunix_qwen2_from_giftjax(model),
        reference=tunix_qwen2_from_giftjax(model),
        tokenizer=tokenizer,
        cluster_config=cluster_config,
    )

    def tunix_reward(prompts, completions, **kwargs) -> list[float]:
        del prompts, kwargs
        ids = np.array([tokenizer.encode(text) for text in completions], np.int32)
        return [float(r) for r in np.asarray(reward_fn(ids)).reshape(-1)]

    learner = grpo_learner.GRPOLearner(
        rl_cluster=cluster,
        algo_config=grpo_learner.GRPOConfig(
            num_generations=num_generations, num_iterations=1, beta=beta
        ),
        reward_fns=tunix_reward,
    )
    times: dict[str, float] = {}
    cluster.generate = _timed(cluster.generate, times, "rollout")
    cluster.get_ref_per_token_logps = _timed(cluster.get_ref_per_token_logps, times, "reference")
    # As RLLearner._prepare_data does: each prompt repeated G times, consecutively.
    prompts = [tokenizer.decode(row) for row in np.repeat(prompt_ids, num_generations, axis=0)]

    def step() -> dict[str, float]:
        times.clear()
        t0 = time.perf_counter()
        example = learner._generate_and_compute_advantage({"prompts": list(prompts)})
        t1 = time.perf_counter()
        cluster.update_actor([example], None, skip_jit=False)
        cluster.global_steps += 1  # what RLLearner.train does when weights are shared
        t2 = time.perf_counter()
        out = {"step": t2 - t0, "rollout": times.get("rollout", 0.0)}
        out["reference"] = times.get("reference", 0.0)
        out["update"] = t2 - t1
        out["other"] = out["step"] - out["rollout"] - out["reference"] - out["update"]
        return out

    return step


def default_reward(completion_ids: np.ndarray) -> np.ndarray:
    """A cheap stand-in reward: the fraction of even token ids in each completion, [B]."""
    return np.mean(np.asarray(completion_ids) % 2 == 0, axis=-1).astype(np.float32)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps after warm-up")
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    import tunix  # noqa: F401  (fail early with the install hint below)

    model = Decoder(BENCH_CONFIG, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    prompt_ids = rng.integers(0, BENCH_CONFIG.vocab_size, (NUM_PROMPTS, PROMPT_LEN))
    step = make_tunix_step(model, prompt_ids, default_reward)
    for _ in range(args.warmup):
        step()
    runs = [step() for _ in range(args.steps)]
    print(
        f"tunix GRPO step, {NUM_PROMPTS} prompts x G={NUM_GENERATIONS}, {PROMPT_LEN}+{NEW_TOKENS}"
        f" tokens; jax {jax.__version__}, {os.cpu_count()} CPUs; median of {args.steps} steps"
        f" after {args.warmup} warm-up; load average {os.getloadavg()}"
    )
    for key in ("step", "rollout", "reference", "update", "other"):
        values = [r[key] for r in runs]
        print(f"  {key:9s} {statistics.median(values):7.3f} s  (min {min(values):.3f})")


if __name__ == "__main__":
    main()
