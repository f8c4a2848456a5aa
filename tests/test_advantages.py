"""group_advantages against leave-one-out loops and NumPy, edge cases and errors."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from precision import F32_EPS

from giftjax import losses


def adv_tol(r, G, programs=1):
    """float32 tolerance of advantages of rewards r [B] in groups of G.

    Each mean and std sums at most B terms on the scale max|r| (u B max|r|, u = eps / 2, plus
    ~16 elementwise roundings); dividing by a group's std scales that by max|r| / std. Only
    groups with a spread count (a constant group's advantages are exactly 0). Against float64
    one program rounds; two float32 programs (jit, vmap) differ by twice that.
    """
    r = np.asarray(r, np.float64)
    std = r.reshape(-1, G).std(-1) if G > 1 else np.zeros(1)
    spread = std[std > 0]
    kappa = max(1.0, np.abs(r).max() / spread.min()) if spread.size else 1.0
    return programs * F32_EPS / 2 * (len(r) + 16) * kappa


def np_advantages(r, G, method, scale, eps=1e-6, ddof=1):
    r = np.asarray(r, np.float64)
    out = np.zeros_like(r)
    for g in range(len(r) // G):
        grp = r[g * G : (g + 1) * G]
        for j in range(G):
            if method == "rloo":
                others = np.delete(grp, j)
                base = others.mean() if G > 1 else grp[j]
            else:
                base = grp.mean()
            out[g * G + j] = grp[j] - base
        if scale == "group":
            std = grp.std(ddof=ddof) if G - ddof > 0 else 0.0
            out[g * G : (g + 1) * G] /= std + eps
    if scale == "batch":
        out /= r.std(ddof=ddof) + eps
    return out


@pytest.mark.parametrize("method", ["grpo", "rloo"])
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("G", [1, 2, 5])
@pytest.mark.parametrize("ddof", [0, 1])
def test_matches_numpy(method, scale, G, ddof):
    r = np.random.default_rng(G).normal(size=4 * G).astype(np.float32)
    r[:G] = 0.5  # a zero-variance group
    got = losses.group_advantages(r, group_size=G, method=method, scale=scale, ddof=ddof)
    tol = adv_tol(r, G)
    np.testing.assert_allclose(
        got, np_advantages(r, G, method, scale, ddof=ddof), rtol=tol, atol=tol
    )
    assert got.dtype == np.float32 and np.all(np.isfinite(got))
    np.testing.assert_array_equal(got[:G], 0.0)


def test_dr_grpo_is_mean_only():
    r = np.arange(8, dtype=np.float32) ** 2
    got = losses.group_advantages(r, group_size=4, method="dr_grpo")
    # Small integers: every sum and difference is exact in float32.
    np.testing.assert_array_equal(got, np_advantages(r, 4, "grpo", "none"))
    with pytest.raises(ValueError, match="method='dr_grpo' sets scale='none'"):
        losses.group_advantages(r, group_size=4, method="dr_grpo", scale="batch")


def test_jit_vmap_no_gradient():
    r = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    f = lambda x: losses.group_advantages(x, group_size=4)
    np.testing.assert_allclose(jax.vmap(f)(r)[1], f(r[1]), rtol=adv_tol(r[1], 4, programs=2))
    np.testing.assert_allclose(jax.jit(f)(r[0]), f(r[0]), rtol=adv_tol(r[0], 4, programs=2))
    assert not np.any(jax.grad(lambda x: f(x).sum() ** 2)(r[0]))


def test_errors():
    r = np.zeros(6, np.float32)
    with pytest.raises(ValueError, match="multiple of group_size=4"):
        losses.group_advantages(r, group_size=4)
    with pytest.raises(ValueError, match="method must be one of"):
        losses.group_advantages(r, group_size=3, method="ppo")
    with pytest.raises(ValueError, match="scale must be one of"):
        losses.group_advantages(r, group_size=3, scale="global")
    with pytest.raises(TypeError, match="rewards must be a floating-point array"):
        losses.group_advantages(r.astype(np.int32), group_size=3)
    with pytest.raises(ValueError, match=r"rewards must have shape \[B\]"):
        losses.group_advantages(r.reshape(2, 3), group_size=3)
