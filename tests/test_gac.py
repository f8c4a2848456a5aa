"""GAC controller: closed form, limits, smoothing semantics, estimators, modes and errors.

Every expected value is computed here with NumPy from the README's GAC section, independently of
giftjax.optim's code.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from precision import F32_EPS

from giftjax import optim

U = F32_EPS / 2  # float32 unit roundoff


def ema_tol(decay: float) -> float:
    """Error an EMA state `x <- decay x + (1 - decay) m` carries in float32, relative to its
    scale: each update rounds about 4 times (u each) and shrinks the old error by `decay`, so
    the error settles at 4 u / (1 - decay) (2.4e-5 for 0.99)."""
    return 4 * U / (1 - decay)


def mu_tols(ema: float = 0.99, smooth: float = 0.99) -> tuple[float, float]:
    """(mu_raw, mu) absolute tolerances against the float64 transcription: mu_raw is a ratio of
    sums of the EMA statistics (twice their error, plus ~8 roundings; mu_raw <= 1); mu adds the
    smoothing EMA's own error (mu <= 1). Clipping, bounded steps and the prior blend are
    1-Lipschitz and add no more than a rounding each."""
    raw = 2 * ema_tol(ema) + 8 * U
    return raw, raw + ema_tol(smooth) + 8 * U


# ----------------------------------------------------------------------------------------
# NumPy transcriptions.
# ----------------------------------------------------------------------------------------


def np_chord(t, warmup=200, decay=800, peak=0.85, valley=0.15):
    """The CHORD schedule as its authors wrote it (linear warm-up, cosine decay)."""
    if t < warmup:
        return t / warmup * peak
    if t >= warmup + decay:
        return valley
    return (peak - valley) * 0.5 * (1 + math.cos(math.pi * (t - warmup) / decay)) + valley


def np_gac(
    measurements,
    *,
    smoothing,
    alpha=0.5,
    blend=0.5,
    ema=0.99,
    refresh_every=10,
    max_step=0.01,
    bounds=(0.05, 0.90),
    init=0.5,
    smooth=0.99,
    eps=1e-8,
    prior=np_chord,
):
    """The README's GAC update, step by step, in float64.

    measurements: [T, 3] rows (s_sft^2, s_rl^2, D^2), or None rows for "no statistics".
    Refresh at the first step with statistics, then every `refresh_every` steps; the EMA is
    the plain one started at 0 and read bias-corrected (divided by 1 - ema^n).
    """
    raw_ema = np.zeros(3)
    n, last = 0, -1
    mu, mu_s = init, init
    out = []
    for t, m in enumerate(measurements):
        # 1. statistics
        if m is not None and (last < 0 or t - last >= refresh_every):
            raw_ema = ema * raw_ema + (1 - ema) * np.asarray(m, np.float64)
            n += 1
            last = t
        # 2. closed form
        if n == 0:
            mu_raw = 0.5
        else:
            s_sft, s_rl, d2 = raw_ema / (1 - ema**n)
            mu_raw = (alpha * d2 + s_rl) / (d2 + s_sft + s_rl + eps)
        # 3. smoothing
        if smoothing == "anchored":
            mu_s = smooth * mu + (1 - smooth) * mu_raw
        else:
            mu_s = smooth * mu_s + (1 - smooth) * mu_raw
        # 4. prior guidance
        p = prior(t)
        cand = (1 - blend) * p + blend * mu_s
        # 5. bounded step, then bounds
        mu = min(max(cand, mu - max_step), mu + max_step)
        mu = min(max(mu, bounds[0]), bounds[1])
        out.append((mu, mu_raw, p))
    return np.asarray(out)


# ----------------------------------------------------------------------------------------
# Running the transformation.
# ----------------------------------------------------------------------------------------

PARAMS = {"w": jnp.zeros((3,), jnp.float32)}
GRADS = {"sft": {"w": jnp.ones((3,), jnp.float32)}, "rl": {"w": -jnp.ones((3,), jnp.float32)}}


def run_proxy(tx, measurements):
    """Run `tx` for len(measurements) steps inside one scan; returns per-step arrays."""
    measurements = jnp.asarray(measurements, jnp.float32)

    @jax.jit
    def go(m):
        def body(state, row):
            stats = optim.GacStats(sft_var=row[0], rl_var=row[1], disagreement=row[2])
            upd, state = tx.update(GRADS, state, PARAMS, gac_stats=stats)
            return state, (state.mu, state.mu_raw, state.prior, upd["w"][0], state.last_refresh)

        return jax.lax.scan(body, tx.init(PARAMS), m)

    state, (mu, mu_raw, prior, combined, last) = go(measurements)
    return state, np.asarray(mu), np.asarray(mu_raw), np.asarray(prior), combined, last


def random_measurements(seed, steps, *, spread=3.0):
    rng = np.random.default_rng(seed)
    return np.exp(rng.normal(0.0, spread, size=(steps, 3)))


# ----------------------------------------------------------------------------------------
# Closed form and its limits.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mu_raw_closed_form(alpha, seed):
    s_sft, s_rl, d2 = random_measurements(seed, 1, spread=1.0)[0]
    tx = optim.gac(alpha=alpha, estimator="proxy")
    stats = optim.GacStats(sft_var=s_sft, rl_var=s_rl, disagreement=d2)
    _, state = tx.update(GRADS, tx.init(PARAMS), PARAMS, gac_stats=stats)
    expected = (alpha * d2 + s_rl) / (d2 + s_sft + s_rl)
    np.testing.assert_allclose(float(state.mu_raw), expected, rtol=1e-6)


@pytest.mark.parametrize("s_sft, s_rl", [(1.0, 3.0), (0.2, 0.05), (7.0, 7.0), (1e-3, 5.0)])
def test_zero_disagreement_is_inverse_variance(s_sft, s_rl):
    tx = optim.gac(estimator="proxy")
    stats = optim.GacStats(sft_var=s_sft, rl_var=s_rl, disagreement=0.0)
    _, state = tx.update(GRADS, tx.init(PARAMS), PARAMS, gac_stats=stats)
    inverse_variance = (1 / s_sft) / (1 / s_sft + 1 / s_rl)
    np.testing.assert_allclose(float(state.mu_raw), inverse_variance, rtol=1e-6)


@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.8])
@pytest.mark.parametrize("scale", [1e4, 1e7])
def test_large_disagreement_tends_to_alpha(alpha, scale):
    tx = optim.gac(alpha=alpha, estimator="proxy")
    stats = optim.GacStats(sft_var=2.0, rl_var=0.5, disagreement=2.5 * scale)
    _, state = tx.update(GRADS, tx.init(PARAMS), PARAMS, gac_stats=stats)
    # |mu_raw - alpha| = |s_rl - alpha (s_sft + s_rl)| / (D^2 + s_sft + s_rl) <= 1 / scale
    assert abs(float(state.mu_raw) - alpha) <= 1.0 / scale + 1e-7


def test_disagreement_cap():
    tx = optim.gac(estimator="proxy", disagreement_cap=2.0)
    stats = optim.GacStats(sft_var=1.0, rl_var=3.0, disagreement=100.0)
    _, state = tx.update(GRADS, tx.init(PARAMS), PARAMS, gac_stats=stats)
    d2 = 2.0 * (1.0 + 3.0)
    np.testing.assert_allclose(float(state.mu_raw), (0.5 * d2 + 3.0) / (d2 + 4.0), rtol=1e-6)
    assert float(state.disagreement) == 100.0  # the EMA keeps the measurement; the cap is on use


def test_first_update_and_combination():
    """First step by hand: prior(0) = 0, mu_smooth = 0.99*0.5 + 0.01*0.75, capped at 0.49."""
    tx = optim.gac(estimator="proxy")
    g_sft = {"w": jnp.array([1.0, 2.0, 3.0])}
    g_rl = {"w": jnp.array([-1.0, 0.5, 4.0])}
    stats = optim.GacStats(sft_var=1.0, rl_var=3.0, disagreement=0.0)
    upd, state = tx.update({"sft": g_sft, "rl": g_rl}, tx.init(PARAMS), PARAMS, gac_stats=stats)
    assert float(state.mu_raw) == pytest.approx(0.75, abs=1e-7)
    assert float(state.mu_smooth) == pytest.approx(0.99 * 0.5 + 0.01 * 0.75, abs=1e-7)
    assert float(state.prior) == 0.0
    # mu_cand = 0.5 * 0 + 0.5 * 0.5025 = 0.25125, more than 0.01 below mu_0 = 0.5
    assert float(state.mu) == pytest.approx(0.49, abs=1e-7)
    expected = 0.51 * np.array([-1.0, 0.5, 4.0]) + 0.49 * np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(np.asarray(upd["w"]), expected, rtol=1e-6)
    assert int(state.count) == 1 and int(state.last_refresh) == 0


# ----------------------------------------------------------------------------------------
# Long runs: cap, bounds, the published update, the two smoothings.
# ----------------------------------------------------------------------------------------


def wild_prior(step):
    """A prior that jumps across [0, 1] every few steps, to stress the step cap."""
    return 0.5 + 0.5 * jnp.sin(jnp.asarray(step, jnp.float32) * 1.7)


@pytest.mark.parametrize("smoothing", ["separate", "anchored"])
@pytest.mark.parametrize("prior", ["chord", "wild"])
@pytest.mark.parametrize(
    "cap, bounds, blend",
    [(0.01, (0.05, 0.90), 0.5), (0.05, (0.3, 0.6), 0.9)],
    ids=["default", "tight"],
)
def test_step_cap_and_bounds_hold_on_every_step(smoothing, prior, cap, bounds, blend):
    kwargs = {} if prior == "chord" else {"prior": wild_prior}
    # No smoothing and a fast EMA, so that mu_raw jumps and the cap and bounds are busy.
    tx = optim.gac(
        estimator="proxy",
        smoothing=smoothing,
        refresh_every=1,
        ema=0.5,
        smooth=0.0,
        max_step=cap,
        bounds=bounds,
        blend=blend,
        **kwargs,
    )
    measurements = random_measurements(seed=7, steps=3000, spread=4.0)
    _, mu, mu_raw, _, _, _ = run_proxy(tx, measurements)
    steps = np.abs(np.diff(np.concatenate([[0.5], mu])))
    assert steps.max() <= cap + 1e-6, f"largest step {steps.max()}"
    assert mu.min() >= bounds[0] - 1e-7 and mu.max() <= bounds[1] + 1e-7, (mu.min(), mu.max())
    # The run is not trivially static: mu_raw sweeps the interval and the cap binds often.
    assert mu_raw.min() < 0.1 and mu_raw.max() > 0.9
    assert np.mean(steps > 0.99 * cap) > 0.05, np.mean(steps > 0.99 * cap)
    if bounds == (0.3, 0.6):  # and here the bounds bind too
        assert mu.min() < 0.3 + 1e-6 and mu.max() > 0.6 - 1e-6, (mu.min(), mu.max())


@pytest.mark.parametrize("smoothing", ["anchored", "separate"])
def test_matches_numpy_transcription_for_1000_steps(smoothing):
    measurements = random_measurements(seed=3, steps=1000, spread=1.5)
    tx = optim.gac(estimator="proxy", smoothing=smoothing)
    _, mu, mu_raw, prior, _, _ = run_proxy(tx, measurements)
    ref = np_gac(measurements, smoothing=smoothing)
    # The prior: a few float32 operations on t <= 1000 and a cosine, values <= 0.85.
    np.testing.assert_allclose(prior, ref[:, 2], atol=1e-6, err_msg="prior")
    raw_tol, mu_tol = mu_tols()
    np.testing.assert_allclose(mu_raw, ref[:, 1], atol=raw_tol, err_msg="mu_raw")
    np.testing.assert_allclose(mu, ref[:, 0], atol=mu_tol, err_msg="mu")


def test_matches_numpy_transcription_with_gaps_and_options():
    """Statistics missing on some steps (refresh waits for them), non-default options."""
    rng = np.random.default_rng(11)
    measurements = random_measurements(seed=4, steps=600, spread=2.0)
    present = rng.random(600) > 0.3
    present[:5] = False  # nothing at all for the first 5 steps: mu_raw = 0.5
    kw = dict(alpha=0.3, blend=0.7, ema=0.9, refresh_every=7, max_step=0.02, bounds=(0.1, 0.8))
    tx = optim.gac(estimator="proxy", smoothing="anchored", init=0.3, smooth=0.95, **kw)
    # A missing measurement is signalled with NaN (the transformation skips the refresh).
    masked = np.where(present[:, None], measurements, np.nan)
    _, mu, mu_raw, _, _, last = run_proxy(tx, masked)
    ref = np_gac(
        [m if ok else None for m, ok in zip(measurements, present, strict=True)],
        smoothing="anchored",
        init=0.3,
        smooth=0.95,
        **kw,
    )
    assert np.all(mu_raw[:5] == 0.5)
    raw_tol, mu_tol = mu_tols(ema=0.9, smooth=0.95)
    np.testing.assert_allclose(mu_raw, ref[:, 1], atol=raw_tol)
    np.testing.assert_allclose(mu, ref[:, 0], atol=mu_tol)
    assert int(last[5 + np.argmax(present[5:])]) == 5 + np.argmax(present[5:])


@pytest.mark.parametrize("smoothing, bound", [("separate", 0.15), ("anchored", 0.02)])
def test_separate_vs_anchored_facts(smoothing, bound):
    """Hold mu_raw at 0.1 vs 0.9 for 500 steps with the default prior."""

    def final_mu(s_sft, s_rl):  # D^2 = 0: mu_raw = s_rl / (s_sft + s_rl)
        tx = optim.gac(estimator="proxy", smoothing=smoothing)
        _, mu, mu_raw, _, _, _ = run_proxy(tx, np.tile([s_sft, s_rl, 0.0], (500, 1)))
        return mu[-1], mu_raw

    mu_low, raw_low = final_mu(9.0, 1.0)
    mu_high, raw_high = final_mu(1.0, 9.0)
    np.testing.assert_allclose(raw_low, 0.1, atol=1e-6)
    np.testing.assert_allclose(raw_high, 0.9, atol=1e-6)
    moved = mu_high - mu_low
    if smoothing == "separate":
        assert moved > bound, f"separate: mu moved by {moved}"
    else:
        assert 0 < moved < bound, f"anchored: mu moved by {moved}"


def test_refresh_cadence_and_ema():
    """Statistics every step, refresh_every=10: EMA moves at t = 0, 10, 20, ... only."""
    measurements = random_measurements(seed=5, steps=35, spread=1.0)
    tx = optim.gac(estimator="proxy", ema=0.9)
    state, _, _, _, _, last = run_proxy(tx, measurements)
    np.testing.assert_array_equal(np.asarray(last), np.arange(35) // 10 * 10)
    used = measurements[[0, 10, 20, 30]]
    raw = np.zeros(3)
    for m in used:
        raw = 0.9 * raw + 0.1 * m
    expected = raw / (1 - 0.9**4)
    got = [float(state.sft_var), float(state.rl_var), float(state.disagreement)]
    np.testing.assert_allclose(got, expected, rtol=ema_tol(0.9))  # 4 updates, bias-corrected
    assert int(state.num_refreshes) == 4


def test_no_statistics_falls_back_to_half():
    tx = optim.gac()
    state = tx.init(PARAMS)
    for _ in range(3):
        _, state = tx.update(GRADS, state, PARAMS)
    assert float(state.mu_raw) == 0.5 and int(state.num_refreshes) == 0
    assert int(state.last_refresh) == -1


# ----------------------------------------------------------------------------------------
# The gradient estimator.
# ----------------------------------------------------------------------------------------


def synthetic_microbatches(rng, truth, sigma, k):
    """K micro-batch gradients: truth + N(0, sigma^2) per coordinate."""
    return truth[None] + sigma * rng.normal(size=(k, truth.size))


def gradient_stats(g_sft_k, g_rl_k):
    return optim.GacStats(
        sft_sq_norm_sum=float(np.sum(g_sft_k**2)),
        rl_sq_norm_sum=float(np.sum(g_rl_k**2)),
        num_microbatches=g_sft_k.shape[0],
        rl_num_microbatches=g_rl_k.shape[0],
    )


@pytest.mark.parametrize("k_sft, k_rl", [(8, 8), (4, 16), (2, 3)])
def test_gradient_estimator_recovers_noise_variance(k_sft, k_rl):
    rng = np.random.default_rng(k_sft * 100 + k_rl)
    dim = 20_000
    truth_sft = rng.normal(size=dim) * 0.05
    truth_rl = truth_sft + rng.normal(size=dim) * 0.5
    sigma_sft, sigma_rl = 0.4, 0.9
    g_sft_k = synthetic_microbatches(rng, truth_sft, sigma_sft, k_sft)
    g_rl_k = synthetic_microbatches(rng, truth_rl, sigma_rl, k_rl)
    # Split the vector over two leaves so the tree reduction is exercised.
    tree = lambda v: {"a": jnp.asarray(v[:5000], jnp.float32), "b": jnp.asarray(v[5000:])}
    params = tree(np.zeros(dim))
    tx = optim.gac()  # estimator="gradient"
    updates = {"sft": tree(g_sft_k.mean(0)), "rl": tree(g_rl_k.mean(0))}
    _, state = jax.jit(tx.update)(
        updates, tx.init(params), params, gac_stats=gradient_stats(g_sft_k, g_rl_k)
    )
    # Known noise: the variance of the mean of K micro-batch gradients is dim sigma^2 / K.
    true_sft, true_rl = dim * sigma_sft**2 / k_sft, dim * sigma_rl**2 / k_rl
    true_d2 = float(np.sum((truth_sft - truth_rl) ** 2))
    assert abs(float(state.sft_var) / true_sft - 1) < 0.10, (float(state.sft_var), true_sft)
    assert abs(float(state.rl_var) / true_rl - 1) < 0.10, (float(state.rl_var), true_rl)
    assert abs(float(state.disagreement) / true_d2 - 1) < 0.10, (state.disagreement, true_d2)
    # And exactly the README's formula on these numbers.
    var = lambda g: (np.sum(g**2) - len(g) * np.sum(g.mean(0) ** 2)) / (len(g) * (len(g) - 1))
    d2 = max(np.sum((g_sft_k.mean(0) - g_rl_k.mean(0)) ** 2) - var(g_sft_k) - var(g_rl_k), 0.0)

    # Tolerances: each statistic is a difference of float32 sums over dim coordinates; a sum
    # of n terms is within u n sum|terms| (any order), and the difference cancels.
    def var_err(g):  # absolute: the given sum of squares rounds once, |g_mean|^2 sums dim terms
        k = len(g)
        return U * (np.sum(g**2) + k * (dim + 16) * np.sum(g.mean(0) ** 2)) / (k * (k - 1))

    diff2 = np.sum((g_sft_k.mean(0) - g_rl_k.mean(0)) ** 2)
    d2_err = U * (dim + 16) * diff2 + var_err(g_sft_k) + var_err(g_rl_k)
    np.testing.assert_allclose(float(state.sft_var), var(g_sft_k), atol=var_err(g_sft_k))
    np.testing.assert_allclose(float(state.rl_var), var(g_rl_k), atol=var_err(g_rl_k))
    np.testing.assert_allclose(float(state.disagreement), d2, atol=d2_err)


def test_gradient_estimator_needs_two_microbatches():
    tx = optim.gac()
    stats = optim.GacStats(sft_sq_norm_sum=3.0, rl_sq_norm_sum=3.0, num_microbatches=1)
    _, state = tx.update(GRADS, tx.init(PARAMS), PARAMS, gac_stats=stats)
    assert int(state.num_refreshes) == 0 and float(state.mu_raw) == 0.5


# ----------------------------------------------------------------------------------------
# Modes, prior, chain.
# ----------------------------------------------------------------------------------------


def test_fixed_mode_is_constant_and_still_tracks_mu_raw():
    tx = optim.gac(estimator="proxy", mode="fixed", init=0.3)
    _, mu, mu_raw, _, combined, _ = run_proxy(tx, np.tile([1.0, 3.0, 0.0], (50, 1)))
    np.testing.assert_array_equal(mu, np.float32(0.3))
    np.testing.assert_allclose(np.asarray(combined), 0.3 * 1 + 0.7 * -1, rtol=1e-6)
    np.testing.assert_allclose(mu_raw, 0.75, atol=1e-6)


def test_prior_mode_follows_the_schedule():
    tx = optim.gac(estimator="proxy", mode="prior")
    _, mu, _, _, combined, _ = run_proxy(tx, random_measurements(seed=1, steps=1100))
    expected = np.array([np_chord(t) for t in range(1100)])
    np.testing.assert_allclose(mu, expected, atol=1e-6)
    np.testing.assert_allclose(np.asarray(combined), 2 * expected - 1, atol=1e-6)


@pytest.mark.parametrize("kwargs", [{}, dict(warmup=10, decay=30, peak=0.6, valley=0.2)])
def test_chord_prior_matches_published_schedule(kwargs):
    prior = optim.chord_prior(**kwargs)
    steps = np.arange(0, 1200, 7)
    got = np.asarray(jax.vmap(prior)(jnp.asarray(steps)))
    np.testing.assert_allclose(got, [np_chord(int(t), **kwargs) for t in steps], atol=1e-6)


def test_constant_prior_and_bf16_leaves():
    """A constant prior away from init: with blend 0 the candidate is the prior itself, so mu
    moves from init 0.5 to 0.3 in one step (max_step 1), and by 0.01 with the default step."""
    g = {"sft": {"w": jnp.ones(4, jnp.bfloat16)}, "rl": {"w": jnp.zeros(4, jnp.bfloat16)}}
    tx = optim.gac(estimator="proxy", prior=0.3, blend=0.0, max_step=1.0)
    upd, state = tx.update(g, tx.init(PARAMS), PARAMS)
    assert upd["w"].dtype == jnp.bfloat16
    np.testing.assert_allclose(float(state.prior), 0.3, rtol=1e-7)  # float32 of 0.3
    np.testing.assert_allclose(float(state.mu), 0.3, rtol=1e-7)
    # (1 - mu) * 0 + mu * 1 = 0.3, rounded to bf16 (8 significant bits: within 2^-8 relative).
    np.testing.assert_allclose(np.asarray(upd["w"], np.float32), 0.3, rtol=2.0**-8)
    tx = optim.gac(estimator="proxy", prior=0.3, blend=0.0)  # default max_step 0.01
    _, state = tx.update(g, tx.init(PARAMS), PARAMS)
    np.testing.assert_allclose(float(state.mu), 0.5 - 0.01, rtol=1e-6)


def test_chain_with_adamw_and_metrics():
    params = {"w": jnp.zeros((3,))}
    tx = optax.chain(optim.gac(estimator="proxy"), optax.clip_by_global_norm(1.0), optax.sgd(1.0))
    state = tx.init(params)
    stats = optim.GacStats(sft_var=1.0, rl_var=3.0, disagreement=0.0)
    upd, state = jax.jit(tx.update)(GRADS, state, params, gac_stats=stats)
    metrics = optim.gac_metrics(state)
    assert float(metrics["gac/mu"]) == pytest.approx(0.49)
    assert float(metrics["gac/mu_raw"]) == pytest.approx(0.75)
    assert float(metrics["gac/prior"]) == 0.0
    # combined = 0.49 - 0.51 = -0.02 per coordinate (norm < 1: no clipping); sgd(1) negates
    np.testing.assert_allclose(np.asarray(upd["w"]), 0.02, rtol=1e-5)


def test_inject_hyperparams_follows_gac_under_jit():
    """optax.inject_hyperparams(optim.gac): every numeric hyperparameter becomes an array in
    the state and the prior schedule is evaluated at the update count; init and update run
    under jit and the trajectory is the float64 transcription's (the update rule in optim.gac)."""
    tx = optax.inject_hyperparams(optim.gac)(
        alpha=0.5, estimator="proxy", refresh_every=2, max_step=0.05
    )
    state = jax.jit(tx.init)(PARAMS)
    numeric = {"alpha", "blend", "ema", "refresh_every", "max_step", "init", "smooth", "eps"}
    assert numeric | {"prior"} <= set(state.hyperparams)
    update = jax.jit(tx.update)
    measurements = random_measurements(5, 12, spread=1.0)
    got = []
    for row in measurements:
        stats = optim.GacStats(sft_var=row[0], rl_var=row[1], disagreement=row[2])
        upd, state = update(GRADS, state, PARAMS, gac_stats=stats)
        gac_state = optim.find_gac_state(state)
        got.append([float(gac_state.mu), float(gac_state.mu_raw), float(gac_state.prior)])
        np.testing.assert_allclose(np.asarray(upd["w"]), 2 * float(gac_state.mu) - 1, rtol=1e-6)
    ref = np_gac(measurements, smoothing="separate", refresh_every=2, max_step=0.05)
    np.testing.assert_allclose(np.asarray(got), ref, atol=1e-5)


def test_inject_hyperparams_changing_alpha_changes_the_update():
    """With blend=1, smooth=0 and no step cap, mu = mu_raw = (alpha D^2 + s_rl^2) / (D^2 +
    s_sft^2 + s_rl^2): a new injected alpha, set in the state, changes the combined gradient
    2 mu - 1 of the same jitted update."""
    tx = optax.inject_hyperparams(optim.gac)(
        alpha=0.5, blend=1.0, smooth=0.0, max_step=1.0, estimator="proxy"
    )
    update = jax.jit(tx.update)
    fresh = jax.jit(tx.init)(PARAMS)
    stats = optim.GacStats(sft_var=1.0, rl_var=3.0, disagreement=2.0)
    combined = {}
    for alpha in (0.5, 0.8):
        state = fresh._replace(hyperparams={**fresh.hyperparams, "alpha": jnp.float32(alpha)})
        upd, state = update(GRADS, state, PARAMS, gac_stats=stats)
        mu = (alpha * 2.0 + 3.0) / (2.0 + 1.0 + 3.0)  # 2/3, then 0.76667
        np.testing.assert_allclose(float(optim.find_gac_state(state).mu), mu, rtol=1e-6)
        combined[alpha] = np.asarray(upd["w"])
        np.testing.assert_allclose(combined[alpha], 2 * mu - 1, rtol=1e-6)
    assert not np.allclose(combined[0.5], combined[0.8])


def test_array_hyperparameters_are_not_checked_but_must_be_scalars():
    optim.gac(alpha=jnp.float32(1.5), refresh_every=jnp.int32(0), prior=jnp.float32(0.2))
    with pytest.raises(ValueError, match=r"alpha must be a scalar, got an array of shape \(2,\)"):
        optim.gac(alpha=jnp.zeros(2))


# ----------------------------------------------------------------------------------------
# Errors.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(smoothing="ema"), r"smoothing must be one of \('separate', 'anchored'\), got 'ema'"),
        (dict(estimator="exact"), r"estimator must be one of .*got 'exact'"),
        (dict(mode="cosine"), r"mode must be one of \('adaptive', 'fixed', 'prior'\)"),
        (dict(bounds=(0.9, 0.1)), r"bounds must be \(lo, hi\) with 0 <= lo <= hi <= 1"),
        (dict(refresh_every=0), r"refresh_every must be a positive int, got 0"),
        (dict(ema=1.0), r"ema must be a number in \[0, 1\), got 1.0"),
        (dict(alpha=1.5), r"alpha must be a number in \[0, 1\], got 1.5"),
        (dict(max_step=0), r"max_step must be a positive number"),
        (dict(prior="chord"), r"prior must be an optax schedule"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        optim.gac(**kwargs)


def test_bad_updates_and_stats():
    tx = optim.gac()
    state = tx.init(PARAMS)
    with pytest.raises(ValueError, match=r"updates must be \{'sft': g_sft, 'rl': g_rl\}"):
        tx.update({"w": jnp.ones(3)}, state, PARAMS)
    with pytest.raises(ValueError, match=r"got a mapping with keys \['rl', 'sft2'\]"):
        tx.update({"sft2": GRADS["sft"], "rl": GRADS["rl"]}, state, PARAMS)
    with pytest.raises(ValueError, match="same tree structure"):
        tx.update({"sft": {"w": jnp.ones(3)}, "rl": {"v": jnp.ones(3)}}, state, PARAMS)
    with pytest.raises(ValueError, match=r"leaf 0 has shape \(3,\) in updates\['sft'\]"):
        tx.update({"sft": {"w": jnp.ones(3)}, "rl": {"w": jnp.ones(4)}}, state, PARAMS)
    proxy = optim.GacStats(sft_var=1.0, rl_var=1.0, disagreement=0.0)
    with pytest.raises(ValueError, match=r"belong to estimator='proxy'"):
        tx.update(GRADS, state, PARAMS, gac_stats=proxy)
    partial = optim.GacStats(sft_sq_norm_sum=1.0, rl_sq_norm_sum=1.0)
    with pytest.raises(ValueError, match=r"missing: \['num_microbatches'\]"):
        tx.update(GRADS, state, PARAMS, gac_stats=partial)
    with pytest.raises(TypeError, match=r"gac_stats must be an optim\.GacStats"):
        tx.update(GRADS, state, PARAMS, gac_stats={"sft_var": 1.0})
    with pytest.raises(ValueError, match="Expected exactly one GacState"):
        optim.gac_metrics(optax.adam(1e-3).init(PARAMS))


@pytest.mark.parametrize("module", ["giftjax.optim.gac", "giftjax.optim.schedules"])
def test_docstring_examples(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), verbose=False)
    assert result.attempted > 0 and result.failed == 0, result


def test_readme_chain_example_runs():
    """The GAC section's code block, run on a two-leaf model."""
    import pathlib
    import re

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    section = readme[readme.index("## GAC") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    params = {"w": jnp.zeros((4, 2)), "b": jnp.zeros(2)}
    env = {
        "params": params,
        "g_sft": jax.tree.map(jnp.ones_like, params),
        "g_rl": jax.tree.map(lambda x: -jnp.ones_like(x), params),
        "sq_sft": 40.0,
        "sq_rl": 40.0,
        "K": 4,
    }
    exec(code, env)
    assert optim.find_gac_state(env["opt_state"]).count == 1
    assert float(jnp.abs(env["params"]["w"]).max()) > 0
