"""KV-cache path: prefill over left-padded prompts plus one-token decode steps gives the same
logits as one full forward over the whole sequence, and matches transformers' generate-style
positions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from precision import decoder_depth, reorder_atol

from giftjax.models import Decoder, ModelConfig


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


_forward = nnx.jit(lambda m, tokens, mask: m(tokens, mask))
_cached = nnx.jit(lambda m, tokens, mask, cache: m(tokens, mask, cache=cache))
_decode = nnx.jit(lambda m, tokens, mask, cache: m.decode_step(tokens, mask, cache=cache))


@pytest.mark.parametrize("qkv_bias,qk_norm", [(False, True), (True, False)])
@pytest.mark.parametrize(
    "chunks,step",
    [
        pytest.param((1,) * 5, _cached, id="call-1x5"),
        pytest.param((1,) * 5, _decode, id="decode_step-1x5"),
        pytest.param((2, 3), _cached, id="call-2+3"),
    ],
)
@pytest.mark.slow
def test_prefill_then_decode_equals_full_forward(qkv_bias, qk_norm, chunks, step):
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
    full = np.asarray(_forward(model, jnp.asarray(tokens), jnp.asarray(full_mask)))
    assert np.abs(full).max() > 0.5
    # Cached and full forwards are different programs (other matmul shapes, a 13-slot cache vs
    # 11 keys): they differ by float32 reordering along the whole decoder chain (about 800
    # summed terms for 3 layers) times the logits' scale, 1.2e-7 * 814 * 4.6 ~ 4.5e-4 here.
    # A wrong position, mask or cache slot moves logits by O(0.1) or more.
    atol = reorder_atol(np.abs(full).max(), decoder_depth(model.config, t_prompt + n_new + 2))

    cache = model.init_cache(b, t_prompt + n_new + 2)  # spare slots stay empty
    prompt = jnp.asarray(tokens[:, :t_prompt])
    logits, cache = _cached(model, prompt, jnp.asarray(prompt_mask), cache)
    real = prompt_mask.astype(bool)
    np.testing.assert_allclose(np.asarray(logits)[real], full[:, :t_prompt][real], atol=atol)
    start = t_prompt
    for n in chunks:
        chunk = jnp.asarray(tokens[:, start : start + n])
        logits, cache = step(model, chunk, None, cache)
        np.testing.assert_allclose(np.asarray(logits), full[:, start : start + n], atol=atol)
        start += n
    assert int(cache.index) == t_prompt + n_new
    np.testing.assert_array_equal(np.asarray(cache.positions), np.array(lengths) + n_new)
    np.testing.assert_array_equal(np.asarray(cache.mask)[:, : t_prompt + n_new], full_mask)
    assert not np.asarray(cache.mask)[:, t_prompt + n_new :].any()


@pytest.mark.slow
def test_left_padding_does_not_shift_positions():
    """A row's logits do not depend on how much left padding precedes it."""
    model = _model()
    seq = np.array([5, 17, 33, 8], np.int32)
    a = np.asarray(_forward(model, jnp.asarray(seq[None]), None))[0]
    padded = np.concatenate([np.zeros(3, np.int32), seq])[None]
    mask = (np.arange(7) >= 3).astype(np.int32)[None]
    b = np.asarray(_forward(model, jnp.asarray(padded), jnp.asarray(mask)))[0, 3:]
    # Two programs (4 vs 7 columns, masked keys): float32 reordering bound over the chain.
    np.testing.assert_allclose(
        b, a, atol=reorder_atol(np.abs(a).max(), decoder_depth(model.config, 7))
    )


def test_cache_shapes_and_errors():
    model = _model()
    cache = model.init_cache(2, 9)
    assert cache.k.shape == (3, 2, 9, 2, 8) and cache.k.dtype == jnp.float32
    assert cache.mask.shape == (2, 9) and cache.positions.shape == (2,)
    with pytest.raises(ValueError, match="rows"):
        model(jnp.zeros((3, 1), jnp.int32), cache=cache)
    with pytest.raises(ValueError, match="attention_mask"):
        model(jnp.zeros((2, 4), jnp.int32), jnp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"one token per row.*\(2, 2\)"):
        model.decode_step(jnp.zeros((2, 2), jnp.int32), cache=cache)
    with pytest.raises(ValueError, match="rows"):
        model.decode_step(jnp.zeros((3, 1), jnp.int32), cache=cache)


def test_decode_step_equals_one_token_call():
    """decode_step and model(..., cache=) with T = 1 are two paths to the same step: the same
    cache bookkeeping exactly, logits and written keys/values up to float32 rounding."""
    model = _model(qkv_bias=True)
    rng = np.random.default_rng(2)
    prompt = jnp.asarray(rng.integers(1, 97, size=(2, 4)), jnp.int32)
    prompt_mask = jnp.asarray([[0, 1, 1, 1], [1, 1, 1, 1]], jnp.int32)
    _, cache = _cached(model, prompt * prompt_mask, prompt_mask, model.init_cache(2, 7))
    token = jnp.asarray(rng.integers(1, 97, size=(2, 1)), jnp.int32)
    token_mask = jnp.asarray([[1], [0]], jnp.int32)  # a padding token in row 1 too
    want, want_cache = _cached(model, token, token_mask, cache)
    got, got_cache = _decode(model, token, token_mask, cache)
    # Two programs over the same 7-slot decoder chain: the reordering bound of its depth
    # times each array's scale (logits, and the keys/values written to the cache).
    depth = decoder_depth(model.config, 7)
    want = np.asarray(want)
    np.testing.assert_allclose(np.asarray(got), want, atol=reorder_atol(np.abs(want).max(), depth))
    for name in ("mask", "index", "positions"):
        np.testing.assert_array_equal(getattr(got_cache, name), getattr(want_cache, name))
    for name in ("k", "v"):
        ref = np.asarray(getattr(want_cache, name))
        np.testing.assert_allclose(
            np.asarray(getattr(got_cache, name)), ref, atol=reorder_atol(np.abs(ref).max(), depth)
        )


@pytest.mark.slow
def test_greedy_decode_loop_under_jit_matches_full_forward():
    """The sampler's pattern: split the model, jit prefill + a fori_loop of decode steps."""
    model = _model()
    graphdef, state = nnx.split(model)
    b, t, n = 2, 5, 4
    prompt = jnp.asarray(np.random.default_rng(1).integers(1, 97, size=(b, t)), jnp.int32)
    mask = jnp.asarray([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], jnp.int32)
    prompt = prompt * mask

    @jax.jit
    def generate(state, prompt, mask):
        m = nnx.merge(graphdef, state)
        cache = m.init_cache(b, t + n)
        logits, cache = m(prompt, mask, cache=cache)
        out = jnp.zeros((b, n), jnp.int32).at[:, 0].set(jnp.argmax(logits[:, -1], -1))

        def step(i, carry):
            out, cache = carry
            logits, cache = nnx.merge(graphdef, state).decode_step(
                jax.lax.dynamic_slice_in_dim(out, i - 1, 1, axis=1), cache=cache
            )
            return out.at[:, i].set(jnp.argmax(logits[:, -1], -1)), cache

        out, _ = jax.lax.fori_loop(1, n, step, (out, cache))
        return out

    out = np.asarray(generate(state, prompt, mask))
    # Greedy by repeated full forwards (no cache). The two programs' logits differ by up to
    # `atol` (float32 reordering, see precision.py), so an argmax is compared only while each
    # earlier step of the row had a top-2 gap above 2 * atol (no legitimate flip possible).
    seq, m = np.asarray(prompt), np.asarray(mask)
    live, checked = np.ones(b, bool), 0
    for i in range(n):
        logits = np.asarray(_forward(model, jnp.asarray(seq), jnp.asarray(m)))[:, -1]
        nxt = logits.argmax(-1)
        np.testing.assert_array_equal(out[live, i], nxt[live], err_msg=f"step {i}")
        checked += live.sum()
        atol = reorder_atol(np.abs(logits).max(), decoder_depth(model.config, t + n))
        top2 = np.sort(logits, axis=-1)[:, -2:]
        live &= top2[:, 1] - top2[:, 0] > 2 * atol
        seq = np.concatenate([seq, nxt[:, None]], axis=1)
        m = np.concatenate([m, np.ones((b, 1), np.int32)], axis=1)
    assert checked >= b * n // 2, f"only {checked} of {b * n} greedy tokens were comparable"
