"""The hybrid step: exact micro-batch accumulation, the gradient statistics, GAC applied."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from precision import F32_EPS

from giftjax import optim
from giftjax.losses.common import aggregate, finish
from giftjax.train import accumulate_grads, hybrid_step, make_hybrid_step

V, D, B, T = 11, 6, 3, 5  # vocab, width, sequences per micro-batch, tokens


def forward(params, tokens):
    """Token log-probabilities of a one-layer bigram model: [B, T] -> [B, T, V]."""
    h = jnp.tanh(params["emb"][tokens])  # [B, T, D]
    return jax.nn.log_softmax(h @ params["out"], axis=-1)  # [B, T, V]


def token_logps(params, mb):
    logp = forward(params, mb["tokens"])
    return jnp.take_along_axis(logp, mb["targets"][..., None], axis=-1)[..., 0]  # [B, T]


def sft_loss(params, mb):
    num, den = aggregate(-token_logps(params, mb), mb["mask"], agg="token-mean")
    return finish(num, den, {})


def rl_loss(params, mb):
    per_token = -mb["adv"][:, None] * token_logps(params, mb)  # REINFORCE, [B, T]
    num, den = aggregate(per_token, mb["mask"], agg="token-mean")
    return finish(num, den, {})


def init_params(seed=0, v=V, d=D):
    rng = np.random.default_rng(seed)
    return {
        "emb": jnp.asarray(rng.normal(size=(v, d)), jnp.float32),
        "out": jnp.asarray(rng.normal(size=(d, v)), jnp.float32),
    }


def microbatches(seed, k, b=B, v=V):
    """K micro-batches stacked on a leading axis, with unequal token counts."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, T + 1, size=(k, b))
    lengths[0, 0] = 0  # one fully masked row
    return {
        "tokens": jnp.asarray(rng.integers(0, v, size=(k, b, T))),
        "targets": jnp.asarray(rng.integers(0, v, size=(k, b, T))),
        "mask": jnp.asarray(np.arange(T)[None, None, :] < lengths[..., None]),
        "adv": jnp.asarray(rng.normal(size=(k, b)), jnp.float32),
    }


def hybrid_tol(k: int, b: int = B, v: int = V, d: int = D) -> float:
    """Relative bound between two float32 programs computing one loss or gradient of the
    bigram model: the chain sums d (the matmul), v (the log-softmax), the k b T tokens and
    ~16 elementwise roundings, each program within u = eps / 2 per summed term (precision.py)."""
    return F32_EPS * (d + v + k * b * T + 16)


def stat_tol(params, sft_mbs, rl_mbs, b: int = B, v: int = V, d: int = D) -> float:
    """Relative bound on GAC's gradient statistics from two programs: the gradients' own error
    (hybrid_tol) and the sums of squares over the P parameters, both amplified by the
    cancellation kappa = (sum of magnitudes) / result of s^2 = (S1 - K S2) / (K (K - 1)) and
    D^2 = |g_sft - g_rl|^2 - s_sft^2 - s_rl^2, computed from these micro-batches."""
    var, kappa, means = {}, 1.0, {}
    for name, loss_fn, mbs in (("sft", sft_loss, sft_mbs), ("rl", rl_loss, rl_mbs)):
        grads, dens = per_microbatch(loss_fn, params, mbs)
        k = len(grads)
        g_k = grads * k / dens.sum()
        s1, s2 = np.sum(g_k**2), np.sum(g_k.mean(0) ** 2)
        var[name], means[name] = (s1 - k * s2) / (k * (k - 1)), g_k.mean(0)
        kappa = max(kappa, (s1 + k * s2) / (s1 - k * s2))
    diff2 = np.sum((means["sft"] - means["rl"]) ** 2)
    d2 = diff2 - var["sft"] - var["rl"]
    if d2 > 0:
        kappa = max(kappa, (diff2 + var["sft"] + var["rl"]) / d2)
    k_max = max(len(jax.tree.leaves(sft_mbs)[0]), len(jax.tree.leaves(rl_mbs)[0]))
    p = sum(x.size for x in jax.tree.leaves(params))
    return 2 * (hybrid_tol(k_max, b, v, d) + F32_EPS * (p + 16)) * float(kappa)


def per_microbatch(loss_fn, params, mbs):
    """[K, P] flat gradients of each micro-batch's numerator and [K] denominators (vmap)."""

    def one(mb):
        grad, aux = jax.grad(
            lambda p: (loss_fn(p, mb)[1]["numerator"], loss_fn(p, mb)[1]), has_aux=True
        )(params)
        return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(grad)]), aux["denominator"]

    grads, dens = jax.jit(jax.vmap(one))(mbs)
    return np.asarray(grads, np.float64), np.asarray(dens, np.float64)


def merged(mbs):
    """All micro-batches as one batch [K * B, ...]."""
    return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), mbs)


@pytest.mark.parametrize(
    ("k", "loss_fn"),
    [
        pytest.param(1, sft_loss, id="1-sft", marks=pytest.mark.slow),
        pytest.param(1, rl_loss, id="1-rl"),
        pytest.param(3, sft_loss, id="3-sft"),
        pytest.param(3, rl_loss, id="3-rl"),
    ],
)
def test_accumulation_is_exact_and_statistics_are_per_microbatch(loss_fn, k):
    params, mbs = init_params(), microbatches(k, k)
    out = jax.jit(lambda p, m: accumulate_grads(loss_fn, p, m))(params, mbs)
    # The whole batch at once: the token mean over every token of every micro-batch.
    (full_loss, _), full_grads = jax.value_and_grad(loss_fn, has_aux=True)(params, merged(mbs))
    tol = hybrid_tol(k)  # accumulated vs whole: two programs
    np.testing.assert_allclose(float(out.loss), float(full_loss), rtol=tol)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(
            np.asarray(a), np.asarray(b), atol=tol * float(np.abs(b).max())
        ),
        out.grads,
        full_grads,
    )
    # g_k = K grad(num_k) / sum_j den_j, computed here micro-batch by micro-batch.
    grads, dens = per_microbatch(loss_fn, params, mbs)
    g_k = grads * k / dens.sum()
    # A sum of squares (no cancellation) of gradients within tol: 2 tol + eps (P + K + 16).
    sq_tol = 2 * tol + F32_EPS * (grads.shape[1] + k + 16)
    np.testing.assert_allclose(float(out.sq_norm_sum), np.sum(g_k**2), rtol=sq_tol)
    flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(out.grads)])
    np.testing.assert_allclose(g_k.mean(0), flat, atol=tol * float(np.abs(flat).max()))
    assert out.num_microbatches == k


@pytest.mark.slow
def test_step_equals_manual_gac_update():
    params = init_params()
    sft_mbs, rl_mbs = microbatches(1, 4), microbatches(2, 3)
    tx = optax.chain(optim.gac(), optax.clip_by_global_norm(1.0), optax.adamw(1e-2))
    step = make_hybrid_step(tx, sft_loss, rl_loss, donate=False)
    new_params, state, metrics = step(params, tx.init(params), sft_mbs, rl_mbs)

    # By hand: the two full-batch gradients, the statistics from per-micro-batch gradients.
    def grads_and_sq(loss_fn, mbs, k):
        grads, dens = per_microbatch(loss_fn, params, mbs)
        sq = float(np.sum((grads * k / dens.sum()) ** 2))
        g = jax.jit(jax.grad(lambda p: loss_fn(p, merged(mbs))[0]))(params)
        return g, sq

    g_sft, sq_sft = grads_and_sq(sft_loss, sft_mbs, 4)
    g_rl, sq_rl = grads_and_sq(rl_loss, rl_mbs, 3)
    stats = optim.GacStats(
        sft_sq_norm_sum=sq_sft, rl_sq_norm_sum=sq_rl, num_microbatches=4, rl_num_microbatches=3
    )
    updates, want_state = jax.jit(tx.update)(
        {"sft": g_sft, "rl": g_rl}, tx.init(params), params, gac_stats=stats
    )
    want_params = optax.apply_updates(params, updates)
    # The step's gradients and statistics come from another program than these (within
    # stat_tol); clip and Adam's first step (g / (|g| + 1e-8)) are scale-invariant, so the
    # update (lr = 1e-2 per entry) moves by lr stat_tol at most, plus u |param| for the add.
    tol = stat_tol(params, sft_mbs, rl_mbs)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(
            np.asarray(a), np.asarray(b), atol=1e-2 * tol + F32_EPS * float(np.abs(b).max())
        ),
        new_params,
        want_params,
    )
    gac_state = optim.find_gac_state(state)
    np.testing.assert_allclose(float(gac_state.mu_raw), float(want_state[0].mu_raw), rtol=tol)
    assert float(metrics["gac/mu"]) == float(gac_state.mu)
    assert float(metrics["gac/mu_raw"]) == float(gac_state.mu_raw) != 0.5
    assert float(metrics["gac/prior"]) == 0.0
    np.testing.assert_allclose(
        float(metrics["loss/sft"]), float(sft_loss(params, merged(sft_mbs))[0]), rtol=hybrid_tol(4)
    )
    np.testing.assert_allclose(
        float(metrics["loss/rl"]), float(rl_loss(params, merged(rl_mbs))[0]), rtol=hybrid_tol(3)
    )


@pytest.mark.slow
def test_sharded_step_matches_unsharded():
    """Parameters sharded over 8 fake devices (vocab axis), micro-batch rows over the same 8."""
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()), ("x",))
    params = init_params(0, v=16, d=8)
    sft_mbs, rl_mbs = microbatches(1, 2, b=8, v=16), microbatches(2, 3, b=8, v=16)
    tx = optax.chain(optim.gac(refresh_every=1), optax.clip_by_global_norm(1.0), optax.adam(0.1))
    p_shard = {"emb": NamedSharding(mesh, P("x", None)), "out": NamedSharding(mesh, P(None, "x"))}
    rows = NamedSharding(mesh, P(None, "x"))  # [K, B, ...]: B over the devices
    b_shard = {"tokens": rows, "targets": rows, "mask": rows, "adv": rows}
    sharded = make_hybrid_step(
        tx, sft_loss, rl_loss, donate=False, in_shardings=(p_shard, None, b_shard, b_shard)
    )
    plain = make_hybrid_step(tx, sft_loss, rl_loss, donate=False)
    state_a = state_b = tx.init(params)
    params_a = jax.device_put(params, p_shard)
    params_b = params
    tol = 0.0  # sharded vs unsharded: the statistics' bound, largest over the 3 steps
    for _ in range(3):
        tol = max(tol, stat_tol(params_b, sft_mbs, rl_mbs, b=8, v=16, d=8))
        params_a, state_a, metrics_a = sharded(params_a, state_a, sft_mbs, rl_mbs)
        params_b, state_b, metrics_b = plain(params_b, state_b, sft_mbs, rl_mbs)
    assert params_a["emb"].sharding.spec == P("x", None)
    # Metrics (losses, norms, mu and the statistics) within that relative bound; parameters
    # move by at most lr = 0.1 per Adam step, each step's update off by lr tol at most.
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol),
        metrics_a,
        metrics_b,
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=3 * 0.1 * tol),
        params_a,
        params_b,
    )
    assert float(metrics_a["gac/mu_raw"]) != 0.5


class Bigram(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.emb = nnx.Embed(V, D, rngs=rngs)
        self.out = nnx.Linear(D, V, rngs=rngs)

    def __call__(self, tokens):
        return jax.nn.log_softmax(self.out(jnp.tanh(self.emb(tokens))), axis=-1)


@pytest.mark.slow
def test_nnx_model_state_trains_under_jit():
    graphdef, params = nnx.split(Bigram(rngs=nnx.Rngs(0)), nnx.Param)

    def nnx_logps(p, mb):
        logp = nnx.merge(graphdef, p)(mb["tokens"])
        return jnp.take_along_axis(logp, mb["targets"][..., None], axis=-1)[..., 0]

    def nnx_sft(p, mb):
        return finish(*aggregate(-nnx_logps(p, mb), mb["mask"], agg="token-mean"), {})

    def nnx_rl(p, mb):
        per_token = -mb["adv"][:, None] * nnx_logps(p, mb)
        return finish(*aggregate(per_token, mb["mask"], agg="token-mean"), {})

    tx = optax.chain(optim.gac(refresh_every=1), optax.adam(3e-2))
    step = make_hybrid_step(tx, nnx_sft, nnx_rl)
    opt_state = tx.init(params)
    sft_mbs, rl_mbs = microbatches(3, 2), microbatches(4, 2)
    losses, mus = [], []
    for _ in range(30):
        params, opt_state, metrics = step(params, opt_state, sft_mbs, rl_mbs)
        losses.append(float(metrics["loss/sft"]))
        mus.append(float(metrics["gac/mu"]))
    assert isinstance(params, nnx.State)
    assert losses[-1] < losses[0] - 0.1, losses
    assert np.all(np.abs(np.diff([0.5, *mus])) <= 0.01 + 1e-6)
    assert int(optim.find_gac_state(opt_state).num_refreshes) == 30


@pytest.mark.slow
def test_one_microbatch_falls_back_and_given_stats_pass_through():
    params = init_params()
    tx = optax.chain(optim.gac(), optax.sgd(0.1))
    step = make_hybrid_step(tx, sft_loss, rl_loss, donate=False)
    _, _, metrics = step(params, tx.init(params), microbatches(5, 1), microbatches(6, 1))
    assert float(metrics["gac/mu_raw"]) == 0.5  # K = 1: no noise estimate, no refresh
    tx = optax.chain(optim.gac(estimator="proxy"), optax.sgd(0.1))
    step = make_hybrid_step(tx, sft_loss, rl_loss, collect_stats=False, donate=False)
    stats = optim.GacStats(sft_var=1.0, rl_var=3.0, disagreement=0.0)
    _, _, metrics = step(params, tx.init(params), microbatches(5, 2), microbatches(6, 2), stats)
    assert float(metrics["gac/mu_raw"]) == pytest.approx(0.75)


@pytest.mark.slow
def test_list_of_microbatches_is_stacked():
    params, mbs = init_params(), microbatches(7, 3)
    as_list = [jax.tree.map(lambda x, i=i: x[i], mbs) for i in range(3)]
    a = jax.jit(lambda p, m: accumulate_grads(sft_loss, p, m))(params, mbs)
    b = jax.jit(lambda p, m: accumulate_grads(sft_loss, p, m))(params, as_list)
    # Two jitted programs (a stacked array vs a list stacked inside): the two-program bound.
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(
            np.asarray(x), np.asarray(y), atol=hybrid_tol(3) * float(np.abs(y).max())
        ),
        a.grads,
        b.grads,
    )


def test_errors():
    params, mbs = init_params(), microbatches(8, 2)
    tx = optax.chain(optim.gac(), optax.sgd(0.1))
    kw = dict(sft_loss_fn=sft_loss, rl_loss_fn=rl_loss, tx=tx)
    with pytest.raises(ValueError, match="not both"):
        hybrid_step(params, tx.init(params), mbs, mbs, gac_stats=optim.GacStats(), **kw)
    no_den = lambda p, mb: (sft_loss(p, mb)[0], {"numerator": 1.0})
    with pytest.raises(ValueError, match=r"sft_loss_fn must return aux\['numerator'\] and"):
        hybrid_step(params, tx.init(params), mbs, mbs, **{**kw, "sft_loss_fn": no_den})
    ragged = {**mbs, "adv": mbs["adv"][:1]}
    with pytest.raises(ValueError, match=r"rl_microbatches must be stacked .* \[1, 2\]"):
        hybrid_step(params, tx.init(params), mbs, ragged, **kw)
