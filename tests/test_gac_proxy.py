"""gac_proxy_stats against a NumPy transcription of the proxy estimator (README, GAC)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from precision import F32_EPS

from giftjax import optim

U = F32_EPS / 2  # float32 unit roundoff


def var_tol(values, depth: int, result: float) -> float:
    """Absolute float32 tolerance of a variance of `values`, each itself a mean over up to
    `depth` terms: sums of squares on the scale max(x^2) cancel down to the variance, so the
    error is u (n + depth + 16) max(x^2), however small the result."""
    x = np.asarray(values, np.float64)
    if x.size == 0:
        return 0.0
    return U * (x.size + depth + 16) * max(float(np.max(x**2)), float(result))


def np_trimmed(values, trim=0.1):
    """The values a trimmed variance keeps: sorted, floor(trim n) cut from each end."""
    v = np.sort(np.asarray(values, np.float64))
    cut = int(np.floor(trim * len(v)))
    return v[cut : len(v) - cut]


def np_trimmed_var(values, trim=0.1, ddof=1):
    kept = np_trimmed(values, trim)
    return float(np.var(kept, ddof=ddof)) if len(kept) > ddof else 0.0


def np_proxy(logps, mask, adv, is_demo, trim=0.1, ddof=1, parts=False):
    logps, mask = np.asarray(logps, np.float64), np.asarray(mask, np.float64)
    adv = np.asarray(adv, np.float64)
    adv_bt = adv if adv.ndim == 2 else np.repeat(adv[:, None], logps.shape[1], axis=1)
    rl_means, nlls, d2 = [], [], []
    for i in range(logps.shape[0]):
        toks = mask[i] > 0
        if not toks.any():
            continue
        p = np.exp(logps[i, toks])
        phi = p * (1 - p)
        if is_demo[i]:
            nlls.append(-logps[i, toks].mean())
            d2.append(np.mean(phi**2))  # (c_sft - 0)^2 with c_sft = -phi
        else:
            rl_means.append(adv_bt[i, toks].mean())
            d2.append(np.mean((-phi + adv_bt[i, toks]) ** 2))  # (c_sft - c_rl)^2, c_rl = -A
    rl_var = float(np.var(rl_means, ddof=ddof)) if len(rl_means) > ddof else 0.0
    out = np_trimmed_var(nlls, trim, ddof), rl_var, float(np.mean(d2))
    return (*out, nlls, rl_means) if parts else out


def make_batch(seed, b=48, t=12, per_token_adv=False, n_demo=23):
    rng = np.random.default_rng(seed)
    logps = -np.abs(rng.normal(0, 1.5, size=(b, t)))
    lengths = rng.integers(0, t + 1, size=b)
    lengths[:3] = [0, t, 1]  # a fully masked row, a full row, a one-token row
    mask = np.arange(t)[None, :] < lengths[:, None]
    adv = rng.normal(size=(b, t) if per_token_adv else (b,))
    is_demo = np.zeros(b, bool)
    is_demo[rng.permutation(b)[:n_demo]] = True
    # Heavy tails on the demo NLL so that the trimming matters.
    logps[np.flatnonzero(is_demo)[:2]] *= 20.0
    return logps.astype(np.float32), mask, adv.astype(np.float32), is_demo


@pytest.mark.parametrize("per_token_adv", [False, True])
@pytest.mark.parametrize("n_demo", [23, 10, 9, 1, 0])
@pytest.mark.parametrize("seed", [0, 1])
def test_proxy_stats_match_numpy(per_token_adv, n_demo, seed):
    logps, mask, adv, is_demo = make_batch(seed, per_token_adv=per_token_adv, n_demo=n_demo)
    got = jax.jit(optim.gac_proxy_stats)(
        jnp.asarray(logps), jnp.asarray(mask), jnp.asarray(adv), jnp.asarray(is_demo)
    )
    *want, nlls, rl_means = np_proxy(logps, mask, adv, is_demo, parts=True)
    t = logps.shape[1]
    sft_tol, rl_tol = var_tol(np_trimmed(nlls), t, want[0]), var_tol(rl_means, t, want[1])
    np.testing.assert_allclose(float(got.sft_var), want[0], rtol=0, atol=sft_tol)
    np.testing.assert_allclose(float(got.rl_var), want[1], rtol=0, atol=rl_tol)
    # A mean of means of squares (no cancellation): u (B + T + 16) relative.
    np.testing.assert_allclose(float(got.disagreement), want[2], rtol=U * (len(logps) + t + 16))
    assert got.sft_sq_norm_sum is None and got.num_microbatches is None


@pytest.mark.parametrize("n", [1, 2, 9, 10, 11, 19, 20, 37])
@pytest.mark.parametrize("trim", [0.0, 0.1, 0.25])
def test_trimmed_var_matches_numpy(n, trim):
    rng = np.random.default_rng(n)
    x = rng.standard_cauchy(size=40).astype(np.float32)
    valid = np.zeros(40, bool)
    valid[rng.permutation(40)[:n]] = True
    got = float(optim.trimmed_var(jnp.asarray(x), jnp.asarray(valid), trim=trim))
    want = np_trimmed_var(x[valid], trim)
    np.testing.assert_allclose(got, want, rtol=0, atol=var_tol(np_trimmed(x[valid], trim), 0, want))


def test_trimming_removes_outliers():
    """Two huge NLLs among 20 demonstrations: cut = 2 from each end removes both."""
    x = np.concatenate([np.linspace(1.0, 2.0, 18), [1e4, -1e4]]).astype(np.float32)
    got = float(optim.trimmed_var(jnp.asarray(x), jnp.ones(20, bool)))
    kept = np.linspace(1.0, 2.0, 18)[1:-1].astype(np.float32)
    want = np.var(kept.astype(np.float64), ddof=1)
    np.testing.assert_allclose(got, want, rtol=0, atol=var_tol(kept, 0, want))


@pytest.mark.slow
def test_proxy_stats_feed_gac_and_carry_no_gradient():
    logps, mask, adv, is_demo = make_batch(0)
    f = lambda lp: optim.gac_proxy_stats(lp, jnp.asarray(mask), jnp.asarray(adv), is_demo)
    grads = jax.grad(lambda lp: sum(f(lp)[:3]))(jnp.asarray(logps))
    assert float(jnp.abs(grads).max()) == 0.0
    tx = optim.gac(estimator="proxy")
    params = {"w": jnp.zeros(2)}
    g = {"sft": {"w": jnp.ones(2)}, "rl": {"w": jnp.zeros(2)}}
    _, state = tx.update(g, tx.init(params), params, gac_stats=f(jnp.asarray(logps)))
    s_sft, s_rl, d2 = np_proxy(logps, mask, adv, is_demo)
    # mu_raw is a ratio of sums of the statistics (after one EMA refresh): within the sum of
    # their relative tolerances (var_tol), plus a few roundings.
    *_, nlls, rl_means = np_proxy(logps, mask, adv, is_demo, parts=True)
    t = logps.shape[1]
    rel = var_tol(np_trimmed(nlls), t, s_sft) / s_sft + var_tol(rl_means, t, s_rl) / s_rl
    np.testing.assert_allclose(
        float(state.mu_raw), (0.5 * d2 + s_rl) / (d2 + s_sft + s_rl), rtol=2 * rel + 16 * U
    )


def test_proxy_stats_errors():
    lp, m = jnp.zeros((4, 3)), jnp.ones((4, 3))
    demo = jnp.array([True, False, False, True])
    with pytest.raises(ValueError, match=r"logps must have shape \[B, T\], got \(4,\)"):
        optim.gac_proxy_stats(jnp.zeros(4), m, jnp.zeros(4), demo)
    with pytest.raises(ValueError, match=r"mask must have the shape of logps \(4, 3\)"):
        optim.gac_proxy_stats(lp, jnp.ones((4, 2)), jnp.zeros(4), demo)
    with pytest.raises(ValueError, match=r"advantages must have shape \[B\]=\(4,\)"):
        optim.gac_proxy_stats(lp, m, jnp.zeros(3), demo)
    with pytest.raises(ValueError, match=r"is_demo must have shape \[B\]=\(4,\)"):
        optim.gac_proxy_stats(lp, m, jnp.zeros(4), demo[:2])
    with pytest.raises(ValueError, match=r"trim must be a number in \[0, 0\.5\), got 0\.5"):
        optim.gac_proxy_stats(lp, m, jnp.zeros(4), demo, trim=0.5)
    with pytest.raises(TypeError, match="logps must be a floating-point array"):
        optim.gac_proxy_stats(jnp.zeros((4, 3), jnp.int32), m, jnp.zeros(4), demo)
