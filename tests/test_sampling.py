"""The sampling step (`sample_logits`) on crafted logits, and the host-side bucket helpers.

Expected distributions are written in NumPy here: softmax of logits / T, top-k and the nucleus
(smallest prefix of the sorted probabilities with mass >= top_p), and the statistical checks
use chi-square and per-bin binomial bounds at a false-alarm rate of about 1e-6.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from precision import F32_EPS
from scipy import stats

from giftjax.sampling import (
    bucket_size,
    check_left_padded,
    drop_dummy_rows,
    left_pad,
    pad_prompts,
    sample_logits,
)
from giftjax.sampling.token_sampler import _nucleus_threshold, _two_level_sample

_sample = jax.jit(sample_logits, static_argnames=("temperature", "top_k", "top_p"))
ALPHA = 1e-6  # false-alarm rate of each statistical test
# Log-probs of <= 8 logits of size <= 7 against float64: V u + u |z| per subtraction and one
# division by T (u = eps / 2), under 2e-6; 1e-5 leaves room and still sees a wrong entry.
LOGP_ATOL = 1e-5


def _np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_target(logits, temperature, top_k=0, top_p=1.0):
    """The sampling distribution [V] in NumPy: softmax(logits/T), top-k, then the nucleus."""
    p = np.exp(_np_log_softmax(np.asarray(logits, np.float64) / temperature))
    order = np.argsort(-p, kind="stable")
    keep = np.zeros_like(p, bool)
    kept = order[:top_k] if top_k else order
    q = p[kept] / p[kept].sum()
    mass_before = np.cumsum(q) - q
    keep[kept[mass_before < top_p]] = True
    out = np.where(keep, p, 0.0)
    return out / out.sum()


def _draw(logits_row, n, key, **kw):
    """n independent draws from one row of logits (a batch of n identical rows)."""
    logits = jnp.broadcast_to(jnp.asarray(logits_row, jnp.float32), (n, len(logits_row)))
    tokens, logps = _sample(logits, key, **kw)
    return np.asarray(tokens), np.asarray(logps)


def _check_frequencies(tokens, target):
    """Chi-square over the support and per-bin binomial bounds; no draw outside the support."""
    n, v = len(tokens), len(target)
    counts = np.bincount(tokens, minlength=v)
    outside = counts[target == 0].sum()
    assert outside == 0, f"{outside} draws outside the support {np.nonzero(target)[0].tolist()}"
    support = target > 0
    expected = n * target[support]
    chi2 = ((counts[support] - expected) ** 2 / expected).sum()
    bound = stats.chi2.isf(ALPHA, df=max(support.sum() - 1, 1))
    assert chi2 < bound, f"chi2={chi2:.1f} >= {bound:.1f}; counts {counts}, expected {expected}"
    lo = stats.binom.ppf(ALPHA / 2, n, target)
    hi = stats.binom.isf(ALPHA / 2, n, target)
    bad = np.nonzero((counts < lo) | (counts > hi))[0]
    assert bad.size == 0, f"bins {bad}: counts {counts[bad]} outside {lo[bad]}..{hi[bad]}"


@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.0])
def test_frequencies_match_softmax(temperature):
    logits = np.array([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0, 0.3], np.float32)
    tokens, logps = _draw(logits, 200_000, jax.random.key(0), temperature=temperature)
    _check_frequencies(tokens, _np_target(logits, temperature))
    expected = _np_log_softmax(logits.astype(np.float64) / temperature)[tokens]
    np.testing.assert_allclose(logps, expected, atol=LOGP_ATOL)


@pytest.mark.slow
def test_frequencies_large_vocab_blocked_cumsum():
    """V = 1000 > the cumsum block (128) and not a multiple of it: the two-level cumsum."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=1000).astype(np.float32)
    logits[[3, 130, 257, 999]] += 6.0  # a few heavy bins across blocks, the last one included
    tokens, _ = _draw(logits, 100_000, jax.random.key(1))
    target = _np_target(logits, 1.0)
    heavy = [3, 130, 257, 999]
    coarse = np.append(target[heavy], 1 - target[heavy].sum())  # heavy bins + the rest
    binned = np.array([heavy.index(t) if t in heavy else 4 for t in tokens])
    _check_frequencies(binned, coarse)


@pytest.mark.parametrize(
    "top_k,top_p,temperature",
    [(0, 0.75, 1.0), (0, 0.9, 0.7), (3, 1.0, 1.0), (4, 0.8, 1.0), (0, 0.05, 1.0)],
)
def test_top_k_top_p_support_and_frequencies(top_k, top_p, temperature):
    # Probabilities 0.4, 0.3, 0.15, 0.1, 0.04, 0.01 in shuffled vocabulary order.
    probs = np.array([0.04, 0.3, 0.01, 0.4, 0.1, 0.15])
    logits = np.log(probs).astype(np.float32)
    target = _np_target(logits, temperature, top_k, top_p)
    tokens, logps = _draw(
        logits, 100_000, jax.random.key(2), temperature=temperature, top_k=top_k, top_p=top_p
    )
    _check_frequencies(tokens, target)
    # Log-probs are of the temperature-scaled distribution before filtering.
    expected = _np_log_softmax(logits.astype(np.float64) / temperature)[tokens]
    np.testing.assert_allclose(logps, expected, atol=LOGP_ATOL)


@pytest.mark.slow
def test_nucleus_is_the_smallest_prefix():
    """Hand-written nuclei of probs 0.4, 0.3, 0.15, 0.1, 0.04, 0.01 (ids 3, 1, 5, 4, 0, 2)."""
    logits = np.log([0.04, 0.3, 0.01, 0.4, 0.1, 0.15]).astype(np.float32)
    for top_p, nucleus in [(0.05, {3}), (0.5, {3, 1}), (0.75, {3, 1, 5}), (0.9, {3, 1, 5, 4})]:
        tokens, _ = _draw(logits, 20_000, jax.random.key(3), top_p=top_p)
        assert set(np.unique(tokens).tolist()) == nucleus, (top_p, np.unique(tokens))


@pytest.mark.slow
def test_top_k_1_and_temperature_0_are_greedy():
    rng = np.random.default_rng(4)
    logits = jnp.asarray(rng.normal(size=(64, 300)) * 3, jnp.float32)
    argmax = np.asarray(logits).argmax(-1)
    greedy, greedy_logps = _sample(logits, jax.random.key(0), temperature=0.0)
    np.testing.assert_array_equal(np.asarray(greedy), argmax)
    expected = _np_log_softmax(np.asarray(logits, np.float64))[np.arange(64), argmax]
    # float32 logsumexp of V = 300 terms exp(z - max) <= 1 whose sum is >= 1: relative error of
    # the sum <= V u, so <= V u in the log, plus u |z| for each subtraction (u = eps / 2).
    atol = F32_EPS * (300 / 2 + np.abs(np.asarray(logits)).max())
    np.testing.assert_allclose(np.asarray(greedy_logps), expected, atol=atol)
    for seed, temperature in [(1, 1.0), (2, 0.5), (3, 3.0)]:
        tokens, _ = _sample(logits, jax.random.key(seed), temperature=temperature, top_k=1)
        np.testing.assert_array_equal(np.asarray(tokens), argmax)


def test_deterministic_and_rows_independent():
    logits = jnp.zeros((256, 50), jnp.float32)
    a, _ = _sample(logits, jax.random.key(7))
    b, _ = _sample(logits, jax.random.key(7))
    c, _ = _sample(logits, jax.random.key(8))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.mean(np.asarray(a) == np.asarray(c)) < 0.1  # 1/50 expected
    assert len(np.unique(np.asarray(a))) > 40  # identical rows still draw different tokens


@pytest.mark.parametrize(
    "v,top_p",
    [pytest.param(6, 0.5, marks=pytest.mark.slow), (129, 0.9), (1000, 0.3), (4096, 0.95)],
)
def test_nucleus_threshold_is_the_smallest_kept_weight(v, top_p):
    rng = np.random.default_rng(v)
    w = np.exp(2 * rng.normal(size=(4, v))).astype(np.float32)
    w[:, ::5] = 0.0
    t = np.asarray(_nucleus_threshold(jnp.asarray(w), top_p))
    for row, thr in zip(w, t, strict=True):
        q = np.sort(row.astype(np.float64))[::-1]
        c = np.cumsum(q)
        m = int(np.argmax(c >= top_p * c[-1]))  # the smallest prefix q[:m+1] reaching top_p
        assert thr == np.float32(q[m]), (thr, q[m - 1 : m + 2])


@pytest.mark.parametrize("v", [5, 40, 1000, 4096])
def test_two_level_sample_never_draws_zero_weights(v):
    rng = np.random.default_rng(v)
    w = rng.random((512, v)).astype(np.float32)
    w[w < 0.9] = 0.0
    w[:, -1] = 1e-30  # tiny but positive, in the last (padded) block
    draws = np.asarray(_two_level_sample(jnp.asarray(w), jax.random.key(v)))
    assert np.all(w[np.arange(512), draws] > 0)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(temperature=-1.0), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-2), "top_k"),
        (dict(top_k=11), "top_k=11 exceeds"),
    ],
)
def test_sampling_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        sample_logits(jnp.zeros((2, 10)), jax.random.key(0), **kw)


# ---------------------------------------------------------------------------------------------
# Buckets.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n,kw,expected",
    [
        (1, {}, 1),
        (5, {}, 8),
        (8, {}, 8),
        (9, {}, 16),
        (9, dict(multiple=8), 16),
        (16, dict(multiple=8), 16),
        (3, dict(minimum=16), 16),
        (17, dict(buckets=[16, 64, 32]), 32),
    ],
)
def test_bucket_size(n, kw, expected):
    assert bucket_size(n, **kw) == expected


def test_bucket_size_too_large():
    with pytest.raises(ValueError, match="exceeds the largest bucket"):
        bucket_size(65, buckets=[16, 64])


def test_left_pad_and_pad_prompts():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0, length=6)  # two leading all-pad columns
    np.testing.assert_array_equal(ids, [[0, 0, 0, 5, 6, 7], [0, 0, 0, 0, 0, 8]])
    np.testing.assert_array_equal(mask, [[0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 1]])
    out_ids, out_mask, n = pad_prompts(ids, mask, pad_id=9, length_multiple=4)
    assert n == 2 and out_ids.shape == (2, 4)  # longest 3 -> 4 columns; 2 rows is a bucket
    np.testing.assert_array_equal(out_ids, [[9, 5, 6, 7], [9, 9, 9, 8]])
    out_ids, out_mask, n = pad_prompts(ids, mask, pad_id=9, batch=4, length=5)
    np.testing.assert_array_equal(out_ids[:2], [[9, 9, 5, 6, 7], [9, 9, 9, 9, 8]])
    np.testing.assert_array_equal(out_mask[2:], [[0, 0, 0, 0, 1]] * 2)  # dummy rows
    check_left_padded(out_mask)
    kept = drop_dummy_rows({"tokens": np.arange(12).reshape(12, 1)}, num_rows=2, num_samples=3)
    np.testing.assert_array_equal(kept["tokens"][:, 0], np.arange(6))
    with pytest.raises(ValueError, match="smaller than the prompts"):
        pad_prompts(ids, mask, length=2)


@pytest.mark.parametrize("row", [[1, 0, 1], [0, 0, 0], [1, 1, 0]])
def test_check_left_padded_rejects(row):
    with pytest.raises(ValueError, match="left-padded"):
        check_left_padded(np.array([[0, 1, 1], row]))
