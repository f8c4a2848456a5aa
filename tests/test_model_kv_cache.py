"""KV-cache path: prefill over left-padded prompts plus one-token decode steps gives the same
logits as one full forward over the whole sequence, and matches transformers' generate-style
positions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from giftjax.models import Decoder, ModelConfig

ATOL = 1e-5


def _model(**kw):
    cfg = ModelConfig(
        family="qwen3",
        vocab_size=97,
        hidden_size=32,
        intermediate_size=48,
        num_layers=3,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        dtype="float32",
        **kw,
    )
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    # Scale weights up so logits are of order 1 (the 0.02 init gives near-uniform logits).
    state = nnx.state(model, nnx.Param)
    state = jax.tree.map(lambda x: x * 10 if x.ndim > 1 else x, state)
    nnx.update(model, state)
    return model


@pytest.mark.parametrize("qkv_bias,qk_norm", [(False, True), (True, False)])
@pytest.mark.parametrize("chunks", [(1,) * 5, (2, 3)])
def test_prefill_then_decode_equals_full_forward(qkv_bias, qk_norm, chunks):
    model = _model(qkv_bias=qkv_bias, qk_norm=qk_norm)
    rng = np.random.default_rng(0)
    b, t_prompt, n_new = 3, 6, sum(chunks)
    lengths = [6, 4, 1]
    prompt_mask = np.zeros((b, t_prompt), np.int32)
    for i, n in enumerate(lengths):
        prompt_mask[i, t_prompt - n :] = 1
    tokens = rng.integers(1, 97, size=(b, t_prompt + n_new)).astype(np.int32)
    tokens[:, :t_prompt] *= prompt_mask
    full_mask = np.concatenate([prompt_mask, np.ones((b, n_new), np.int32)], axis=1)
    full = np.asarray(model(jnp.asarray(tokens), jnp.asarray(full_mask)))
    assert np.abs(full).max() > 0.5

    cache = model.init_cache(b, t_prompt + n_new + 2)  # spare slots stay empty
    logits, cache = model(jnp.asarray(tokens[:, :t_prompt]), jnp.asarray(prompt_mask), cache=cache)
    real = prompt_mask.astype(bool)
    np.testing.assert_allclose(np.asarray(logits)[real], full[:, :t_prompt][real], atol=ATOL)
    start = t_prompt
    step = jax.jit(lambda m, tok, c: m(tok, cache=c))
    for n in chunks:
        chunk = jnp.asarray(tokens[:, start : start + n])
        logits, cache = step(model, chunk, cache) if n == 1 else model(chunk, cache=cache)
        np.testing.assert_allclose(np.asarray(logits), full[:, start : start + n], atol=ATOL)
        start += n
    assert int(cache.index) == t_prompt + n_new
    np.testing.assert_array_equal(np.asarray(cache.positions), np.array(lengths) + n_new)
    np.testing.assert_array_equal(np.asarray(cache.mask)[:, : t_prompt + n_new], full_mask)
    assert not np.asarray(cache.mask)[:, t_prompt + n_new :].any()


def test_left_padding_does_not_shift_positions():
    """A row's logits do not depend on how much left padding precedes it."""
    model = _model()
    seq = np.array([5, 17, 33, 8], np.int32)
    a = np.asarray(model(jnp.asarray(seq[None]), None))[0]
    padded = np.concatenate([np.zeros(3, np.int32), seq])[None]
    mask = (np.arange(7) >= 3).astype(np.int32)[None]
    b = np.asarray(model(jnp.asarray(padded), jnp.asarray(mask)))[0, 3:]
    np.testing.assert_allclose(b, a, atol=ATOL)


def test_cache_shapes_and_errors():
    model = _model()
    cache = model.init_cache(2, 9)
    assert cache.k.shape == (3, 2, 9, 2, 8) and cache.k.dtype == jnp.float32
    assert cache.mask.shape == (2, 9) and cache.positions.shape == (2,)
    with pytest.raises(ValueError, match="rows"):
        model(jnp.zeros((3, 1), jnp.int32), cache=cache)
    with pytest.raises(ValueError, match="attention_mask"):
        model(jnp.zeros((2, 4), jnp.int32), jnp.ones((2, 3)))
