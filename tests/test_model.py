"""Decoder structure: preset parameter counts, hidden-state output, dtypes, remat, compile time."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from precision import decoder_depth, reorder_atol

from giftjax.models import Decoder, ModelConfig
from giftjax.models.presets import PRESETS, get_preset

# Published parameter counts of the released checkpoints.
PUBLISHED = {
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-1.5b": 1_543_714_304,
    "qwen2.5-7b": 7_615_616_512,
    "qwen2.5-32b": 32_763_876_352,
    "llama3.1-8b": 8_030_261_248,
    "qwen3-8b": 8_190_735_360,
}


def _abstract_state(config):
    abstract = nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0)))
    return nnx.split(abstract)


def _count(state) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(state))


def test_qwen25_7b_count_from_config_arithmetic():
    """The 7B count written out from its config.json (V, D, F, L, N, K, H)."""
    v, d, f, layers, n, k, h = 152064, 3584, 18944, 28, 28, 4, 128
    attn = d * n * h + 2 * d * k * h + n * h * d + (n * h + 2 * k * h)  # q, k, v, o, qkv bias
    per_layer = attn + 3 * d * f + 2 * d  # + SwiGLU MLP + two norms
    total = layers * per_layer + 2 * v * d + d  # + untied embedding and head + final norm
    assert total == 7_615_616_512
    _, state = _abstract_state(get_preset("qwen2.5-7b"))
    assert _count(state) == total


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_parameter_counts(name):
    _, state = _abstract_state(PRESETS[name])
    assert _count(state) == PUBLISHED[name] == PRESETS[name].num_params
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state))


def test_every_parameter_has_logical_names():
    _, state = _abstract_state(get_preset("tiny", qk_norm=True, mlp_bias=True, o_bias=True))
    allowed = {"embed", "vocab", "heads", "kv_heads", "head_dim", "mlp", "layers"}
    for path, var in nnx.to_flat_state(state):
        names = var.get_metadata().get("out_sharding")
        assert names is not None and len(names) == var.get_value().ndim, path
        assert set(names) <= allowed, (path, names)
        assert (names[0] == "layers") == (path[0] == "layers"), (path, names)


_forward = nnx.jit(lambda m, tokens, hidden: m(tokens, return_hidden=hidden), static_argnums=2)


@pytest.mark.parametrize("tied", [pytest.param(True, marks=pytest.mark.slow), False])
def test_return_hidden_times_lm_head_gives_logits(tied):
    cfg = get_preset("tiny", dtype="float32", tie_word_embeddings=tied)
    model = Decoder(cfg, rngs=nnx.Rngs(1))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 512, (2, 7)), jnp.int32)
    logits = _forward(model, tokens, False)
    hidden = _forward(model, tokens, True)
    assert logits.shape == (2, 7, 512) and hidden.shape == (2, 7, 64)
    w = model.lm_head_weight()
    assert w.shape == (64, 512)
    if tied:
        np.testing.assert_array_equal(w, model.embed[...].T)
    # One matmul over D = 64 in two programs: eps * D * sum_d |h_d w_dv| (precision.py).
    atol = reorder_atol(float((jnp.abs(hidden) @ jnp.abs(w)).max()), 64)
    np.testing.assert_allclose(hidden @ w, logits, atol=atol)


@pytest.mark.slow
def test_bfloat16_compute_float32_params():
    cfg = get_preset("tiny")  # default dtype bfloat16, param_dtype float32
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    tokens = jnp.arange(10, dtype=jnp.int32).reshape(2, 5)
    logits = _forward(model, tokens, False)
    hidden = _forward(model, tokens, True)
    assert logits.dtype == jnp.float32 and hidden.dtype == jnp.bfloat16
    ref = _forward(Decoder(cfg.replace(dtype="float32"), rngs=nnx.Rngs(0)), tokens, False)
    # bf16 has 8 mantissa bits: logits agree to a few 1e-3 of their scale.
    np.testing.assert_allclose(logits, ref, atol=2e-2 * float(jnp.abs(ref).max()))


@pytest.mark.slow
def test_remat_policies_give_the_same_gradients():
    """Rematerialisation changes what is saved for the backward pass, never the gradient."""
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 512, (2, 6)), jnp.int32)
    _, state = nnx.split(Decoder(get_preset("tiny", dtype="float32"), rngs=nnx.Rngs(0)))
    grads = {}
    for remat in ("none", "full", "dots_no_batch", "save_qkv_proj"):
        # Same parameters, another static config: merge the state into that graphdef.
        graphdef, _ = _abstract_state(get_preset("tiny", dtype="float32", remat=remat))

        def loss(state, graphdef=graphdef):
            return jnp.mean(jax.nn.log_softmax(nnx.merge(graphdef, state)(tokens))[..., 3])

        grads[remat] = jax.jit(jax.grad(loss))(state)
    # Remat changes the compiled program (recomputation, other fusions), so the sums may run
    # in another order: the reordering bound over the backward chain (about twice the forward
    # reductions plus the B*T = 12 positions summed into each weight gradient).
    cfg = get_preset("tiny", dtype="float32")
    depth = 2 * decoder_depth(cfg, kv_len=6) + 12
    for remat in ("full", "dots_no_batch", "save_qkv_proj"):
        for a, b in zip(jax.tree.leaves(grads["none"]), jax.tree.leaves(grads[remat]), strict=True):
            atol = reorder_atol(max(float(np.abs(a).max()), np.finfo(np.float32).tiny), depth)
            np.testing.assert_allclose(a, b, atol=atol)


def test_config_errors_name_the_value():
    with pytest.raises(ValueError, match="num_kv_heads=3"):
        ModelConfig(num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="'mamba'"):
        ModelConfig(family="mamba")
    with pytest.raises(ValueError, match="remat='sometimes'"):
        ModelConfig(remat="sometimes")
    with pytest.raises(ValueError, match="unknown model preset 'gpt5'"):
        get_preset("gpt5")
    model = Decoder(get_preset("tiny"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"tokens must be \[B, T\]"):
        model(jnp.zeros((4,), jnp.int32))
    with pytest.raises(ValueError, match="integer ids; received dtype float32"):
        model(jnp.zeros((1, 4), jnp.float32))
