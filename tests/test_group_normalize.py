"""group_normalize: every implementation against NumPy, and its custom_vjp against autodiff.

NumPy (float64), per contiguous group of G values:
  mean = sum x / G,  std = sqrt(sum (x - mean)^2 / max(G - ddof, 1)),
  z = (x - mean) / (max(std, std_floor) + eps).
Gradients of L = sum(a z) + sum(b mean) + sum(c std) from the xla and pallas custom_vjp
are compared with jax autodiff of group_normalize_reference, in both gradient modes.
Tolerances relative to the largest magnitude come from the float32 bound (`gn_tol`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from precision import F32_EPS

from giftjax import kernels

IMPLS = ["reference", "xla", "pallas"]


def numpy_group_normalize(x, group_size, eps, ddof, std_floor):
    xg = np.asarray(x, np.float64).reshape(-1, group_size)
    mean = xg.mean(axis=1)
    std = np.sqrt(((xg - mean[:, None]) ** 2).sum(axis=1) / max(group_size - ddof, 1))
    z = (xg - mean[:, None]) / (np.maximum(std, std_floor) + eps)[:, None]
    return z.reshape(-1), mean, std


def make_x(num_groups, group_size, seed=0):
    """Random groups, with a constant (zero-variance) group and a near-constant one."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_groups, group_size)) * rng.uniform(0.1, 3.0, size=(num_groups, 1))
    x[0] = 0.5  # zero variance (exact in float32): z = 0, never NaN
    if num_groups > 2:
        x[2] = 1.0 + 1e-3 * rng.normal(size=group_size)  # std below a floor of 0.1
    return x.reshape(-1).astype(np.float32)


def gn_tol(x, group_size, std_floor=0.0, programs=1):
    """float32 tolerance (relative to the compared values' scale) of group_normalize on x.

    A group's mean and std sum G terms on the scale max|x_g| (u G max|x_g|, u = eps / 2, plus
    ~16 elementwise roundings); z and the gradients divide the deviations by the group's
    floored std, which scales that by max|x_g| / max(std_g, floor) (the worst group counts;
    a constant group gives exact zeros). Against float64 one float32 program rounds; two
    float32 programs (custom_vjp vs autodiff) differ by twice that.
    """
    xg = np.asarray(x, np.float64).reshape(-1, group_size)
    std = np.maximum(xg.std(axis=1), std_floor)
    live = std > 0
    kappa = (np.abs(xg[live]).max(axis=1) / std[live]).max() if live.any() else 1.0
    return programs * F32_EPS / 2 * (group_size + 16) * max(1.0, float(kappa))


def assert_close(actual, expected, tol, what):
    actual = np.asarray(actual, np.float64)
    assert np.all(np.isfinite(actual)), f"{what}: non-finite values"
    scale = max(1.0, float(np.abs(expected).max()))
    err = float(np.abs(actual - expected).max())
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol} x scale {scale:.3g}"


# (P groups, G): G = 1, a few groups, ragged against the 1024-group Pallas block.
SHAPES = [(7, 1), (5, 8), (1030, 4)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("num_groups", "group_size"), SHAPES)
@pytest.mark.parametrize(("ddof", "std_floor"), [(1, 0.0), (0, 0.1)])
def test_values_match_numpy(impl, num_groups, group_size, ddof, std_floor):
    x = make_x(num_groups, group_size)
    z, mean, std = kernels.group_normalize(
        jnp.asarray(x), group_size=group_size, eps=1e-6, ddof=ddof, std_floor=std_floor, impl=impl
    )
    want_z, want_mean, want_std = numpy_group_normalize(x, group_size, 1e-6, ddof, std_floor)
    assert z.shape == x.shape and mean.shape == std.shape == (num_groups,)
    assert z.dtype == mean.dtype == std.dtype == jnp.float32
    stats_tol = F32_EPS / 2 * (group_size + 16) * max(1.0, float(np.abs(x).max()))
    assert_close(mean, want_mean, stats_tol, f"{impl} mean")
    assert_close(std, want_std, stats_tol, f"{impl} std")
    # z of the near-constant group divides by its ~1e-3 std without a floor: gn_tol's 1/std.
    assert_close(z, want_z, gn_tol(x, group_size, std_floor), f"{impl} z")
    assert np.all(np.asarray(z)[:group_size] == 0.0), "a zero-variance group gives z = 0"


def cotangents(num_groups, group_size, seed=2):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(num_groups * group_size,)).astype(np.float32)
    b = rng.normal(size=(num_groups,)).astype(np.float32)
    c = rng.normal(size=(num_groups,)).astype(np.float32)
    return a, b, c


def grad_of(impl, x, a, b, c, **kw):
    """d/dx of sum(a z) + sum(b mean) + sum(c std) through ``impl``."""

    def loss(x):
        z, mean, std = kernels.group_normalize(x, impl=impl, **kw)
        return jnp.sum(a * z) + jnp.sum(b * mean) + jnp.sum(c * std)

    return jax.jit(jax.grad(loss))(jnp.asarray(x))


@pytest.mark.parametrize("impl", ["xla", "pallas"])
@pytest.mark.parametrize(("num_groups", "group_size"), [(5, 8), (1030, 4)])
@pytest.mark.parametrize("stop_grad_stats", [True, False])
@pytest.mark.parametrize(("ddof", "std_floor"), [(1, 0.0), (0, 0.9)])
def test_gradients_match_reference_autodiff(
    impl, num_groups, group_size, stop_grad_stats, ddof, std_floor
):
    """Well-conditioned groups (std of order 1, some below the 0.9 floor)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(num_groups, group_size)) * rng.uniform(0.3, 3.0, (num_groups, 1))
    x = x.reshape(-1).astype(np.float32)
    a, b, c = cotangents(num_groups, group_size)
    kw = dict(group_size=group_size, eps=1e-6, ddof=ddof, stop_grad_stats=stop_grad_stats)
    want = np.asarray(grad_of("reference", x, a, b, c, std_floor=std_floor, **kw), np.float64)
    got = grad_of(impl, x, a, b, c, std_floor=std_floor, **kw)
    tol = gn_tol(x, group_size, std_floor)
    assert_close(got, want, 2 * tol, f"{impl} dx vs reference autodiff")
    if stop_grad_stats:  # dx = a / (max(std, floor) + eps), mean and std held constant
        std = numpy_group_normalize(x, group_size, 1e-6, ddof, std_floor)[2]
        want_np = a / np.repeat(np.maximum(std, std_floor) + 1e-6, group_size)
        assert_close(got, want_np, tol, f"{impl} dx (stop-grad, NumPy)")


@pytest.mark.parametrize("impl", ["xla", "pallas"])
@pytest.mark.parametrize("std_floor", [0.0, 0.1])
def test_full_gradient_of_degenerate_groups(impl, std_floor):
    """G = 1 and zero-variance groups: exact gradients, no NaN.

    In float32, autodiff of the reference formula loses these to cancellation (it adds
    and subtracts terms of size |a| / eps); the custom_vjp forms them directly.
    With std = 0 (and the safe square root's zero gradient), z = (x - mean) / d with
    d = max(0, floor) + eps gives dx = (a - mean_group(a)) / d + b / G; for G = 1, dx = b.
    """
    eps = 1e-6
    for group_size in (1, 4):
        x = np.full((3 * group_size,), 0.5, np.float32)
        a, b, c = cotangents(3, group_size)
        kw = dict(group_size=group_size, eps=eps, ddof=1, stop_grad_stats=False)
        got = grad_of(impl, x, a, b, c, std_floor=std_floor, **kw)
        ag = a.astype(np.float64).reshape(3, group_size)
        want = (ag - ag.mean(axis=1, keepdims=True)) / (std_floor + eps) + b[:, None] / group_size
        # Constant groups: x - mean is exactly 0, so dx is a few roundings of a / d.
        assert_close(got, want.reshape(-1), 16 * F32_EPS, f"{impl} G={group_size}")


def test_full_gradient_at_the_floor_tie_matches_autodiff():
    """std exactly equal to std_floor: max() splits its gradient 1/2-1/2 under autodiff."""
    x = jnp.asarray([0.0, 2.0, 1.0, 5.0], jnp.float32)  # group 0: ddof=1 std = sqrt(2)
    floor = float(jnp.sqrt(jnp.float32(2.0)))  # the float32 std the kernels compute
    kw = dict(group_size=2, eps=1e-6, ddof=1, stop_grad_stats=False, std_floor=floor)

    def loss(x, impl):
        z, _, std = kernels.group_normalize(x, impl=impl, **kw)
        return jnp.sum(jnp.arange(1.0, 5.0) * z) + 0.3 * jnp.sum(std)

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    want = grad(x, "reference")
    tol = gn_tol(np.asarray(x), 2, floor, programs=2)
    for impl in ("xla", "pallas"):
        assert_close(grad(x, impl), np.asarray(want, np.float64), tol, impl)


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_bf16_input(impl):
    x = make_x(6, 4)
    xb = jnp.asarray(x, jnp.bfloat16)
    z, mean, std = kernels.group_normalize(xb, group_size=4, impl=impl)
    want = numpy_group_normalize(np.asarray(xb.astype(jnp.float32)), 4, 1e-6, 1, 0.0)
    for got, exp, what in zip((z, mean, std), want, ("z", "mean", "std"), strict=True):
        assert got.dtype == jnp.float32
        # The bf16 values are exact in float32 (NumPy sees the same inputs): float32 bound.
        assert_close(got, exp, gn_tol(np.asarray(xb.astype(jnp.float32)), 4), f"bf16 {what}")
    dx = jax.jit(
        jax.grad(lambda x: jnp.sum(kernels.group_normalize(x, group_size=4, impl=impl)[0]))
    )(xb)
    assert dx.dtype == jnp.bfloat16


def test_bad_arguments_are_refused():
    x = jnp.zeros((6,))
    with pytest.raises(ValueError, match="impl must be one of"):
        kernels.group_normalize(x, group_size=3, impl="cuda")
    with pytest.raises(ValueError, match="multiple of group_size=4"):
        kernels.group_normalize(x, group_size=4, impl="pallas")
    with pytest.raises(ValueError, match="std_floor must be >= 0"):
        kernels.group_normalize(x, group_size=3, impl="xla", std_floor=-1.0)
    with pytest.raises(ValueError, match="ddof must be 0 or 1"):
        kernels.group_normalize(x, group_size=3, impl="xla", ddof=2)
