"""GAC inside optax.chain under jax.jit with sharded parameters, and its state through orbax."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from precision import F32_EPS

from giftjax import optim


def make_tree(seed, scale=1.0):
    rng = np.random.default_rng(seed)
    return {
        "embed": scale * rng.normal(size=(64, 16)).astype(np.float32),  # [V, D], sharded over V
        "mlp": {"w": scale * rng.normal(size=(16, 32)).astype(np.float32)},  # [D, F], over F
        "norm": scale * rng.normal(size=(16,)).astype(np.float32),  # replicated
    }


SPECS = {"embed": P("fsdp", None), "mlp": {"w": P(None, "fsdp")}, "norm": P()}


def microbatch_stats(seed, mean_tree, k, sigma):
    """K synthetic micro-batch gradients around mean_tree: (their mean tree, sum of |g_k|^2)."""
    rng = np.random.default_rng(seed)
    per_mb = [
        jax.tree.map(lambda x: x + sigma * rng.normal(size=x.shape).astype(np.float32), mean_tree)
        for _ in range(k)
    ]
    mean = jax.tree.map(lambda *xs: sum(xs) / k, *per_mb)
    sq = sum(
        sum(float(np.sum(x.astype(np.float64) ** 2)) for x in jax.tree.leaves(g)) for g in per_mb
    )
    return mean, np.float32(sq)


def _cancellation(batches, k=4) -> float:
    """The largest (sum of magnitudes) / (result) of the statistics GAC forms from batches."""
    flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)]).astype(float)
    worst = 1.0
    for g_sft, g_rl, sq_sft, sq_rl in batches:
        var = {}
        for name, g, sq in (("sft", flat(g_sft), sq_sft), ("rl", flat(g_rl), sq_rl)):
            s1, s2 = float(sq), float(np.sum(g**2))
            var[name] = (s1 - k * s2) / (k * (k - 1))
            worst = max(worst, (s1 + k * s2) / (s1 - k * s2))
        diff2 = float(np.sum((flat(g_sft) - flat(g_rl)) ** 2))
        d2 = diff2 - var["sft"] - var["rl"]
        if d2 > 0:
            worst = max(worst, (diff2 + var["sft"] + var["rl"]) / d2)
    return worst


def tx():
    return optax.chain(optim.gac(), optax.clip_by_global_norm(1.0), optax.adamw(1e-2))


def run_steps(params, batches, shardings=None):
    opt = tx()

    def step(params, opt_state, g_sft, g_rl, sq_sft, sq_rl):
        stats = optim.GacStats(sft_sq_norm_sum=sq_sft, rl_sq_norm_sum=sq_rl, num_microbatches=4)
        updates, opt_state = opt.update(
            {"sft": g_sft, "rl": g_rl}, opt_state, params, gac_stats=stats
        )
        return optax.apply_updates(params, updates), opt_state

    if shardings is None:
        step = jax.jit(step)
    else:
        step = jax.jit(
            step,
            in_shardings=(shardings, None, shardings, shardings, None, None),
            out_shardings=(shardings, None),
        )
    opt_state = opt.init(params)
    for b in batches:
        params, opt_state = step(params, opt_state, *b)
    return params, opt_state


@pytest.mark.slow
def test_chain_under_jit_with_params_sharded_over_8_devices():
    assert jax.device_count() == 8
    mesh = Mesh(np.array(jax.devices()), ("fsdp",))
    shardings = jax.tree.map(lambda spec: NamedSharding(mesh, spec), SPECS)
    params = make_tree(0)
    batches = []
    for i in range(12):
        g_sft, sq_sft = microbatch_stats(4 * i, make_tree(4 * i + 1, 0.1), 4, 0.3)
        g_rl, sq_rl = microbatch_stats(4 * i + 2, make_tree(4 * i + 3, 0.1), 4, 0.5)
        batches.append((g_sft, g_rl, sq_sft, sq_rl))

    ref_params, ref_state = run_steps(params, batches)
    sharded_params = jax.device_put(params, shardings)
    sharded_batches = [
        (jax.device_put(a, shardings), jax.device_put(b, shardings), c, d) for a, b, c, d in batches
    ]
    assert sharded_params["embed"].addressable_shards[0].data.shape == (8, 16)
    out_params, out_state = run_steps(sharded_params, sharded_batches, shardings)

    assert out_params["embed"].sharding.spec == P("fsdp", None)
    assert out_params["mlp"]["w"].sharding.spec == P(None, "fsdp")
    # Sharded vs unsharded: the global norms sum the n = 1552 entries in another order (eps n
    # of their scale, precision.py), and the statistics are differences of such sums
    # (s^2 = (S1 - K S2) / (K (K - 1)), D^2 = |g_sft - g_rl|^2 - s_sft^2 - s_rl^2), which
    # cancel by kappa = (sum of the magnitudes) / (result), computed here from the batches.
    stat_rtol = F32_EPS * (1552 + 16) * _cancellation(batches)
    got, want = optim.find_gac_state(out_state), optim.find_gac_state(ref_state)
    for name in optim.GacState._fields:
        # mu-like fields lie in [0, 1] and move less than the statistics' relative error.
        np.testing.assert_allclose(
            np.asarray(getattr(got, name)),
            np.asarray(getattr(want, name)),
            rtol=stat_rtol,
            atol=stat_rtol,
            err_msg=name,
        )
    # The combined gradient inherits that relative error (through mu and the clip's norm:
    # twice), and Adam's normalised update (m / sqrt(v), at most lr = 1e-2 per entry and step)
    # turns a relative error r of the gradient into about lr r per step: 12 steps here.
    atol = 12 * 1e-2 * 2 * stat_rtol
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=atol),
        out_params,
        ref_params,
    )
    # The statistics were measured (two refreshes: t = 0 and t = 10) and steer mu_raw.
    assert int(got.num_refreshes) == 2 and int(got.last_refresh) == 10
    assert float(got.rl_var) > float(got.sft_var) > 0.0
    assert float(got.mu_raw) != 0.5


@pytest.mark.parametrize("smoothing", ["separate", "anchored"])
def test_state_survives_orbax_save_and_restore(tmp_path, smoothing):
    opt = optax.chain(optim.gac(estimator="proxy", smoothing=smoothing), optax.adamw(1e-3))
    params = make_tree(1)
    state = opt.init(params)
    g = {"sft": make_tree(2), "rl": make_tree(3)}
    update = jax.jit(opt.update)
    for i in range(13):
        stats = optim.GacStats(sft_var=1.0 + i, rl_var=2.0, disagreement=0.5 * i)
        _, state = update(g, state, params, gac_stats=stats)

    ckptr = ocp.StandardCheckpointer()
    ckptr.save(tmp_path / "state", state)
    ckptr.wait_until_finished()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = ckptr.restore(tmp_path / "state", abstract)
    ckptr.close()

    assert jax.tree.structure(restored) == jax.tree.structure(state)
    gac_state = optim.find_gac_state(restored)
    assert isinstance(gac_state, optim.GacState)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert gac_state.count.dtype == jnp.int32 and gac_state.mu.dtype == jnp.float32
    # Training continues identically from the restored state.
    stats = optim.GacStats(sft_var=3.0, rl_var=1.0, disagreement=0.1)
    u1, s1 = update(g, state, params, gac_stats=stats)
    u2, s2 = update(g, restored, params, gac_stats=stats)
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), (u1, s1), (u2, s2)
    )
