"""gift_loss: golden values, the released code's steps, gradients, edge cases, transforms."""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from precision import F32_EPS

from giftjax import losses
from giftjax.losses.gift import DEFAULT_STD_FLOOR

# ----------------------------------------------------------------------------------------
# Independent NumPy formula (float64).
# ----------------------------------------------------------------------------------------


def np_group_z(x, G, eps, ddof, floor=0.0):
    xg = x.reshape(-1, G)
    mean = xg.mean(axis=1, keepdims=True)
    if G - ddof > 0:
        std = xg.std(axis=1, ddof=ddof, keepdims=True)
    else:
        std = np.zeros_like(mean)
    return ((xg - mean) / (np.maximum(std, floor) + eps)).reshape(-1), std.reshape(-1)


def np_gift(
    logps, ref, mask, rewards, G, beta=1.0, eps=1e-6, ddof=1, floor=DEFAULT_STD_FLOOR, drop=False
):
    logps, ref, mask, rewards = (np.asarray(a, np.float64) for a in (logps, ref, mask, rewards))
    A, r_std = np_group_z(rewards, G, eps, ddof)
    k = ((logps - ref) * mask).sum(-1)
    z, _ = np_group_z(k, G, eps, ddof, floor)
    err = (A - beta * z) ** 2
    if drop:
        keep = np.repeat(r_std > 0, G)
        return err[keep].sum() / max(keep.sum(), 1) if keep.any() else 0.0
    return err.mean()


def np_author_steps(logps, ref, mask, rewards, G, beta):
    """The released GIFT code's steps, as the README describes them (torch semantics:
    torch.std is unbiased; eps 1e-6 is added to the std; the implicit rewards' mean and
    std are detached, so the gradient flows only through k). Returns loss and d loss/d logps.
    """
    logps, ref, mask, rewards = (np.asarray(a, np.float64) for a in (logps, ref, mask, rewards))
    B = rewards.shape[0]
    r = rewards.reshape(-1, G)
    adv = (r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-6)
    implicit = ((logps - ref) * mask).sum(-1).reshape(-1, G)
    mean_k = implicit.mean(1, keepdims=True)  # detached
    std_k = implicit.std(1, ddof=1, keepdims=True)  # detached
    z = (implicit - mean_k) / (std_k + 1e-6)
    loss = ((adv - beta * z) ** 2).mean()
    # d loss / d k_i = -2 beta (A_i - beta z_i) / (B (std_k + eps)); d k_i / d logps = mask.
    dk = (-2.0 * beta * (adv - beta * z) / (B * (std_k + 1e-6))).reshape(-1)
    return loss, dk[:, None] * mask


def make_batch(seed, P=3, G=4, T=7, scale=1.0, masked_rows=()):
    rng = np.random.default_rng(seed)
    B = P * G
    logps = (-rng.random((B, T)) * 3).astype(np.float32)
    ref = (logps + scale * rng.normal(size=(B, T)) * 0.3).astype(np.float32)
    mask = (rng.random((B, T)) > 0.25).astype(np.float32)
    mask[:, 0] = 1.0
    for i in masked_rows:
        mask[i] = 0.0
    rewards = rng.normal(size=B).astype(np.float32)
    return logps, ref, mask, rewards


def loss_fn(**kw):
    return lambda lp, ref, m, r: losses.gift_loss(lp, ref, m, r, **kw)[0]


def gift_tol(logps, ref, mask, group_size, *, std_floor=DEFAULT_STD_FLOOR, programs=1):
    """Relative (and absolute, on the loss's scale) float32 tolerance of a GIFT loss or gradient.

    k_i = sum_t m (logp - ref) rounds each of its T terms on the scale of its operands, so
    |dk| <= u T max|logp, ref| (u = eps / 2); z = (k - mean) / std then scales that by 1 / std
    (the floored group std of k, the smallest one here), and the group statistics, the
    squares and the mean over B add u (G + B + 16) relative. Against float64 one float32
    program rounds (`programs=1`); two float32 programs differ by twice that (`programs=2`).
    """
    b, t = logps.shape
    k = ((np.asarray(logps, np.float64) - ref) * mask).sum(-1).reshape(-1, group_size)
    std = np.maximum(k.std(-1, ddof=1) if group_size > 1 else 0.0, std_floor)
    kappa = max(1.0, float(np.abs(np.stack([logps, ref])).max() / max(std.min(), 1e-3)))
    return programs * F32_EPS / 2 * (t + group_size + b + 16) * kappa


# ----------------------------------------------------------------------------------------
# Golden values and gradients.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"beta": 0.5},
        {"ddof": 0},
        {"std_floor": 0.0},
        {"std_floor": 5.0},
        {"eps": 1e-3, "beta": 2.0},
        {"zero_var_groups": "drop"},
    ],
)
def test_matches_numpy(seed, kw):
    logps, ref, mask, rewards = make_batch(seed)
    rewards[4:8] = 1.0  # one zero-variance reward group
    loss, aux = losses.gift_loss(logps, ref, mask, rewards, group_size=4, **kw)
    expected = np_gift(
        logps,
        ref,
        mask,
        rewards,
        4,
        beta=kw.get("beta", 1.0),
        eps=kw.get("eps", 1e-6),
        ddof=kw.get("ddof", 1),
        floor=kw.get("std_floor", DEFAULT_STD_FLOOR),
        drop=kw.get("zero_var_groups") == "drop",
    )
    tol = gift_tol(logps, ref, mask, 4, std_floor=kw.get("std_floor", DEFAULT_STD_FLOOR))
    np.testing.assert_allclose(loss, expected, rtol=tol, atol=tol)
    # The same float32 division as inside the loss: within one rounding.
    np.testing.assert_allclose(aux["numerator"] / aux["denominator"], loss, rtol=F32_EPS)
    assert float(aux["gift/zero_var_frac"]) == pytest.approx(1 / 3)


def test_aux_keys():
    """The metric names the trainer logs as they are (`family/name`)."""
    logps, ref, mask, rewards = make_batch(0)
    _, aux = losses.gift_loss(logps, ref, mask, rewards, group_size=4)
    assert set(aux) == {
        "numerator",
        "denominator",
        "gift/alignment",
        "gift/floored_frac",
        "gift/zero_var_frac",
        "gift/implicit_reward_mean",
        "gift/implicit_reward_group_std",
        "gift/reward_group_std",
    }


@pytest.mark.parametrize("seed", [0, 3])
def test_author_preset_reproduces_released_steps(seed):
    logps, ref, mask, rewards = make_batch(seed, masked_rows=(5,))
    rewards[8:12] = 0.0  # zero-variance group kept: targets 0
    f = loss_fn(group_size=4, beta=1.0, preset="author")
    loss = f(logps, ref, mask, rewards)
    grad = jax.grad(f)(logps, ref, mask, rewards)
    want_loss, want_grad = np_author_steps(logps, ref, mask, rewards, 4, 1.0)
    tol = gift_tol(logps, ref, mask, 4, std_floor=0.0)  # the author's code has no floor
    np.testing.assert_allclose(loss, want_loss, rtol=tol, atol=tol)
    # Gradients: one more division by std and by B; entries ~ 1/B, so the floor is tol / B.
    np.testing.assert_allclose(grad, want_grad, rtol=2 * tol, atol=tol / len(logps))


def np_numeric_grad(f, x, h=1e-6):
    x = np.asarray(x, np.float64)
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        g[idx] = (f(xp) - f(xm)) / (2 * h)
    return g


def np_gift_full_grad_loss(logps, ref, mask, rewards, G, floor):
    """The loss with gradient through mean and std (stop_grad_stats=False)."""
    return np_gift(logps, ref, mask, rewards, G, floor=floor)


@pytest.mark.parametrize("stop_grad_stats", [True, False])
def test_gradient_matches_finite_differences(stop_grad_stats):
    logps, ref, mask, rewards = make_batch(7, P=2, G=3, T=4, scale=3.0)
    grad = jax.grad(loss_fn(group_size=3, stop_grad_stats=stop_grad_stats))(
        logps, ref, mask, rewards
    )
    if stop_grad_stats:
        # Stop-gradient statistics: the NumPy loss with the stats frozen at their values.
        x0 = np.asarray(logps, np.float64)
        k0 = ((x0 - ref) * mask).sum(-1).reshape(-1, 3)
        mean0, std0 = k0.mean(1, keepdims=True), k0.std(1, ddof=1, keepdims=True)
        A, _ = np_group_z(np.asarray(rewards, np.float64), 3, 1e-6, 1)

        def f(x):
            k = ((x - ref) * mask).sum(-1).reshape(-1, 3)
            z = ((k - mean0) / (np.maximum(std0, DEFAULT_STD_FLOOR) + 1e-6)).reshape(-1)
            return ((A - z) ** 2).mean()
    else:

        def f(x):
            return np_gift_full_grad_loss(x, ref, mask, rewards, 3, DEFAULT_STD_FLOOR)

    # Central differences in float64 (h = 1e-6) are exact to ~1e-10 here; the float32
    # gradient's own rounding (gift_tol, ~1e-5) dominates: 1e-4 relative leaves a margin.
    np.testing.assert_allclose(grad, np_numeric_grad(f, logps), rtol=1e-4, atol=1e-5)


def test_no_gradient_to_reference_or_rewards():
    logps, ref, mask, rewards = make_batch(1)
    g_ref, g_r = jax.grad(loss_fn(group_size=4), argnums=(1, 3))(logps, ref, mask, rewards)
    assert not np.any(g_ref) and not np.any(g_r)


def test_population_minimiser_has_zero_loss():
    """pi ∝ pi_ref exp(r / beta(x)): k_i = r_i / beta(x) + c(x) gives z = A, loss 0."""
    rng = np.random.default_rng(5)
    P, G, T = 3, 5, 4
    rewards = rng.normal(size=P * G)
    temp = np.repeat(rng.uniform(0.2, 3.0, size=P), G)  # beta(x), per prompt
    offset = np.repeat(rng.normal(size=P), G)  # log Z(x): cancelled by the normalisation
    k = rewards / temp + offset
    ref = rng.normal(size=(P * G, T)) - 2
    logps = ref.copy()
    logps[:, 0] += k  # put the whole implicit reward on the first token
    mask = np.ones((P * G, T))
    args = [a.astype(np.float32) for a in (logps, ref, mask, rewards)]
    f = loss_fn(group_size=G, std_floor=0.0)
    assert float(f(*args)) < 1e-8
    assert float(jnp.max(jnp.abs(jax.grad(f)(*args)))) < 1e-4


# ----------------------------------------------------------------------------------------
# The degenerate first update: bounded under the safe default, 1/eps under the author's.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("stop_grad_stats", [True, False])
@pytest.mark.parametrize("P,G,T,beta", [(1, 2, 3, 1.0), (4, 8, 16, 1.0), (2, 16, 64, 0.3)])
def test_gradient_bounded_at_reference(stop_grad_stats, P, G, T, beta):
    rng = np.random.default_rng(P * G * T)
    B = P * G
    logps = (-rng.random((B, T)) * 4).astype(np.float32)
    mask = np.ones((B, T), np.float32)
    rewards = rng.normal(size=B).astype(np.float32)
    kw = {"group_size": G, "beta": beta, "stop_grad_stats": stop_grad_stats}
    grad = jax.grad(loss_fn(**kw))(logps, logps, mask, rewards)
    bound = 2 * beta / (DEFAULT_STD_FLOOR + 1e-6) * np.sqrt(T / B)
    norm = float(jnp.linalg.norm(grad))
    assert np.isfinite(norm) and 0 < norm <= bound * (1 + 1e-5), (norm, bound)
    author = jax.grad(loss_fn(group_size=G, beta=beta, preset="author"))(
        logps, logps, mask, rewards
    )
    assert float(jnp.linalg.norm(author)) > 1e3 * bound  # the hazard the floor removes


# ----------------------------------------------------------------------------------------
# Edge cases: finite everywhere.
# ----------------------------------------------------------------------------------------


@st.composite
def gift_batches(draw):
    P = draw(st.integers(1, 3))
    G = draw(st.integers(1, 5))
    T = draw(st.integers(1, 6))
    B = P * G
    elems = st.floats(-60, 0, width=32)
    logps = draw(hnp.arrays(np.float32, (B, T), elements=elems))
    kind = draw(st.sampled_from(["random", "equal", "extreme"]))
    if kind == "random":
        ref = draw(hnp.arrays(np.float32, (B, T), elements=elems))
    elif kind == "equal":
        ref = logps.copy()
    else:  # log-ratios of +-50
        ref = logps + draw(st.sampled_from([-50.0, 50.0]))
    mask = draw(hnp.arrays(np.bool_, (B, T)))
    rewards = draw(
        st.one_of(
            hnp.arrays(np.float32, (B,), elements=st.floats(-10, 10, width=32)),
            st.just(np.ones(B, np.float32)),  # zero-variance groups
        )
    )
    return logps, ref.astype(np.float32), mask, rewards, G


@given(gift_batches(), st.sampled_from([None, "author"]), st.booleans())
@pytest.mark.slow
def test_finite_loss_and_gradient(batch, preset, stop_grad_stats):
    logps, ref, mask, rewards, G = batch
    kw = {"group_size": G, "preset": preset}
    if preset is None:
        kw["stop_grad_stats"] = stop_grad_stats
    loss, grad = jax.value_and_grad(loss_fn(**kw))(logps, ref, mask, rewards)
    assert np.isfinite(float(loss))
    assert np.all(np.isfinite(grad))


def test_group_of_one_gives_zero_loss():
    logps, ref, mask, rewards = make_batch(2, P=6, G=1)
    loss, grad = jax.value_and_grad(loss_fn(group_size=1))(logps, ref, mask, rewards)
    assert float(loss) == 0.0 and not np.any(grad)


# ----------------------------------------------------------------------------------------
# Micro-batches, jit, vmap, sharding.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [{}, {"zero_var_groups": "drop"}, {"stop_grad_stats": False}])
def test_microbatches_are_exact(kw):
    logps, ref, mask, rewards = make_batch(4, P=8, G=4, T=5)
    rewards[:4] = 2.0
    kw = {"group_size": 4, **kw}

    def parts(lp):
        nums, dens = [], []
        for i in range(4):  # 4 micro-batches of 2 whole groups
            s = slice(8 * i, 8 * i + 8)
            _, aux = losses.gift_loss(lp[s], ref[s], mask[s], rewards[s], **kw)
            nums.append(aux["numerator"])
            dens.append(aux["denominator"])
        return sum(nums) / sum(dens)

    whole = loss_fn(**kw)
    # Micro-batched vs whole: two float32 programs.
    tol = gift_tol(logps, ref, mask, 4, programs=2)
    np.testing.assert_allclose(parts(logps), whole(logps, ref, mask, rewards), rtol=tol)
    np.testing.assert_allclose(
        jax.grad(parts)(logps),
        jax.grad(whole)(logps, ref, mask, rewards),
        rtol=2 * tol,
        atol=tol / len(logps),
    )


def test_jit_vmap_and_sharding():
    logps, ref, mask, rewards = make_batch(9, P=4, G=4, T=6)
    f = loss_fn(group_size=4)
    eager = f(logps, ref, mask, rewards)
    # jit, vmap and sharding each compile another program than eager: gift_tol for two.
    tol = gift_tol(logps, ref, mask, 4, programs=2)
    np.testing.assert_allclose(jax.jit(f)(logps, ref, mask, rewards), eager, rtol=tol)

    stacked = [np.stack([a, a[::-1]]) for a in (logps, ref, mask, rewards)]
    per = jax.vmap(f)(*stacked)
    np.testing.assert_allclose(per[0], eager, rtol=tol)
    reverse = [a[1] for a in stacked]
    np.testing.assert_allclose(per[1], f(*reverse), rtol=gift_tol(*reverse[:3], 4, programs=2))

    mesh = Mesh(np.array(jax.devices()[:8]).reshape(8), ("data",))
    # 16 rows over 8 devices: a group spans two devices, so the statistics cross shards.
    rows = NamedSharding(mesh, PartitionSpec("data"))
    sharded = [jax.device_put(a, rows) for a in (logps, ref, mask, rewards)]
    value, grad = jax.jit(jax.value_and_grad(f))(*sharded)
    np.testing.assert_allclose(value, eager, rtol=tol)
    np.testing.assert_allclose(
        grad, jax.grad(f)(logps, ref, mask, rewards), rtol=2 * tol, atol=tol / len(logps)
    )


# ----------------------------------------------------------------------------------------
# Errors.
# ----------------------------------------------------------------------------------------


def test_errors_name_the_argument():
    logps, ref, mask, rewards = make_batch(0, P=2, G=3)
    with pytest.raises(ValueError, match="multiple of group_size=4"):
        losses.gift_loss(logps, ref, mask, rewards, group_size=4)
    with pytest.raises(ValueError, match="ref_logps must have the shape of logps"):
        losses.gift_loss(logps, ref[:, :-1], mask, rewards, group_size=3)
    with pytest.raises(TypeError, match="logps must be a floating-point array"):
        losses.gift_loss(logps.astype(np.int32), ref, mask, rewards, group_size=3)
    with pytest.raises(ValueError, match=r"rewards must have shape \[B\] with B=6"):
        losses.gift_loss(logps, ref, mask, rewards[:5], group_size=3)
    with pytest.raises(ValueError, match="mask must have the shape of logps"):
        losses.gift_loss(logps, ref, mask[:, :2], rewards, group_size=3)
    with pytest.raises(ValueError, match="zero_var_groups must be one of"):
        losses.gift_loss(logps, ref, mask, rewards, group_size=3, zero_var_groups="skip")
    with pytest.raises(ValueError, match="preset must be one of"):
        losses.gift_loss(logps, ref, mask, rewards, group_size=3, preset="paper")
    with pytest.raises(ValueError, match=r"preset=.author. sets std_floor=0\.0"):
        losses.gift_loss(logps, ref, mask, rewards, group_size=3, preset="author", std_floor=0.5)
    with pytest.raises(ValueError, match="group_size must be a positive int"):
        losses.gift_loss(logps, ref, mask, rewards, group_size=0)
