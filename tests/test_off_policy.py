"""rollout.old_logps="sampler": pi_old from the sampler with truncated importance weights.

The "sampler" here is a genuinely different program from the trainer's fused log-probs: the
full [B, T, V] logits and a log_softmax (as a sampler computes them). In float32 the two agree
to a few ulps of the log-probs (|d| ~ 1e-6, checked), so the weights exp(d) are 1 within ~1e-6
and the losses of the two modes agree within the issue's 1e-5 wherever PPO's clip is inactive.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from giftjax import losses, models, sharding
from giftjax.models.presets import PRESETS
from giftjax.train import config as config_lib
from giftjax.train import logprobs, objectives

P, G, TP, M, V = 4, 4, 6, 5, 64
B = P * G


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})


@pytest.fixture(scope="module")
def setup(mesh):
    cfg = dataclasses.replace(PRESETS["tiny"], vocab_size=V, dtype="float32")
    model = sharding.shard_params(models.Decoder(cfg, rngs=nnx.Rngs(0)), mesh, "fsdp")
    graphdef, params = nnx.split(model)
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, V, (B, TP + M)).astype(np.int32)
    tokens[:, :TP] = np.repeat(tokens[::G, :TP], G, axis=0)  # G responses to each prompt
    attn = np.ones((B, TP + M), np.int32)
    attn[:, :2] = 0
    lengths = rng.integers(2, M + 1, B)
    resp = (np.arange(M)[None] < lengths[:, None]).astype(np.float32)
    attn[:, TP:] = resp.astype(np.int32)
    rewards = rng.random(B).astype(np.float32)
    batch = {
        "tokens": tokens,
        "attn_mask": attn,
        "resp_mask": resp,
        "rewards": rewards,
        "advantages": np.asarray(losses.group_advantages(jnp.asarray(rewards), group_size=G)),
        "ref_logps": (rng.normal(size=(B, M)) * 0.1 - 3.0).astype(np.float32),
    }
    return graphdef, params, batch


def _config(name: str, mode: str):
    c = config_lib.base_config()
    c.algo.name = name
    c.rollout.prompts_per_step = P
    c.rollout.group_size = G
    c.rollout.max_new_tokens = M
    c.rollout.old_logps = mode
    c.data.max_prompt_len = TP
    c.algo.reference = "initial"
    config_lib.validate(c, num_devices=jax.device_count())
    return c


def _sampler_logps(graphdef, params, batch) -> np.ndarray:
    """Log-probs of the response tokens from the full logits (another program)."""
    model = nnx.merge(graphdef, params)
    logits = model(jnp.asarray(batch["tokens"]), jnp.asarray(batch["attn_mask"]))
    full = jax.nn.log_softmax(logits[:, TP - 1 : -1], axis=-1)
    return np.take_along_axis(np.asarray(full), batch["tokens"][:, TP:, None], -1)[..., 0]


def _trainer_logps(graphdef, params, batch, mesh) -> np.ndarray:
    fn = logprobs.logps_fn(graphdef, prompt_len=TP, temperature=1.0, mesh=mesh, rules="fsdp")
    return np.asarray(fn(params, jnp.asarray(batch["tokens"]), jnp.asarray(batch["attn_mask"])))


def _loss(graphdef, params, batch, mesh, name, mode):
    c = _config(name, mode)
    mb_loss = objectives.rl_microbatch_loss(graphdef, c, name=name, mesh=mesh, prompt_len=TP)
    loss, aux = jax.jit(mb_loss)(params, sharding.shard_batch(batch, mesh, "fsdp"))
    return float(loss), jax.device_get(aux)


def _moved(params, scale=2e-3, seed=1):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(
        tree,
        [
            x + scale * jax.random.normal(k, x.shape, x.dtype)
            for x, k in zip(leaves, keys, strict=True)
        ],
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", ["grpo", "dapo", "dr_grpo"])
def test_sampler_mode_equals_recompute_in_float32(mesh, setup, name):
    graphdef, params, batch = setup
    sampler = _sampler_logps(graphdef, params, batch)
    trainer0 = _trainer_logps(graphdef, params, batch, mesh)
    mask = batch["resp_mask"].astype(bool)
    assert np.abs(sampler - trainer0)[mask].max() < 1e-5  # the float32 mismatch is tiny

    # First update of a rollout batch (and every update with updates_per_rollout = 1).
    first = {**batch, "sampler_logps": sampler}
    rec, _ = _loss(graphdef, params, first, mesh, name, "recompute")
    smp, aux = _loss(graphdef, params, first, mesh, name, "sampler")
    assert abs(rec) > 1e-3
    assert abs(smp - rec) <= 1e-5
    assert aux["logprob/tis_truncated"] == 0.0
    assert abs(aux["logprob/tis_weight_mean"] - 1.0) < 1e-5
    assert aux["logprob/mismatch"] < 1e-5

    # A later update: the policy moved; recompute uses the trainer's pi_old pass, sampler
    # the sampler's log-probs of pi_old. Equal while the clip is inactive.
    moved = _moved(params)
    later = {**batch, "sampler_logps": sampler, "old_logps": trainer0}
    rec, rec_aux = _loss(graphdef, moved, later, mesh, name, "recompute")
    smp, _ = _loss(graphdef, moved, later, mesh, name, "sampler")
    assert rec_aux["grpo/clip_fraction"] == 0.0
    assert abs(rec_aux["grpo/ratio_mean"] - 1.0) > 1e-4  # the policy did move
    assert abs(smp - rec) <= 1e-5


def test_perturbed_sampler_logps_are_truncated(mesh, setup):
    graphdef, params, batch = setup
    trainer = _trainer_logps(graphdef, params, batch, mesh)
    mask = batch["resp_mask"]
    # Rows 0-3: the sampler gave their tokens e^-1.5 of the trainer's probability -> the raw
    # weight e^1.5 = 4.5 is capped at 2; rows 4-7: e^-0.5 -> weight e^0.5 = 1.65, kept.
    shift = np.zeros((B, 1), np.float32)
    shift[0:4], shift[4:8] = 1.5, 0.5
    sampler = trainer - shift
    loss, aux = _loss(
        graphdef, params, {**batch, "sampler_logps": sampler}, mesh, "dapo", "sampler"
    )
    truncated = mask[0:4].sum() / mask.sum()
    np.testing.assert_allclose(aux["logprob/tis_truncated"], truncated, rtol=1e-6)
    # DAPO: token-mean of -w * A (the ratio is 1 at the current weights, no KL).
    w = np.minimum(np.exp(shift), 2.0) * np.ones((B, M), np.float32)
    expected = -np.sum(mask * w * batch["advantages"][:, None]) / mask.sum()
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)
    # The cap binds: without it the weight would be e^1.5.
    capped = np.where(shift > 1.0, 2.0, np.exp(shift)) * np.ones((B, M))
    assert np.allclose(w, capped)


def test_truncated_is_weights_formula():
    t = jnp.asarray([[0.0, -1.0, -3.0, 50.0]], jnp.float32)
    s = jnp.asarray([[0.0, -2.0, -1.0, -50.0]], jnp.float32)
    m = jnp.asarray([[1.0, 1.0, 1.0, 0.0]])
    w, aux = losses.truncated_is_weights(t, s, m, cap=2.0)
    np.testing.assert_allclose(np.asarray(w), [[1.0, 2.0, np.exp(-2.0), 2.0]], rtol=1e-6)
    assert float(aux["logprob/tis_truncated"]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="cap"):
        losses.truncated_is_weights(t, s, m, cap=0.5)


def test_bad_old_logps_settings_are_named():
    c = config_lib.base_config()
    c.rollout.old_logps = "trainer"
    with pytest.raises(config_lib.ConfigError, match=r"rollout\.old_logps"):
        config_lib.validate(c, num_devices=1)
    c = config_lib.base_config()
    c.rollout.tis_cap = 0.5
    with pytest.raises(config_lib.ConfigError, match="tis_cap"):
        config_lib.validate(c, num_devices=1)
