"""una_loss (binary MSE, binary BCE, score MSE) against float64 NumPy formulas."""

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads
from precision import F32_EPS

from giftjax.losses import una_loss

# Float32 against float64: the implicit reward sums T = 7 tokens, the loss averages B = 10
# sequences, ~10 elementwise operations: within u (B T + 16) of the scale (u = eps / 2).
RTOL = ATOL = F32_EPS / 2 * (10 * 7 + 16)
GRAD_RTOL = 1e-5  # gradients: u (T + 16) ~ 1.4e-6 relative, with a floor for zeros
GRAD_ATOL = 1e-8


def np_sigmoid(z):
    return np.exp(-np.logaddexp(0.0, -z))


def np_una(logps, ref_logps, mask, target, *, beta, kind):
    """Returns (loss, dloss/dlogps, k, s) in float64."""
    lp, ref, y = (np.asarray(x, np.float64) for x in (logps, ref_logps, target))
    m = np.asarray(mask, np.float64)
    B = lp.shape[0]
    k = (m * (lp - ref)).sum(axis=1)
    z = beta * k
    s = np_sigmoid(z)
    if kind == "binary_mse":
        # (s - 1)^2 for good (y = 1), s^2 for bad (y = 0).
        per = np.where(y == 1, (s - 1) ** 2, s**2)
        dk = 2 * (s - y) * s * (1 - s) * beta
    elif kind == "binary_bce":
        per = -(y * np.log(s) + (1 - y) * np.log(1 - s))
        dk = beta * (s - y)
    else:
        per = (s - np_sigmoid(y)) ** 2
        dk = 2 * (s - np_sigmoid(y)) * s * (1 - s) * beta
    return per.sum() / B, m * dk[:, None] / B, k, s


def make_batch(seed, kind, B=10, T=7):
    rng = np.random.default_rng(seed)
    logps = -rng.uniform(0.05, 3.0, (B, T))
    ref = logps + rng.normal(0.0, 0.3, (B, T))
    lengths = rng.integers(1, T + 1, B)
    lengths[1] = 0  # a fully masked row: k = 0, s = 1/2
    mask = np.arange(T)[None, :] < lengths[:, None]
    if kind == "score_mse":
        target = rng.normal(0.0, 2.0, B)
    else:
        target = rng.integers(0, 2, B).astype(np.float64)
        target[:2] = [0.0, 1.0]
    return logps.astype(np.float32), ref.astype(np.float32), mask, target.astype(np.float32)


@pytest.mark.parametrize("beta", [0.1, 1.0])
@pytest.mark.parametrize("kind", ["binary_mse", "binary_bce", "score_mse"])
def test_golden_values_gradients_and_aux(kind, beta):
    lp, ref, mask, target = make_batch(0, kind)
    f = lambda x: una_loss(x, ref, mask, target, beta=beta, kind=kind)
    (loss, aux), grad = jax.jit(jax.value_and_grad(f, has_aux=True))(jnp.asarray(lp))
    want, dwant, k, s = np_una(lp, ref, mask, target, beta=beta, kind=kind)
    np.testing.assert_allclose(loss, want, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grad, dwant, rtol=GRAD_RTOL, atol=GRAD_ATOL)
    np.testing.assert_allclose(aux["una/implicit_reward_mean"], k.mean(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(aux["una/score_mean"], s.mean(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(aux["una/target_mean"], np.mean(target), rtol=RTOL, atol=ATOL)
    assert float(aux["denominator"]) == lp.shape[0]


def test_hand_computed_values():
    # k = 0.5 + 0.5 = 1 (third token masked), beta = 2: s = sigmoid(2).
    lp = jnp.array([[0.5, 0.5, 7.0]])
    ref, mask = jnp.zeros((1, 3)), jnp.array([[1, 1, 0]])
    s = 1 / (1 + np.exp(-2.0))
    loss, _ = una_loss(lp, ref, mask, jnp.array([1.0]), beta=2.0)
    np.testing.assert_allclose(loss, (s - 1) ** 2, rtol=1e-6)
    loss, _ = una_loss(lp, ref, mask, jnp.array([0.0]), beta=2.0)
    np.testing.assert_allclose(loss, s**2, rtol=1e-6)
    loss, _ = una_loss(lp, ref, mask, jnp.array([0.0]), beta=2.0, kind="binary_bce")
    np.testing.assert_allclose(loss, -np.log(1 - s), rtol=1e-6)
    loss, _ = una_loss(lp, ref, mask, jnp.array([0.3]), beta=2.0, kind="score_mse")
    np.testing.assert_allclose(loss, (s - 1 / (1 + np.exp(-0.3))) ** 2, rtol=1e-6)


@pytest.mark.parametrize("kind", ["binary_mse", "binary_bce", "score_mse"])
def test_check_grads_finite_differences(kind):
    lp, ref, mask, target = make_batch(1, kind, B=4, T=5)
    f = lambda x: una_loss(x, ref, mask, target, beta=0.5, kind=kind)[0]
    check_grads(f, (jnp.asarray(lp),), order=1, modes=("rev",), eps=1e-2)


def test_bce_stable_for_saturated_scores():
    # beta k = -400: float32 sigmoid is 0 and log(s) would be -inf; log_sigmoid is exact.
    lp, ref = jnp.full((1, 4), -100.0), jnp.zeros((1, 4))
    loss, _ = una_loss(lp, ref, jnp.ones((1, 4)), jnp.array([1.0]), beta=1.0, kind="binary_bce")
    np.testing.assert_allclose(loss, 400.0, rtol=1e-6)


@pytest.mark.parametrize(
    ("change", "exc", "pattern"),
    [
        ({"logps": jnp.zeros((4,))}, ValueError, r"logps must have shape \[B, T\]"),
        ({"logps": jnp.zeros((4, 5), jnp.int32)}, TypeError, "logps must be a floating-point"),
        ({"ref_logps": jnp.zeros((4, 6))}, ValueError, "ref_logps must have the shape of logps"),
        ({"ref_logps": jnp.zeros((4, 5), jnp.int32)}, TypeError, "ref_logps must be a floating"),
        ({"mask": jnp.ones((3, 5))}, ValueError, r"mask must have the shape of logps \(4, 5\)"),
        ({"target": jnp.zeros((3,))}, ValueError, r"target must have shape \[B\] with B=4"),
        ({"target": jnp.zeros((4,), jnp.int32)}, TypeError, "target must be a floating-point"),
        ({"kind": "mse"}, ValueError, r"kind must be one of \('binary_mse', 'binary_bce', 'score"),
        ({"beta": 0.0}, ValueError, r"beta must be > 0.0, got 0.0"),
        ({"beta": None}, TypeError, r"beta must be a float, got None"),
    ],
)
def test_errors(change, exc, pattern):
    kw = {
        "logps": jnp.zeros((4, 5)),
        "ref_logps": jnp.zeros((4, 5)),
        "mask": jnp.ones((4, 5)),
        "target": jnp.zeros((4,)),
        "beta": 1.0,
    }
    kw.update(change)
    args = [kw.pop(n) for n in ("logps", "ref_logps", "mask", "target")]
    with pytest.raises(exc, match=pattern):
        una_loss(*args, **kw)


def test_beta_is_required():
    x = jnp.zeros((2, 3))
    with pytest.raises(TypeError, match="beta"):
        una_loss(x, x, jnp.ones((2, 3)), jnp.zeros((2,)))


@settings(max_examples=25)
@given(
    shape=st.sampled_from([(1, 1), (1, 5), (3, 1), (4, 6)]),
    data=st.data(),
    kind=st.sampled_from(["binary_mse", "binary_bce", "score_mse"]),
    beta=st.sampled_from([0.01, 1.0, 10.0]),
)
def test_property_finite(shape, data, kind, beta):
    B = shape[0]
    logratio = st.one_of(st.sampled_from([-50.0, 0.0, 50.0]), st.floats(-50, 50, width=32))
    lp = data.draw(hnp.arrays(np.float32, shape, elements=st.floats(-60, 0, width=32)))
    if data.draw(st.booleans()):
        lp = np.full(shape, lp.flat[0], np.float32)
    ref = lp - data.draw(hnp.arrays(np.float32, shape, elements=logratio))
    mask = data.draw(hnp.arrays(np.bool_, shape))
    if kind == "score_mse":
        target = data.draw(hnp.arrays(np.float32, (B,), elements=st.floats(-100, 100, width=32)))
    else:
        target = data.draw(hnp.arrays(np.float32, (B,), elements=st.sampled_from([0.0, 1.0])))
    f = lambda x: una_loss(x, ref, mask, target, beta=beta, kind=kind)
    (loss, aux), grad = jax.value_and_grad(f, has_aux=True)(jnp.asarray(lp))
    assert np.isfinite(loss)
    assert np.all(np.isfinite(grad))
    assert all(np.isfinite(v) for v in aux.values())
    assert np.all(np.asarray(grad)[~mask] == 0.0)
