"""group_advantages against leave-one-out loops and NumPy, edge cases and errors."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from giftjax import losses


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
    np.testing.assert_allclose(
        got, np_advantages(r, G, method, scale, ddof=ddof), rtol=1e-6, atol=1e-6
    )
    assert got.dtype == np.float32 and np.all(np.isfinite(got))
    np.testing.assert_array_equal(got[:G], 0.0)


def test_dr_grpo_is_mean_only():
    r = np.arange(8, dtype=np.float32) ** 2
    got = losses.group_advantages(r, group_size=4, method="dr_grpo")
    np.testing.assert_allclose(got, np_advantages(r, 4, "grpo", "none"), rtol=1e-6)
    with pytest.raises(ValueError, match="method='dr_grpo' sets scale='none'"):
        losses.group_advantages(r, group_size=4, method="dr_grpo", scale="batch")


def test_jit_vmap_no_gradient():
    r = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    f = lambda x: losses.group_advantages(x, group_size=4)
    np.testing.assert_allclose(jax.vmap(f)(r)[1], f(r[1]), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(f)(r[0]), f(r[0]), rtol=1e-6)
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
