"""The jitted train step on 8 fake devices: every loss, micro-batch exactness, sharding.

Micro-batching is the same mathematics computed in a different order (a sum of K partial
numerators, one division), so 1 vs 4 micro-batches differ only by float32 rounding in the
accumulation: a few ulps per partial sum of the loss (|loss| ~ 1) and of each gradient
element, relative to the gradient's norm. The issue's bound, 1e-5 relative, is ~100 ulps.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from precision import decoder_depth, reorder_atol

from giftjax import losses, models, sharding
from giftjax.models.presets import PRESETS
from giftjax.train import config as config_lib
from giftjax.train import logprobs, objectives, updates
from giftjax.train import state as state_lib
from giftjax.train.accumulate import accumulate_grads, split_microbatches

P, G, TP, M, V = 8, 4, 6, 5, 64


def _config(name: str, micro_batches: int):
    c = config_lib.base_config()
    c.algo.name = name
    c.rollout.prompts_per_step = P
    c.rollout.group_size = G
    c.rollout.max_new_tokens = M
    c.data.max_prompt_len = TP
    c.train.micro_batches = micro_batches
    c.algo.reference = "initial"
    config_lib.validate(c, num_devices=jax.device_count())
    return c


def _model(mesh):
    cfg = dataclasses.replace(PRESETS["tiny"], vocab_size=V, dtype="float32")
    model = models.Decoder(cfg, rngs=nnx.Rngs(0))
    return sharding.shard_params(model, mesh, "fsdp")


def _batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    b = P * G
    tokens = rng.integers(1, V, (b, TP + M)).astype(np.int32)
    tokens[:, :TP] = np.repeat(tokens[::G, :TP], G, axis=0)  # G responses to each prompt
    attn = np.ones((b, TP + M), np.int32)
    attn[:, :2] = 0  # left padding
    attn[:G, 2] = 0  # the first prompt is shorter
    lengths = rng.integers(1, M + 1, b)
    resp = (np.arange(M)[None] < lengths[:, None]).astype(np.float32)
    attn[:, TP:] = resp.astype(np.int32)
    rewards = rng.random(b).astype(np.float32)
    batch = {
        "tokens": tokens,
        "attn_mask": attn,
        "resp_mask": resp,
        "rewards": rewards,
        "advantages": np.asarray(losses.group_advantages(jnp.asarray(rewards), group_size=G)),
        "ref_logps": (rng.normal(size=(b, M)) - 3.0).astype(np.float32),
        "old_logps": (rng.normal(size=(b, M)) * 0.1 - 3.0).astype(np.float32),
    }
    return batch


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})


@pytest.mark.parametrize("name", ["gift", "grpo", "dapo", "dr_grpo", "gspo"])
def test_loss_and_grad_independent_of_micro_batches(mesh, name):
    model = _model(mesh)
    graphdef, params = nnx.split(model)
    batch = sharding.shard_batch(_batch(), mesh, "fsdp")
    results = []
    for k in (1, 4):
        c = _config(name, k)
        mb_loss = objectives.rl_microbatch_loss(graphdef, c, name=name, mesh=mesh, prompt_len=TP)

        @jax.jit
        def grads(p, b, mb_loss=mb_loss, k=k):
            mbs = split_microbatches(b, k)
            return accumulate_grads(mb_loss, p, mbs, collect_stats=False)

        results.append(grads(params, batch))
    one, four = results
    assert np.isfinite(float(one.loss)) and float(abs(one.loss)) > 0
    np.testing.assert_allclose(float(four.loss), float(one.loss), rtol=1e-5, atol=1e-7)
    g1 = np.concatenate([np.ravel(x) for x in jax.tree.leaves(one.grads)])
    g4 = np.concatenate([np.ravel(x) for x in jax.tree.leaves(four.grads)])
    assert np.linalg.norm(g1) > 0
    assert np.linalg.norm(g4 - g1) <= 1e-5 * np.linalg.norm(g1)


@pytest.mark.parametrize("name", ["gift", "grpo", "gspo"])
def test_update_runs_sharded_without_nan(mesh, name):
    c = _config(name, 2)
    model = _model(mesh)
    tx = optax.sgd(1e-2)
    graphdef, state = state_lib.init_state(model, tx, seed=0, keep_reference=True)
    shardings = state_lib.state_shardings(state, mesh, "fsdp")
    state = jax.device_put(state, shardings)
    ctx = updates.UpdateContext.create(
        graphdef, tx, c, mesh=mesh, prompt_len=TP, state_sharding=shardings
    )
    update = updates.make_rl_update(ctx)
    batch = sharding.shard_batch(_batch(1), mesh, "fsdp")
    before = jax.tree.map(np.asarray, state.params)
    for _ in range(2):
        state, metrics = update(state, batch)
    assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
    moved = [
        np.max(np.abs(np.asarray(a) - b))
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(before), strict=True)
    ]
    assert max(moved) > 0
    # Parameters keep their FSDP placement through the donated, jitted update.
    for leaf, sh in zip(
        jax.tree.leaves(state.params), jax.tree.leaves(shardings.params), strict=True
    ):
        assert leaf.sharding.is_equivalent_to(sh, leaf.ndim)


def test_response_logps_match_full_logits(mesh):
    """The fused log-probs of response tokens equal log_softmax of the full logits gathered
    at the same positions (float32; a chain of ~10 ops per logit: rtol 1e-5)."""
    model = _model(mesh)
    graphdef, params = nnx.split(model)
    b = _batch(2)
    lp = logprobs.response_logps(
        graphdef,
        params,
        jnp.asarray(b["tokens"]),
        jnp.asarray(b["attn_mask"]),
        prompt_len=TP,
        temperature=1.0,
        mesh=mesh,
        rules="fsdp",
    )
    logits = model(jnp.asarray(b["tokens"]), jnp.asarray(b["attn_mask"]))  # [B, T, V]
    full = jax.nn.log_softmax(logits[:, TP - 1 : -1], axis=-1)
    want = np.take_along_axis(np.asarray(full), b["tokens"][:, TP:, None], axis=-1)[..., 0]
    np.testing.assert_allclose(np.asarray(lp), want, rtol=1e-5, atol=1e-5)


def test_shared_prompt_logps_and_grads_match_full_rows(mesh):
    """``group_size=G`` runs each prompt once (Decoder.shared_prefix_hidden): the log-probs
    and their gradient equal the full-row computation's up to float32 reordering, bounded over
    the decoder's chain of reductions (forward, and twice that for the backward pass)."""
    model = _model(mesh)
    graphdef, params = nnx.split(model)
    b = sharding.shard_batch(_batch(3), mesh, "fsdp")

    def total(p, g):
        lp = logprobs.response_logps(
            graphdef, p, b["tokens"], b["attn_mask"], prompt_len=TP, temperature=1.0,
            mesh=mesh, rules="fsdp", group_size=g,
        )  # fmt: skip
        return jnp.sum(lp * b["resp_mask"]), lp

    (_, full), g_full = jax.jit(jax.value_and_grad(lambda p: total(p, 1), has_aux=True))(params)
    (_, shared), g_shared = jax.jit(jax.value_and_grad(lambda p: total(p, G), has_aux=True))(params)
    depth = decoder_depth(model.config, TP + M)
    logits = model(jnp.asarray(b["tokens"]), jnp.asarray(b["attn_mask"]))
    atol = 2 * reorder_atol(float(np.abs(np.asarray(logits)).max()), depth)  # lse and target
    real = np.asarray(b["resp_mask"]) > 0
    np.testing.assert_allclose(np.asarray(shared)[real], np.asarray(full)[real], atol=atol)
    for a, c in zip(jax.tree.leaves(g_full), jax.tree.leaves(g_shared), strict=True):
        a, c = np.ravel(a), np.ravel(c)
        assert np.linalg.norm(c - a) <= reorder_atol(np.linalg.norm(a), 2 * depth)


def test_grpo_config_overrides_equal_to_loss_defaults_are_honoured(mesh):
    """``algo.grpo.agg="token-mean"`` and ``kl_coef=0.0`` under ``algo.name="grpo"`` are used,
    though they equal grpo_loss's own defaults (the grpo preset's are seq-mean and 0.04)."""
    model = _model(mesh)
    graphdef, params = nnx.split(model)
    batch = {k: jnp.asarray(v) for k, v in _batch(5).items()}
    c = _config("grpo", 1)
    c.algo.grpo.agg, c.algo.grpo.kl_coef = "token-mean", 0.0
    mb_loss = objectives.rl_microbatch_loss(graphdef, c, name="grpo", mesh=mesh, prompt_len=TP)
    loss, _ = jax.jit(mb_loss)(params, batch)
    logps = logprobs.response_logps(
        graphdef, params, batch["tokens"], batch["attn_mask"], prompt_len=TP, temperature=1.0,
        mesh=mesh, rules="fsdp", group_size=G,
    )  # fmt: skip
    m, old, adv = batch["resp_mask"], batch["old_logps"], batch["advantages"]
    want, _ = losses.grpo_loss(logps, old, m, adv, agg="token-mean")
    preset, _ = losses.grpo_loss(logps, old, m, adv, ref_logps=batch["ref_logps"], preset="grpo")
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)
    assert abs(float(loss) - float(preset)) > 1e-3
