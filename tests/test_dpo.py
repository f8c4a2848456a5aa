"""dpo_loss (sigmoid with label smoothing, IPO, hinge) against float64 NumPy formulas."""

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads
from precision import F32_EPS

from giftjax.losses import dpo_loss

# Float32 against float64: a mean over B = 12 pairs of ~10 elementwise operations each is
# within u (B + 16) of its scale (u = eps / 2), about 1.7e-6; gradients are elementwise.
RTOL = ATOL = F32_EPS / 2 * (12 + 16)
GRAD_RTOL = 1e-5
GRAD_ATOL = 1e-8


def np_log_sigmoid(z):
    return -np.logaddexp(0.0, -z)


def np_sigmoid(z):
    return np.exp(np_log_sigmoid(z))


def np_dpo(c, r, rc, rr, *, beta=0.1, loss_type="sigmoid", label_smoothing=0.0):
    """Returns (loss, dloss/dh per pair, h) in float64."""
    c, r, rc, rr = (np.asarray(x, np.float64) for x in (c, r, rc, rr))
    h = (c - rc) - (r - rr)
    B = h.shape[0]
    ls = label_smoothing
    if loss_type == "sigmoid":
        per = -(1 - ls) * np_log_sigmoid(beta * h) - ls * np_log_sigmoid(-beta * h)
        dh = -(1 - ls) * beta * (1 - np_sigmoid(beta * h)) + ls * beta * np_sigmoid(beta * h)
    elif loss_type == "ipo":
        per = (h - 1 / (2 * beta)) ** 2
        dh = 2 * (h - 1 / (2 * beta))
    else:
        per = np.maximum(1 - beta * h, 0.0)
        dh = np.where(1 - beta * h > 0, -beta, 0.0)
    return per.sum() / B, dh / B, h


def make_pairs(seed, B=12):
    rng = np.random.default_rng(seed)
    c = -rng.uniform(5, 40, B)
    r = -rng.uniform(5, 40, B)
    rc = c + rng.normal(0, 3, B)
    rr = r + rng.normal(0, 3, B)
    return tuple(x.astype(np.float32) for x in (c, r, rc, rr))


@pytest.mark.parametrize(
    ("loss_type", "beta", "ls"),
    [
        ("sigmoid", 0.1, 0.0),
        ("sigmoid", 0.5, 0.1),
        ("sigmoid", 0.1, 0.5),
        ("ipo", 0.1, 0.0),
        ("ipo", 1.0, 0.0),
        ("hinge", 0.3, 0.0),
        ("hinge", 0.5, 0.0),
    ],
)
def test_golden_values_gradients_and_aux(loss_type, beta, ls):
    pairs = make_pairs(0)
    kw = {"beta": beta, "loss_type": loss_type, "label_smoothing": ls}
    (loss, aux), grads = jax.jit(
        jax.value_and_grad(lambda *a: dpo_loss(*a, **kw), argnums=(0, 1, 2, 3), has_aux=True)
    )(*pairs)
    want, dh, h = np_dpo(*pairs, **kw)
    np.testing.assert_allclose(loss, want, rtol=RTOL, atol=ATOL)
    # h = (c - rc) - (r - rr): the four gradients are +dh, -dh, -dh, +dh.
    for g, sign in zip(grads, (1, -1, -1, 1), strict=True):
        np.testing.assert_allclose(g, sign * dh, rtol=GRAD_RTOL, atol=GRAD_ATOL)
    c, r, rc, rr = (x.astype(np.float64) for x in pairs)
    np.testing.assert_allclose(aux["dpo/reward_accuracy"], np.mean(h > 0), rtol=RTOL)
    np.testing.assert_allclose(
        aux["dpo/chosen_reward"], np.mean(beta * (c - rc)), rtol=RTOL, atol=ATOL
    )
    np.testing.assert_allclose(aux["dpo/rejected_reward"], np.mean(beta * (r - rr)), RTOL, ATOL)
    np.testing.assert_allclose(aux["dpo/margin"], np.mean(beta * h), rtol=RTOL, atol=ATOL)
    assert float(aux["denominator"]) == len(c)
    np.testing.assert_allclose(aux["numerator"], want * len(c), rtol=RTOL)
    if loss_type == "hinge":
        assert 0 < np.mean(1 - beta * h > 0) < 1, "the pairs must cover both hinge branches"


def test_hand_computed_values():
    # h = (-1 - -2) - (-3 - -1) = 3.
    args = tuple(jnp.array([x]) for x in (-1.0, -3.0, -2.0, -1.0))
    loss, _ = dpo_loss(*args, beta=0.5)
    np.testing.assert_allclose(loss, np.log1p(np.exp(-1.5)), rtol=1e-6)
    loss, _ = dpo_loss(*args, beta=0.5, loss_type="ipo")
    np.testing.assert_allclose(loss, (3.0 - 1.0) ** 2, rtol=1e-6)
    loss, _ = dpo_loss(*args, beta=0.2, loss_type="hinge")
    np.testing.assert_allclose(loss, 1.0 - 0.6, rtol=1e-6)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_check_grads_finite_differences(loss_type):
    pairs = tuple(jnp.asarray(x) for x in make_pairs(1, B=4))
    f = lambda c, r: dpo_loss(c, r, pairs[2], pairs[3], loss_type=loss_type, beta=0.3)[0]
    check_grads(f, pairs[:2], order=1, modes=("rev",), eps=1e-2)


def test_label_smoothing_half_is_symmetric():
    # ls = 0.5: the loss is even in h, so swapping chosen and rejected changes nothing.
    c, r, rc, rr = make_pairs(2)
    a, _ = dpo_loss(c, r, rc, rr, label_smoothing=0.5)
    b, _ = dpo_loss(r, c, rr, rc, label_smoothing=0.5)
    # The same formula rounds differently on swapped inputs: twice the golden bound.
    np.testing.assert_allclose(a, b, rtol=2 * RTOL)


@pytest.mark.parametrize(
    ("call", "exc", "pattern"),
    [
        (lambda x, i: dpo_loss(x[:, None], x, x, x), ValueError, r"chosen_logps must have shape"),
        (lambda x, i: dpo_loss(i, x, x, x), TypeError, "chosen_logps must be a floating-point"),
        (
            lambda x, i: dpo_loss(x, x[:3], x, x),
            ValueError,
            r"rejected_logps must have shape \[B\]",
        ),
        (lambda x, i: dpo_loss(x, x, i, x), TypeError, "ref_chosen_logps must be a floating"),
        (lambda x, i: dpo_loss(x, x, x, x[:2]), ValueError, r"ref_rejected_logps must have shape"),
        (lambda x, i: dpo_loss(x, x, x, x, loss_type="kto"), ValueError, r"loss_type must be one"),
        (lambda x, i: dpo_loss(x, x, x, x, beta=0.0), ValueError, r"beta must be > 0.0, got 0.0"),
        (
            lambda x, i: dpo_loss(x, x, x, x, label_smoothing=0.6),
            ValueError,
            r"label_smoothing must be in \[0.0, 0.5\], got 0.6",
        ),
        (
            lambda x, i: dpo_loss(x, x, x, x, loss_type="ipo", label_smoothing=0.1),
            ValueError,
            r"label_smoothing=0.1 applies to loss_type='sigmoid' only, got loss_type='ipo'",
        ),
    ],
)
def test_errors(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call(jnp.zeros((4,)), jnp.zeros((4,), jnp.int32))


def test_unknown_loss_type_lists_accepted():
    x = jnp.zeros((2,))
    with pytest.raises(ValueError, match=r"\('sigmoid', 'ipo', 'hinge'\), got 'kto'"):
        dpo_loss(x, x, x, x, loss_type="kto")


@settings(max_examples=25)
@given(
    B=st.sampled_from([1, 3, 8]),
    data=st.data(),
    loss_type=st.sampled_from(["sigmoid", "ipo", "hinge"]),
    beta=st.sampled_from([0.01, 0.1, 1.0]),
)
def test_property_finite(B, data, loss_type, beta):
    extreme = st.one_of(st.sampled_from([-50.0, 0.0, 50.0, -5000.0, 5000.0]), st.floats(-50, 50))
    arrays = [data.draw(hnp.arrays(np.float32, (B,), elements=extreme)) for _ in range(4)]
    ls = data.draw(st.sampled_from([0.0, 0.2])) if loss_type == "sigmoid" else 0.0
    f = lambda *a: dpo_loss(*a, beta=beta, loss_type=loss_type, label_smoothing=ls)
    (loss, aux), grads = jax.value_and_grad(f, argnums=(0, 1, 2, 3), has_aux=True)(*arrays)
    assert np.isfinite(loss)
    assert all(np.all(np.isfinite(g)) for g in grads)
    assert all(np.isfinite(v) for v in aux.values())
