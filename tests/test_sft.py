"""sft_loss (token NLL and CHORD phi weighting) against float64 NumPy formulas."""

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads
from precision import F32_EPS

from giftjax.losses import AGG_MODES, sft_loss

# Float32 against float64: a mean over B T = 8 x 9 tokens of a few elementwise operations,
# within u (B T + 16) of the scale (u = eps / 2); gradients are elementwise (u x 16 ~ 1e-6).
RTOL = ATOL = F32_EPS / 2 * (8 * 9 + 16)
GRAD_RTOL = 1e-5
GRAD_ATOL = 1e-8


def np_weights(mask, agg, max_len=None):
    """w[i,t] with loss = sum w * l, written from the definition of each mode."""
    m = np.asarray(mask, np.float64)
    n = m.sum(axis=1)
    seqs = max((n > 0).sum(), 1)
    if agg == "token-mean":
        return m / max(m.sum(), 1.0)
    if agg == "seq-mean-token-mean":
        return m / np.maximum(n, 1.0)[:, None] / seqs
    if agg == "seq-mean-token-sum":
        return m / seqs
    return m / (m.shape[1] if max_len is None else max_len) / seqs


def np_sft(logps, mask, *, weighting="none", agg="token-mean"):
    """Returns (loss, dloss/dlogps, nll_mean, phi_mean) in float64."""
    lp = np.asarray(logps, np.float64)
    m = np.asarray(mask, np.float64)
    p = np.exp(lp)
    phi = p * (1 - p)
    if weighting == "none":
        per, dper = -lp, -np.ones_like(lp)
    else:
        per, dper = -phi * lp, -phi  # phi is a constant in the gradient
    w = np_weights(mask, agg)
    tokens = max(m.sum(), 1.0)
    return (w * per).sum(), w * dper, (m * -lp).sum() / tokens, (m * phi).sum() / tokens


def make_batch(seed, B=8, T=9):
    rng = np.random.default_rng(seed)
    logps = np.log(rng.uniform(0.01, 0.99, (B, T)))
    lengths = rng.integers(1, T + 1, B)
    lengths[2] = 0
    mask = np.arange(T)[None, :] < lengths[:, None]
    return logps.astype(np.float32), mask


@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("weighting", ["none", "chord"])
def test_golden_values_gradients_and_aux(weighting, agg):
    lp, mask = make_batch(0)
    f = lambda x: sft_loss(x, mask, weighting=weighting, agg=agg)
    (loss, aux), grad = jax.jit(jax.value_and_grad(f, has_aux=True))(jnp.asarray(lp))
    want, dwant, nll_mean, phi_mean = np_sft(lp, mask, weighting=weighting, agg=agg)
    np.testing.assert_allclose(loss, want, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grad, dwant, rtol=GRAD_RTOL, atol=GRAD_ATOL)
    np.testing.assert_allclose(aux["sft/nll_mean"], nll_mean, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(aux["sft/phi_mean"], phi_mean, rtol=RTOL, atol=ATOL)


def test_default_is_token_mean_nll():
    lp = jnp.log(jnp.array([[0.5, 0.25, 0.9], [0.1, 0.2, 0.3]]))
    mask = jnp.array([[1, 1, 0], [1, 0, 0]])
    loss, aux = sft_loss(lp, mask)
    np.testing.assert_allclose(loss, -(np.log(0.5) + np.log(0.25) + np.log(0.1)) / 3, rtol=1e-6)
    assert float(aux["denominator"]) == 3.0


def test_chord_weight_is_constant_in_the_gradient():
    # One token, p = 0.3: loss -phi log p with phi = 0.21; d/dlogp = -0.21 (not
    # -phi - phi'(p) p log p, which the gradient would be if phi were differentiated).
    lp = jnp.log(jnp.array([[0.3]]))
    loss, grad = jax.value_and_grad(lambda x: sft_loss(x, jnp.ones((1, 1)), weighting="chord")[0])(
        lp
    )
    np.testing.assert_allclose(loss, -0.21 * np.log(0.3), rtol=1e-6)
    np.testing.assert_allclose(grad, [[-0.21]], rtol=1e-6)


def test_check_grads_finite_differences():
    lp, mask = make_batch(1, B=4, T=5)
    f = lambda x: sft_loss(x, mask, agg="seq-mean-token-mean")[0]
    check_grads(f, (jnp.asarray(lp),), order=1, modes=("rev",), eps=1e-2)


@pytest.mark.parametrize(
    ("args", "kw", "exc", "pattern"),
    [
        ((jnp.zeros((4,)), jnp.ones((4,))), {}, ValueError, r"logps must have shape \[B, T\]"),
        ((jnp.zeros((4, 5), jnp.int32), jnp.ones((4, 5))), {}, TypeError, "logps must be a float"),
        ((jnp.zeros((4, 5)), jnp.ones((4, 6))), {}, ValueError, "mask must have the shape"),
        (
            (jnp.zeros((4, 5)), jnp.ones((4, 5))),
            {"weighting": "focal"},
            ValueError,
            r"weighting must be one of \('none', 'chord'\), got 'focal'",
        ),
        (
            (jnp.zeros((4, 5)), jnp.ones((4, 5))),
            {"agg": "sum"},
            ValueError,
            r"agg must be one of \('token-mean'",
        ),
    ],
)
def test_errors(args, kw, exc, pattern):
    with pytest.raises(exc, match=pattern):
        sft_loss(*args, **kw)


@settings(max_examples=25)
@given(
    shape=st.sampled_from([(1, 1), (1, 6), (3, 1), (4, 5)]),
    data=st.data(),
    weighting=st.sampled_from(["none", "chord"]),
    agg=st.sampled_from(AGG_MODES),
)
@pytest.mark.slow
def test_property_finite(shape, data, weighting, agg):
    values = st.one_of(st.sampled_from([-50.0, -1e-6, 0.0]), st.floats(-60, 0, width=32))
    lp = data.draw(hnp.arrays(np.float32, shape, elements=values))
    if data.draw(st.booleans()):
        lp = np.full(shape, lp.flat[0], np.float32)
    mask = data.draw(hnp.arrays(np.bool_, shape))
    f = lambda x: sft_loss(x, mask, weighting=weighting, agg=agg)
    (loss, aux), grad = jax.value_and_grad(f, has_aux=True)(jnp.asarray(lp))
    assert np.isfinite(loss) and loss >= 0
    assert np.all(np.isfinite(grad))
    assert all(np.isfinite(v) for v in aux.values())
    assert np.all(np.asarray(grad)[~mask] == 0.0)
