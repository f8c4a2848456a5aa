"""`generate` end to end: greedy parity with transformers' generate (each family, left-padded
prompts of mixed lengths, EOS stops), log-probs against a full forward pass, the G-samples
layout, determinism, EOS masking, one compile per bucket."""

import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from hf_models import hf_logits, make_hf_model, padded_batch
from precision import assert_same_generation, logits_atol

from giftjax import sampling
from giftjax.models import Decoder, ModelConfig, load_hf
from giftjax.sampling.generate import _generate_jit

PAD = 0
N_NEW = 10


def tiny_model(vocab: int = 61) -> Decoder:
    """A random Qwen3-style decoder with logits of order 1 (scaled-up weights)."""
    cfg = ModelConfig(
        family="qwen3",
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=48,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        qk_norm=True,
        dtype="float32",
        pad_token_id=PAD,
    )
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda x: x * 8 if x.ndim > 1 else x, state))
    return model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def prompts(lengths=(6, 3, 1, 5), total=6, vocab=61, seed=0):
    rng = np.random.default_rng(seed)
    ids, mask = np.zeros((len(lengths), total), np.int32), np.zeros((len(lengths), total), np.int32)
    for b, n in enumerate(lengths):
        ids[b, total - n :] = rng.integers(1, vocab, size=n)
        mask[b, total - n :] = 1
    return ids, mask


def hf_greedy(hf, ids, mask, eos):
    out = hf.generate(
        input_ids=torch.tensor(ids, dtype=torch.long),
        attention_mask=torch.tensor(mask, dtype=torch.long),
        max_new_tokens=N_NEW,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=PAD,
    )[:, ids.shape[1] :].numpy()
    return np.pad(out, ((0, 0), (0, N_NEW - out.shape[1])), constant_values=PAD)


def pick_eos(tokens: np.ndarray) -> int:
    """A token that ends some row mid-way (first at column 1..N-3) and is absent from another."""
    for tok in np.unique(tokens[:, 1:-2]):
        first = [np.nonzero(r == tok)[0] for r in tokens]
        stops = [f[0] for f in first if f.size]
        if any(1 <= s <= N_NEW - 3 for s in stops) and any(f.size == 0 for f in first):
            return int(tok)
    raise AssertionError(f"no token stops one row mid-way and not another: {tokens}")


@pytest.mark.parametrize(
    "case", ["llama_gqa4_llama3rope_untied", "qwen2_gqa4_tied", "qwen3_gqa2_untied"]
)
@pytest.mark.slow
def test_greedy_matches_transformers_with_eos(case):
    hf = make_hf_model(case)
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        model = load_hf(d, dtype=jnp.float32)
    ids, mask = padded_batch(seed=1, lengths=(10, 7, 3, 1, 5, 9), total=10)
    free = hf_greedy(hf, ids, mask, eos=None)
    eos = pick_eos(free)
    expected = hf_greedy(hf, ids, mask, eos=eos)
    out = sampling.generate(
        model, ids, mask, max_new_tokens=N_NEW, key=jax.random.key(0), temperature=0.0,
        eos_id=eos, pad_id=PAD,
    )  # fmt: skip
    # giftjax and PyTorch logits differ by float32 reordering (precision.py): an argmax whose
    # top-2 gap is within twice that may flip, after which a row legitimately parts. Compare
    # each row up to its first such near-tie (in practice there is none: the whole row).
    logits = hf_logits(
        hf, np.concatenate([ids, free], 1), np.concatenate([mask, np.ones_like(free)], 1)
    )[:, ids.shape[1] - 1 : -1]  # [B, N, V]: column n predicts response token n
    top2 = np.sort(logits, axis=-1)[..., -2:]
    tie = top2[..., 1] - top2[..., 0] <= 2 * logits_atol(model.config, logits, ids.shape[1] + N_NEW)
    n_ok = np.where(tie.any(1), tie.argmax(1), N_NEW)
    tokens = np.asarray(out.tokens)
    for row, n in enumerate(n_ok):
        np.testing.assert_array_equal(tokens[row, :n], expected[row, :n], err_msg=f"row {row}")
    assert (n_ok == N_NEW).sum() >= len(n_ok) // 2, f"near-ties in most rows: {n_ok}"
    # The response mask covers the tokens up to and including the first EOS.
    lengths = np.asarray(out.mask).sum(1)
    assert lengths.min() < N_NEW and lengths.max() == N_NEW, lengths  # some rows stopped early
    for row, n in zip(expected[n_ok == N_NEW], lengths[n_ok == N_NEW], strict=True):
        stop = np.nonzero(row == eos)[0]
        assert n == (stop[0] + 1 if stop.size else N_NEW)


def expected_logits(model, ids, mask, out):
    """[B, N, V] logits of one full forward over prompt + response; column n predicts
    response token n."""
    tokens = np.concatenate([np.asarray(ids), np.asarray(out.tokens)], axis=1)
    full_mask = np.concatenate([np.asarray(mask), np.asarray(out.mask)], axis=1)
    logits = np.asarray(model(jnp.asarray(tokens), jnp.asarray(full_mask)))
    return logits[:, ids.shape[1] - 1 : -1]  # position t-1+n predicts response token n


def full_forward_logps(model, ids, mask, out, temperature):
    """log_softmax(logits / T) of each response token from one forward over prompt + response."""
    z = expected_logits(model, ids, mask, out).astype(np.float64) / temperature
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return np.take_along_axis(logp, np.asarray(out.tokens)[..., None], -1)[..., 0]


@pytest.mark.parametrize(
    "temperature,top_k,top_p",
    [
        (1.0, 0, 1.0),
        (0.7, 0, 1.0),
        (0.7, 5, 0.9),
        (0.0, 0, 1.0),
    ],
)
@pytest.mark.slow
def test_logps_match_full_forward(model, temperature, top_k, top_p):
    ids, mask = prompts()
    ids, mask = np.repeat(ids, 2, 0), np.repeat(mask, 2, 0)
    out = sampling.generate(
        model, ids, mask, max_new_tokens=N_NEW, key=jax.random.key(3), temperature=temperature,
        top_k=top_k, top_p=top_p, eos_id=(7, 11), num_samples=2,
    )  # fmt: skip
    ids, mask = np.repeat(ids, 2, 0), np.repeat(mask, 2, 0)  # the rows generate sampled
    expected = full_forward_logps(model, ids, mask, out, temperature or 1.0)
    m = np.asarray(out.mask).astype(bool)
    # Cached generation vs one full forward: two programs whose logits differ by at most the
    # reordering bound (precision.py); log p = z - logsumexp(z) takes two such errors / T.
    atol = 2 * logits_atol(
        model.config, expected_logits(model, ids, mask, out), ids.shape[1] + N_NEW
    )
    np.testing.assert_allclose(
        np.asarray(out.logps)[m], expected[m], atol=atol / (temperature or 1.0)
    )
    assert np.all(np.asarray(out.logps)[~m] == 0)
    assert out.tokens.dtype == jnp.int32 and out.logps.dtype == jnp.float32
    assert out.tokens.shape == out.mask.shape == out.logps.shape == (16, N_NEW)


@pytest.mark.slow
def test_eos_masking_and_padding(model):
    ids, mask = prompts()
    free = sampling.generate(
        model, ids, mask, max_new_tokens=N_NEW, key=jax.random.key(5), num_samples=4
    )
    eos = int(np.asarray(free.tokens)[0, 2])  # row 0 stops at column 2 (or earlier)
    out = sampling.generate(
        model, ids, mask, max_new_tokens=N_NEW, key=jax.random.key(5), num_samples=4,
        eos_id=eos, pad_id=PAD,
    )  # fmt: skip
    # Same draws up to each row's EOS in the free run: two programs (other eos settings), so
    # compared up to the first draw near a CDF boundary (precision.assert_same_generation).
    free_tokens = np.asarray(free.tokens)
    is_eos = free_tokens == eos
    n_free = np.where(is_eos.any(1), is_eos.argmax(1) + 1, N_NEW)
    free_mask = (np.arange(N_NEW)[None] < n_free[:, None]).astype(np.int32)
    rows = np.repeat(ids, 4, 0), np.repeat(mask, 4, 0)
    compared = assert_same_generation(
        model, *rows, (free_tokens, free_mask, free.logps), out, key=jax.random.key(5)
    )
    assert np.mean(compared == n_free) >= 0.5, (compared, n_free)
    # Each row of `out` itself: mask 1 up to and including its first EOS, then PAD, mask 0, 0.
    tokens, m, logps = (np.asarray(x) for x in out)
    for row, row_m, row_lp in zip(tokens, m, logps, strict=True):
        stop = np.nonzero(row == eos)[0]
        n = stop[0] + 1 if stop.size else N_NEW
        np.testing.assert_array_equal(row_m, np.arange(N_NEW) < n)
        assert np.all(row[n:] == PAD) and np.all(row_lp[n:] == 0) and np.all(row_lp[:n] < 0)
    if compared[0] == n_free[0]:  # row 0 drew like the free run, whose EOS is at column <= 2
        assert m[0].sum() <= 3


@pytest.mark.slow
def test_all_rows_stop_early(model):
    """When every row has ended, the remaining columns are padding with mask 0."""
    ids, mask = prompts()
    one = sampling.generate(model, ids, mask, max_new_tokens=1, key=jax.random.key(0))
    first = np.asarray(one.tokens)[:, 0]
    out = sampling.generate(
        model, ids, mask, max_new_tokens=N_NEW, key=jax.random.key(0),
        eos_id=np.unique(first).tolist(), pad_id=PAD,
    )  # fmt: skip
    # Two programs (1 vs N_NEW columns): the first draws agree where they are stable.
    head = tuple(np.asarray(x)[:, :1] for x in out)
    same = assert_same_generation(model, ids, mask, one, head, key=jax.random.key(0)) == 1
    assert same.sum() >= len(same) // 2, same
    np.testing.assert_array_equal(np.asarray(out.mask)[same].sum(1), 1)
    assert np.all(np.asarray(out.tokens)[same, 1:] == PAD)


@pytest.mark.slow
def test_top_k_1_is_greedy_and_group_layout(model):
    ids, mask = prompts()
    kw = dict(max_new_tokens=N_NEW, num_samples=3)
    greedy = sampling.generate(model, ids, mask, key=jax.random.key(0), temperature=0.0, **kw)
    topk1 = sampling.generate(model, ids, mask, key=jax.random.key(9), top_k=1, **kw)
    # Two programs: tokens agree wherever the argmax is not a near-tie (temperature 0 checks
    # the top-2 gap), and top_k=1's log-probs (T = 1) are greedy's log_softmax(logits).
    rows = np.repeat(ids, 3, 0), np.repeat(mask, 3, 0)
    greedy_kw = dict(key=jax.random.key(0), temperature=0.0)
    compared = assert_same_generation(model, *rows, greedy, topk1, **greedy_kw)
    assert compared.sum() >= np.asarray(greedy.mask).sum() // 2, compared
    single = sampling.generate(model, ids, mask, key=jax.random.key(0), temperature=0.0,
                               max_new_tokens=N_NEW)  # fmt: skip
    # Rows g*G .. g*G+G-1 belong to prompt g (one sample per prompt: another batch size).
    repeated = tuple(np.repeat(np.asarray(x), 3, 0) for x in single)
    compared = assert_same_generation(model, *rows, repeated, greedy, **greedy_kw)
    assert compared.sum() >= np.asarray(greedy.mask).sum() // 2, compared


def test_deterministic_and_samples_independent(model):
    ids, mask = prompts()
    kw = dict(max_new_tokens=N_NEW, num_samples=4)
    a = sampling.generate(model, ids, mask, key=jax.random.key(1), **kw)
    b = sampling.generate(model, ids, mask, key=jax.random.key(1), **kw)
    c = sampling.generate(model, ids, mask, key=jax.random.key(2), **kw)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    ta = np.asarray(a.tokens)
    assert not np.array_equal(ta, np.asarray(c.tokens))
    for g in range(len(ids)):  # the G samples of one prompt differ from one another
        group = ta[4 * g : 4 * g + 4]
        assert len({tuple(r) for r in group}) == 4, group


@pytest.mark.slow
def test_compiled_once_per_bucket(model):
    """Prompts of different lengths padded to one bucket: one compile, same greedy tokens."""
    kw = dict(max_new_tokens=N_NEW, temperature=0.0, pad_id=PAD)
    sampling.generate(model, *prompts(seed=1), key=jax.random.key(0), **kw)  # warm
    before = _generate_jit._cache_size()
    for seed, lengths, total in [(2, (4, 2), 5), (3, (7, 1, 3), 7)]:
        ids, mask = prompts(lengths, total, seed=seed)
        b_ids, b_mask, n = sampling.pad_prompts(ids, mask, length=8, batch=4, pad_id=PAD)
        out = sampling.generate(model, b_ids, b_mask, key=jax.random.key(seed), **kw)
        out = sampling.drop_dummy_rows(out, n, 1)
        ref = sampling.generate(model, ids, mask, key=jax.random.key(seed), **kw)
        # Padded vs unpadded: two programs, compared away from argmax near-ties.
        compared = assert_same_generation(
            model, ids, mask, ref, out, key=jax.random.key(seed), temperature=0.0
        )
        assert compared.sum() >= np.asarray(ref.mask).sum() // 2, compared
    # 1 compile for the (4, 8) bucket + 2 for the unpadded reference shapes.
    assert _generate_jit._cache_size() - before == 3


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(num_samples=0), "num_samples"),
        (dict(temperature=-0.5), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_k=1000), "top_k=1000 exceeds"),
        (dict(eos_id=61), "eos_id"),
    ],
)
def test_generate_errors(model, kw, match):
    ids, mask = prompts()
    kw = {"max_new_tokens": 4, **kw}
    with pytest.raises(ValueError, match=match):
        sampling.generate(model, ids, mask, key=jax.random.key(0), **kw)


def test_generate_rejects_bad_prompts(model):
    ids, mask = prompts()
    with pytest.raises(ValueError, match="left-padded"):
        sampling.generate(model, ids, mask[:, ::-1], max_new_tokens=2, key=jax.random.key(0))
    with pytest.raises(ValueError, match="prompt_mask must have"):
        sampling.generate(model, ids, mask[:, 1:], max_new_tokens=2, key=jax.random.key(0))
