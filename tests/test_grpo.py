"""grpo_loss (GRPO, DAPO, Dr.GRPO, GSPO) against an independent float64 NumPy formula.

The reference writes the loss as a weighted sum ``sum_{i,t} w_{i,t} l_{i,t}`` whose weights
come from the aggregation mode, and the gradient with respect to ``logps`` in closed
form, so it shares no code path with the implementation.
"""

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads
from precision import F32_EPS

from giftjax.losses import AGG_MODES, dapo_loss, dr_grpo_loss, grpo_loss, gspo_loss, kl_penalty
from giftjax.losses.common import apply_preset

# Values, float32 against float64: a loss is a sum over at most B T = 16 x 10 tokens of terms
# of order 1 plus ~16 elementwise operations, within u (B T + 16) of its scale (u = eps / 2).
RTOL = ATOL = F32_EPS / 2 * (16 * 10 + 16)  # ~1e-5
# Gradients are elementwise (~1/(B T) each) through ~16 operations and a sum over T (GSPO's
# sequence ratio): u (T + 16), under 2e-6; 1e-5 relative, with a small floor for zeros.
GRAD_RTOL = 1e-5
GRAD_ATOL = 1e-8


# ------------------------------------------------------------------------------------
# Independent NumPy reference (float64).
# ------------------------------------------------------------------------------------


def np_grpo(
    logps,
    old_logps,
    mask,
    adv,
    *,
    ref_logps=None,
    clip_low=0.2,
    clip_high=0.2,
    dual_clip=None,
    kl_coef=0.0,
    kl_estimator="k3",
    importance="token",
    agg="token-mean",
    max_len=None,
):
    """Returns (loss, dloss/dlogps, clip_fraction, dual_clip_fraction, kl_mean, ratio_mean)."""
    lp = np.asarray(logps, np.float64)
    old = np.asarray(old_logps, np.float64)
    m = np.asarray(mask, np.float64)
    a = np.asarray(adv, np.float64)[:, None]
    n = m.sum(axis=1)
    T = lp.shape[1]
    if importance == "token":
        x = lp - old
        rho = np.exp(np.clip(x, -20.0, 20.0))
        drho = rho * (np.abs(x) < 20.0)  # d rho / d logp
    else:
        seq = (m * (lp - old)).sum(axis=1) / np.maximum(n, 1.0)
        rho = np.repeat(np.exp(np.clip(seq, -20.0, 20.0))[:, None], T, axis=1)
        drho = rho  # GSPO: sg[s_i] * exp(logp - sg[logp]) per token
    unclipped = -rho * a
    clipped = -np.clip(rho, 1.0 - clip_low, 1.0 + clip_high) * a
    pg = np.maximum(unclipped, clipped)
    clip_on = clipped > unclipped
    dpg = np.where(clip_on, 0.0, -a * drho)
    dual_on = np.zeros_like(clip_on)
    if dual_clip is not None:
        cap = -dual_clip * a
        dual_on = (a < 0) & (pg > cap)
        pg = np.where(dual_on, cap, pg)
        dpg = np.where(dual_on, 0.0, dpg)
    kl = np.zeros_like(lp)
    dkl = np.zeros_like(lp)
    if ref_logps is not None:
        x = lp - np.asarray(ref_logps, np.float64)
        if kl_estimator == "k1":
            kl, dkl = x, np.ones_like(x)
        elif kl_estimator == "k2":
            kl, dkl = 0.5 * x**2, x
        else:
            d = np.clip(-x, -20.0, 20.0)
            kl, dkl = np.exp(d) - d - 1.0, (1.0 - np.exp(d)) * (np.abs(x) < 20.0)
    per = pg + kl_coef * kl
    dper = dpg + kl_coef * dkl
    seqs = (n > 0).sum()
    if agg == "token-mean":
        w = m / m.sum() if m.sum() > 0 else 0 * m
    elif agg == "seq-mean-token-mean":
        w = m / np.maximum(n, 1.0)[:, None] / max(seqs, 1)
    elif agg == "seq-mean-token-sum":
        w = m / max(seqs, 1)
    else:
        w = m / (T if max_len is None else max_len) / max(seqs, 1)
    tokens = max(m.sum(), 1.0)
    return (
        (w * per).sum(),
        w * dper,
        (clip_on * m).sum() / tokens,
        (dual_on * m).sum() / tokens,
        (kl * m).sum() / tokens,
        (rho * m).sum() / tokens,
    )


def make_batch(seed, B=8, T=10, spread=0.3, dtype=np.float32):
    """Random float32 inputs; row 1 fully masked, row 0 full, the rest random lengths."""
    rng = np.random.default_rng(seed)
    logps = -rng.uniform(0.05, 3.0, (B, T))
    old = logps + rng.normal(0.0, spread, (B, T))
    ref = logps + rng.normal(0.0, 0.5, (B, T))
    lengths = rng.integers(1, T + 1, B)
    lengths[0], lengths[1] = T, 0
    mask = np.arange(T)[None, :] < lengths[:, None]
    adv = rng.normal(size=B)
    return {
        "logps": logps.astype(dtype),
        "old_logps": old.astype(dtype),
        "ref_logps": ref.astype(dtype),
        "mask": mask,
        "advantages": adv.astype(dtype),
    }


def run(batch, **kw):
    """Loss, aux and d loss / d logps from grpo_loss (jitted)."""

    def f(lp):
        return grpo_loss(lp, batch["old_logps"], batch["mask"], batch["advantages"], **kw)

    (loss, aux), grad = jax.jit(jax.value_and_grad(f, has_aux=True))(jnp.asarray(batch["logps"]))
    return loss, aux, grad


def ref(batch, **kw):
    return np_grpo(batch["logps"], batch["old_logps"], batch["mask"], batch["advantages"], **kw)


# ------------------------------------------------------------------------------------
# Golden tests.
# ------------------------------------------------------------------------------------


@pytest.mark.parametrize("importance", ["token", "sequence"])
@pytest.mark.parametrize("agg", AGG_MODES)
def test_golden_every_agg_and_importance(agg, importance):
    # Sequence ratios average the token log-ratios, so they need a wider spread to clip.
    batch = make_batch(0, B=16, spread=0.3 if importance == "token" else 0.8)
    loss, aux, grad = run(batch, agg=agg, importance=importance)
    want, dwant, clip_frac, _, _, ratio_mean = ref(batch, agg=agg, importance=importance)
    np.testing.assert_allclose(loss, want, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grad, dwant, rtol=GRAD_RTOL, atol=GRAD_ATOL)
    np.testing.assert_allclose(aux["numerator"] / aux["denominator"], want, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(aux["grpo/clip_fraction"], clip_frac, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(aux["grpo/ratio_mean"], ratio_mean, rtol=RTOL, atol=ATOL)
    assert 0.0 < clip_frac < 1.0, "the test batch must exercise both clipped and free tokens"


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_golden_kl_estimators(estimator, agg):
    batch = make_batch(1)
    kw = {"agg": agg, "kl_coef": 0.3, "kl_estimator": estimator}
    loss, aux, grad = run(batch, ref_logps=batch["ref_logps"], **kw)
    want, dwant, _, _, kl_mean, _ = ref(batch, ref_logps=batch["ref_logps"], **kw)
    np.testing.assert_allclose(loss, want, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grad, dwant, rtol=GRAD_RTOL, atol=GRAD_ATOL)
    np.testing.assert_allclose(aux["grpo/kl_mean"], kl_mean, rtol=RTOL, atol=ATOL)


def test_kl_penalty_formulas():
    x = np.array([-3.0, -0.5, 0.0, 0.7, 2.0], np.float32)  # log pi - log pi_ref
    lp = jnp.asarray(x)
    zero = jnp.zeros_like(lp)
    np.testing.assert_allclose(kl_penalty(lp, zero, "k1"), x, rtol=1e-7)
    np.testing.assert_allclose(kl_penalty(lp, zero, "k2"), 0.5 * x.astype(np.float64) ** 2, 1e-6)
    d = -x.astype(np.float64)
    np.testing.assert_allclose(kl_penalty(lp, zero, "k3"), np.exp(d) - d - 1.0, rtol=1e-6)
    # k3 clamps d to [-20, 20]: finite and equal to the clamped formula at +-50.
    big = kl_penalty(jnp.array([-50.0, 50.0]), jnp.zeros(2), "k3")
    np.testing.assert_allclose(big, [np.exp(20.0) - 21.0, np.exp(-20.0) + 19.0], rtol=1e-6)


@pytest.mark.parametrize("importance", ["token", "sequence"])
def test_golden_dual_clip(importance):
    batch = make_batch(2, B=16, spread=1.0 if importance == "token" else 2.5)
    kw = {"dual_clip": 1.5, "importance": importance, "agg": "seq-mean-token-sum"}
    loss, aux, grad = run(batch, **kw)
    want, dwant, clip_frac, dual_frac, _, _ = ref(batch, **kw)
    np.testing.assert_allclose(loss, want, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grad, dwant, rtol=GRAD_RTOL, atol=GRAD_ATOL)
    np.testing.assert_allclose(aux["grpo/dual_clip_fraction"], dual_frac, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(aux["grpo/clip_fraction"], clip_frac, rtol=RTOL, atol=ATOL)
    assert dual_frac > 0, "the batch must trigger the dual clip"
    without, _, _ = run(batch, importance=importance, agg="seq-mean-token-sum")
    assert loss < without, "the dual clip caps losses, so it can only lower the total"


def test_dual_clip_caps_at_c_times_abs_advantage():
    # One token, A = -2, ratio e^3 ~ 20: unclipped loss 40, dual-clipped loss 3 * 2 = 6.
    lp, old = jnp.array([[0.0]]), jnp.array([[-3.0]])
    mask, adv = jnp.ones((1, 1)), jnp.array([-2.0])
    loss, aux = grpo_loss(lp, old, mask, adv, dual_clip=3.0)
    np.testing.assert_allclose(loss, 3.0 * 2.0, rtol=1e-7)
    assert float(aux["grpo/dual_clip_fraction"]) == 1.0
    loss, _ = grpo_loss(lp, old, mask, adv)
    np.testing.assert_allclose(loss, 2.0 * np.exp(3.0), rtol=1e-6)


def test_hand_computed_clip_values():
    # Ratios e^{0.5}, e^{-0.5}, 1 with A = +1: -min(rho, clip(rho, 0.8, 1.2)).
    lp = jnp.array([[0.5, -0.5, 0.0]])
    mask, adv = jnp.ones((1, 3)), jnp.array([1.0])
    loss, aux = grpo_loss(lp, jnp.zeros_like(lp), mask, adv)
    np.testing.assert_allclose(loss, -(1.2 + np.exp(-0.5) + 1.0) / 3, rtol=1e-6)
    np.testing.assert_allclose(aux["grpo/clip_fraction"], 1 / 3, rtol=1e-6)  # only token 0


def test_gspo_ratio_is_length_normalised_sequence_ratio():
    # Row 0: log-ratios 0.3 and 0.1 over 2 tokens -> s = e^{0.2} on both; padding ignored.
    lp = jnp.array([[0.3, 0.1, 9.0]])
    mask, adv = jnp.array([[1.0, 1.0, 0.0]]), jnp.array([1.0])
    loss, aux = grpo_loss(lp, jnp.zeros_like(lp), mask, adv, importance="sequence", clip_high=1.0)
    np.testing.assert_allclose(aux["grpo/ratio_mean"], np.exp(0.2), rtol=1e-6)
    np.testing.assert_allclose(loss, -np.exp(0.2), rtol=1e-6)
    # Gradient: s A / |y| on each response token (seq-mean-token-mean would give the same
    # here; token-mean over 2 tokens), 0 on padding.
    g = jax.grad(
        lambda x: grpo_loss(x, jnp.zeros_like(lp), mask, adv, importance="sequence", clip_high=1.0)[
            0
        ]
    )(lp)
    np.testing.assert_allclose(g, [[-np.exp(0.2) / 2, -np.exp(0.2) / 2, 0.0]], rtol=1e-6)


@pytest.mark.parametrize(
    "kw",
    [
        {"agg": "token-mean"},
        {"agg": "seq-mean-token-mean", "importance": "sequence"},
        {"agg": "seq-mean-token-sum-norm", "kl_coef": 0.1, "kl_estimator": "k3"},
    ],
    ids=["token", "gspo", "sum-norm-kl"],
)
def test_check_grads_finite_differences(kw):
    batch = make_batch(3, B=4, T=5, spread=0.05)  # no ratio near a clip boundary
    ref_logps = jnp.asarray(batch["ref_logps"])

    def f(lp):
        return grpo_loss(
            lp,
            batch["old_logps"],
            batch["mask"],
            batch["advantages"],
            ref_logps=ref_logps,
            **kw,
        )[0]

    check_grads(f, (jnp.asarray(batch["logps"]),), order=1, modes=("rev",), eps=1e-2)


def test_bfloat16_inputs_computed_in_float32():
    batch = make_batch(4, dtype=np.float32)
    bf = {k: jnp.asarray(v, jnp.bfloat16) if k != "mask" else v for k, v in batch.items()}
    loss, _ = grpo_loss(bf["logps"], bf["old_logps"], bf["mask"], bf["advantages"])
    assert loss.dtype == jnp.float32
    as_f32 = {k: np.asarray(jnp.asarray(v, jnp.float32)) for k, v in bf.items()}
    want = ref(as_f32)[0]
    np.testing.assert_allclose(loss, want, rtol=RTOL, atol=ATOL)


def test_fully_masked_batch_gives_zero_loss_and_gradient():
    batch = make_batch(5)
    batch["mask"] = np.zeros_like(batch["mask"])
    for agg in AGG_MODES:
        loss, aux, grad = run(batch, agg=agg)
        assert float(loss) == 0.0 and float(aux["denominator"]) == 0.0
        assert np.all(np.asarray(grad) == 0.0)


# ------------------------------------------------------------------------------------
# Presets and wrappers.
# ------------------------------------------------------------------------------------


# Each preset's behaviour on crafted inputs, against arithmetic written out here from the
# papers' values (not from GRPO_PRESETS): clip ranges, KL, importance ratio and aggregation.


def _lp(log_ratios):
    """(logps, old_logps) float32 [B, T] whose differences are `log_ratios`."""
    old = np.full(np.shape(log_ratios), -1.5)
    return (old + np.asarray(log_ratios)).astype(np.float32), old.astype(np.float32)


def test_dapo_preset_clips_asymmetrically_without_kl():
    """DAPO (Yu et al. 2025): clip 0.2 low, 0.28 high, no KL, token-mean."""
    x = np.log([[1.25, 1.3, 0.7], [0.9, 1.0, 1.1]])
    logps, old = _lp(x)
    mask = np.array([[1, 1, 1], [1, 1, 0]], bool)
    adv = np.array([1.0, -1.0], np.float32)
    ref_logps = logps - 2.0  # a large KL that DAPO must ignore
    loss, _ = grpo_loss(logps, old, mask, adv, ref_logps=ref_logps, preset="dapo")
    # -min(rho A, clip(rho, 0.8, 1.28) A) per token; row 0 (A = 1): 1.25 inside the high clip
    # (symmetric 0.2 would give 1.2), 1.3 -> 1.28, 0.7 unclipped (min picks it).
    row0 = [-1.25, -1.28, -0.7]
    # Row 1 (A = -1): -min(-rho, -clip) = max(rho, clip): 0.9, 1.0 (1.1 is masked).
    row1 = [0.9, 1.0]
    np.testing.assert_allclose(loss, np.mean(row0 + row1), rtol=RTOL, atol=ATOL)


def test_gspo_preset_uses_the_sequence_ratio():
    """GSPO (Zheng et al. 2025): rho = exp(mean_t log-ratio) per sequence, clip 3e-4 / 4e-4,
    seq-mean-token-mean, no KL."""
    x = np.array([[0.1, -0.1, 0.3, 5.0], [-0.2, -0.2, -0.2, -0.2]])
    logps, old = _lp(x)
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool)  # the masked 5.0 must not count
    adv = np.array([-1.0, 2.0], np.float32)
    loss, _ = grpo_loss(logps, old, mask, adv, preset="gspo")
    rho0, rho1 = np.exp(0.1), np.exp(-0.2)  # row means of the unmasked log-ratios
    # A < 0: -min(rho A, c A) = |A| max(rho, c), c = clip(rho, 1 - 3e-4, 1 + 4e-4) = 1.0004.
    l0 = 1.0 * max(rho0, 1.0004)
    # A > 0: -A min(rho, c), c = 0.9997.
    l1 = -2.0 * min(rho1, 0.9997)
    np.testing.assert_allclose(loss, (l0 + l1) / 2, rtol=RTOL, atol=ATOL)
    # Token ratios (what a token-level preset would use) give another value.
    token, _ = grpo_loss(logps, old, mask, adv, clip_low=3e-4, clip_high=4e-4)
    assert abs(float(token) - float(loss)) > 1e-2


def test_dr_grpo_preset_divides_by_max_len():
    """Dr. GRPO (Liu et al. 2025): token sums divided by a fixed max_len, then a mean over
    sequences; no KL, clip 0.2."""
    logps, old = _lp(np.zeros((2, 4)))  # ratio 1: the per-token loss is -A
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 0]], bool)
    adv = np.array([1.0, -2.0], np.float32)
    loss, _ = grpo_loss(logps, old, mask, adv, preset="dr_grpo", max_len=8)
    # Row sums -1 * 2 and 2 * 3, each / 8, mean over the 2 sequences (not / T = 4, not / n_i).
    np.testing.assert_allclose(loss, (-2.0 / 8 + 6.0 / 8) / 2, rtol=RTOL, atol=ATOL)


def test_grpo_preset_adds_the_k3_kl_term():
    """GRPO (Shao et al. 2024): clip 0.2, KL to the reference with k3 and coefficient 0.04,
    seq-mean-token-mean."""
    logps, old = _lp(np.log([[1.25, 1.0, 1.0], [1.0, 1.0, 1.0]]))
    mask = np.array([[1, 1, 1], [1, 1, 0]], bool)
    adv = np.array([1.0, 0.5], np.float32)
    d = np.array([[0.3, -0.2, 0.1], [0.5, -0.4, 9.0]])  # ref - logp
    ref_logps = (logps + d).astype(np.float32)
    loss, aux = grpo_loss(logps, old, mask, adv, ref_logps=ref_logps, preset="grpo")
    k3 = np.exp(d) - d - 1.0
    pg = np.array([[-1.2, -1.0, -1.0], [-0.5, -0.5, 0.0]])  # 1.25 clipped to 1.2 for A > 0
    per = pg + 0.04 * k3
    want = ((per[0, :3]).mean() + (per[1, :2]).mean()) / 2
    np.testing.assert_allclose(loss, want, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(aux["grpo/kl_mean"], (k3[0].sum() + k3[1, :2].sum()) / 5, rtol=1e-5)


@pytest.mark.parametrize(
    ("wrapper", "preset"), [(dapo_loss, "dapo"), (dr_grpo_loss, "dr_grpo"), (gspo_loss, "gspo")]
)
def test_wrappers_equal_presets(wrapper, preset):
    batch = make_batch(7, spread=0.01)
    args = (batch["logps"], batch["old_logps"], batch["mask"], batch["advantages"])
    got, got_aux = wrapper(*args, max_len=16)
    want, want_aux = grpo_loss(*args, preset=preset, max_len=16)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_aux["grpo/clip_fraction"], want_aux["grpo/clip_fraction"])
    with pytest.raises(TypeError, match=f"{preset}_loss sets preset"):
        wrapper(*args, preset="grpo")
    assert wrapper.__name__ == f"{preset}_loss" and preset in wrapper.__doc__


def test_preset_defaults_come_from_the_signature():
    """apply_preset reads "was this argument left at its default?" from the function's own
    signature: a value equal to the signature's default yields to the preset, any other value
    that differs from the preset's raises."""

    def loss(*, clip=0.3, agg="token-mean", preset=None):
        del preset

    presets = {"p": {"clip": 0.1}}
    assert apply_preset(loss, "p", presets, {"clip": 0.3, "agg": "x"}) == {"clip": 0.1, "agg": "x"}
    assert apply_preset(loss, "p", presets, {"clip": 0.1, "agg": "x"})["clip"] == 0.1
    with pytest.raises(ValueError, match=r"loss: preset='p' sets clip=0\.1, but clip=0\.2"):
        apply_preset(loss, "p", presets, {"clip": 0.2, "agg": "x"})
    with pytest.raises(TypeError, match=r"loss has no argument 'beta' with a default"):
        apply_preset(loss, "p", presets, {"clip": 0.3, "beta": 1.0})


def test_preset_refuses_conflicting_explicit_argument():
    batch = make_batch(8)
    args = (batch["logps"], batch["old_logps"], batch["mask"], batch["advantages"])
    with pytest.raises(ValueError, match=r"preset='dapo' sets clip_high=0.28, but clip_high=0.3"):
        grpo_loss(*args, preset="dapo", clip_high=0.3)
    with pytest.raises(ValueError, match=r"preset='gspo' sets clip_low=0.0003, but clip_low=0.1"):
        gspo_loss(*args, clip_low=0.1)
    # Passing the preset's own value is not a conflict.
    a, _ = grpo_loss(*args, preset="dapo", clip_high=0.28, agg="token-mean")
    b, _ = grpo_loss(*args, preset="dapo")
    np.testing.assert_array_equal(a, b)
    # Arguments the preset does not control stay free.
    c, _ = grpo_loss(*args, preset="dapo", dual_clip=3.0)
    np.testing.assert_allclose(c, ref(batch, clip_high=0.28, dual_clip=3.0)[0], rtol=RTOL)


def test_grpo_preset_needs_reference():
    batch = make_batch(9)
    args = (batch["logps"], batch["old_logps"], batch["mask"], batch["advantages"])
    with pytest.raises(ValueError, match=r"kl_coef=0.04 \(set by preset='grpo'\) needs ref_logps"):
        grpo_loss(*args, preset="grpo")


# ------------------------------------------------------------------------------------
# Errors.
# ------------------------------------------------------------------------------------


def _args(B=4, T=5):
    x = jnp.zeros((B, T))
    return x, x, jnp.ones((B, T), bool), jnp.zeros((B,))


@pytest.mark.parametrize(
    ("change", "exc", "pattern"),
    [
        ({"logps": jnp.zeros((4,))}, ValueError, r"logps must have shape \[B, T\], got shape"),
        ({"logps": jnp.zeros((4, 5), jnp.int32)}, TypeError, "logps must be a floating-point"),
        ({"old_logps": jnp.zeros((4, 6))}, ValueError, r"old_logps must have the shape of logps"),
        ({"old_logps": jnp.zeros((4, 5), jnp.int32)}, TypeError, "old_logps must be a floating"),
        ({"mask": jnp.ones((4, 6))}, ValueError, r"mask must have the shape of logps \(4, 5\)"),
        ({"advantages": jnp.zeros((3,))}, ValueError, r"advantages must have shape \[B\] with B=4"),
        ({"advantages": jnp.zeros((4,), jnp.int32)}, TypeError, "advantages must be a floating"),
        ({"advantages": jnp.zeros((4, 5))}, ValueError, r"advantages must have shape \[B\]"),
        ({"ref_logps": jnp.zeros((4, 6))}, ValueError, r"ref_logps must have the shape of logps"),
        ({"agg": "mean"}, ValueError, r"agg must be one of \('token-mean'"),
        ({"importance": "seq"}, ValueError, r"importance must be one of \('token', 'sequence'\)"),
        ({"kl_estimator": "k4"}, ValueError, r"kl_estimator must be one of \('k1', 'k2', 'k3'\)"),
        ({"preset": "ppo"}, ValueError, r"preset must be one of \(None, 'grpo', 'dapo'"),
        ({"clip_low": 1.0}, ValueError, r"clip_low must be in \[0.0, 1.0\), got 1.0"),
        ({"clip_low": -0.1}, ValueError, r"clip_low must be in \[0.0, 1.0\), got -0.1"),
        ({"clip_high": -0.1}, ValueError, r"clip_high must be >= 0.0, got -0.1"),
        ({"clip_high": "big"}, TypeError, r"clip_high must be a float, got 'big'"),
        ({"dual_clip": 1.0}, ValueError, r"dual_clip must be > 1.0, got 1.0"),
        ({"kl_coef": -1.0}, ValueError, r"kl_coef must be >= 0.0, got -1.0"),
        ({"kl_coef": 0.1}, ValueError, r"kl_coef=0.1 needs ref_logps \[B, T\]"),
        ({"agg": "seq-mean-token-sum-norm", "max_len": 0}, ValueError, "max_len must be a pos"),
    ],
)
def test_errors_name_argument_and_expectation(change, exc, pattern):
    logps, old, mask, adv = _args()
    kw = dict(change)
    logps = kw.pop("logps", logps)
    old = kw.pop("old_logps", old)
    mask = kw.pop("mask", mask)
    adv = kw.pop("advantages", adv)
    with pytest.raises(exc, match=pattern):
        grpo_loss(logps, old, mask, adv, **kw)


def test_checks_run_at_trace_time_under_jit():
    logps, old, mask, _ = _args()
    with pytest.raises(TypeError, match="advantages must be a floating"):
        jax.jit(grpo_loss)(logps, old, mask, jnp.zeros((4,), jnp.int32))


# ------------------------------------------------------------------------------------
# Properties: finite loss and gradients for any allowed input.
# ------------------------------------------------------------------------------------


@st.composite
def grpo_inputs(draw):
    # A few shapes (B = 1 and T = 1 among them): each new shape costs a compile.
    B, T = draw(st.sampled_from([(1, 1), (1, 5), (2, 1), (4, 5), (6, 3)]))
    logratio = st.one_of(st.sampled_from([-50.0, 0.0, 50.0]), st.floats(-50.0, 50.0))
    lp = draw(hnp.arrays(np.float32, (B, T), elements=st.floats(-60.0, 0.0, width=32)))
    if draw(st.booleans()):
        lp = np.full((B, T), lp.flat[0], np.float32)  # all-equal log-probs
    old = lp - draw(hnp.arrays(np.float32, (B, T), elements=logratio))
    ref = lp - draw(hnp.arrays(np.float32, (B, T), elements=logratio))
    mask = draw(hnp.arrays(np.bool_, (B, T)))
    if draw(st.booleans()):
        mask[0] = False  # a fully masked row
    adv = draw(hnp.arrays(np.float32, (B,), elements=st.floats(-10.0, 10.0, width=32)))
    kw = {
        "agg": draw(st.sampled_from(AGG_MODES)),
        "importance": draw(st.sampled_from(["token", "sequence"])),
        "dual_clip": draw(st.sampled_from([None, 3.0])),
        "kl_coef": draw(st.sampled_from([0.0, 0.1])),
        "kl_estimator": draw(st.sampled_from(["k1", "k2", "k3"])),
    }
    return lp, old, ref, mask, adv, kw


@settings(max_examples=25)
@given(grpo_inputs())
@pytest.mark.slow
def test_property_finite_loss_and_gradients(inputs):
    lp, old, ref, mask, adv, kw = inputs

    def f(x):
        return grpo_loss(x, old, mask, adv, ref_logps=ref, **kw)

    (loss, aux), grad = jax.value_and_grad(f, has_aux=True)(jnp.asarray(lp))
    assert np.isfinite(loss), (loss, kw)
    assert np.all(np.isfinite(grad)), kw
    for name, value in aux.items():
        assert np.isfinite(value), (name, kw)
    # Padding never receives gradient.
    assert np.all(np.asarray(grad)[~mask] == 0.0)
