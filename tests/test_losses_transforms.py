"""Cross-cutting checks of the GRPO, DPO, UNA and SFT losses.

For every loss configuration:
- micro-batch exactness: 4 micro-batches, numerators and denominators summed, one
  division: the same loss and the same gradient as the whole batch;
- ``jax.jit`` on inputs sharded over 8 fake CPU devices (batch axis split 8 ways) gives
  the eager, unsharded values, metrics and gradients, and keeps the gradients sharded
  (the per-loss golden tests compare jitted values with NumPy);
- ``jax.vmap`` over a leading axis equals a Python loop (one case per code path).
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from precision import F32_EPS

from giftjax.losses import AGG_MODES, dpo_loss, grpo_loss, sft_loss, una_loss

B, T, MICRO = 16, 9, 4
# Micro-batched, sharded or vmapped vs whole: two float32 programs that sum the B T = 144
# tokens in different orders differ by at most eps (B T + 16) of the scale (precision.py).
RTOL = ATOL = F32_EPS * (B * T + 16)  # ~1.9e-5
# Gradients are elementwise (entries ~ 1/(B T)); only the denominator and GSPO's sequence mean
# are sums: eps (T + 16), under 3e-6, so 1e-5 relative with a floor for zero entries.
GRAD_RTOL, GRAD_ATOL = 1e-5, 1e-9


def slow_cases(names, slow):
    """`names` for parametrize, those in `slow` (over ~5 s each on a 2-core CPU) marked slow."""
    assert set(slow) <= set(names), set(slow) - set(names)
    return [pytest.param(n, marks=pytest.mark.slow) if n in slow else n for n in names]


def make_data(seed, batch=B):
    """Every array any case needs, each with the batch on axis 0 (float32, bool mask)."""
    rng = np.random.default_rng(seed)
    logps = -rng.uniform(0.05, 3.0, (batch, T))
    lengths = rng.integers(1, T + 1, batch)
    lengths[1] = 0  # a fully masked row
    if batch == B:
        lengths[8:12] = 0  # a fully masked micro-batch: its denominator is 0
    data = {
        "logps": logps,
        "old_logps": logps + rng.normal(0.0, 0.4, (batch, T)),
        "ref_logps": logps + rng.normal(0.0, 0.4, (batch, T)),
        "advantages": rng.normal(size=batch),
        "binary": rng.integers(0, 2, batch).astype(np.float64),
        "reward": rng.normal(size=batch),
        "chosen": -rng.uniform(5, 30, batch),
        "rejected": -rng.uniform(5, 30, batch),
    }
    data["ref_chosen"] = data["chosen"] + rng.normal(0, 2, batch)
    data["ref_rejected"] = data["rejected"] + rng.normal(0, 2, batch)
    data = {k: v.astype(np.float32) for k, v in data.items()}
    data["mask"] = np.arange(T)[None, :] < lengths[:, None]
    return data


def _grpo(d, **kw):
    return grpo_loss(
        d["logps"], d["old_logps"], d["mask"], d["advantages"], ref_logps=d["ref_logps"], **kw
    )


def _dpo(d, **kw):
    return dpo_loss(d["chosen"], d["rejected"], d["ref_chosen"], d["ref_rejected"], **kw)


def _una(d, target, **kw):
    return una_loss(d["logps"], d["ref_logps"], d["mask"], d[target], beta=0.5, **kw)


def _sft(d, **kw):
    return sft_loss(d["logps"], d["mask"], **kw)


# name -> (loss of a data dict, the inputs to differentiate)
CASES = {}
for _agg in AGG_MODES:
    for _imp in ("token", "sequence"):
        CASES[f"grpo-{_imp}-{_agg}"] = (
            functools.partial(_grpo, agg=_agg, importance=_imp),
            ("logps",),
        )
CASES["grpo-kl-k3-dual-clip"] = (
    functools.partial(_grpo, kl_coef=0.1, kl_estimator="k3", dual_clip=2.0),
    ("logps",),
)
CASES["grpo-preset-grpo"] = (functools.partial(_grpo, preset="grpo"), ("logps",))
CASES["dr_grpo-max_len"] = (functools.partial(_grpo, preset="dr_grpo", max_len=32), ("logps",))
for _lt, _ls in (("sigmoid", 0.1), ("ipo", 0.0), ("hinge", 0.0)):
    CASES[f"dpo-{_lt}"] = (
        functools.partial(_dpo, loss_type=_lt, label_smoothing=_ls, beta=0.2),
        ("chosen", "rejected"),
    )
CASES["una-binary_mse"] = (functools.partial(_una, target="binary"), ("logps",))
CASES["una-binary_bce"] = (
    functools.partial(_una, target="binary", kind="binary_bce"),
    ("logps",),
)
CASES["una-score_mse"] = (functools.partial(_una, target="reward", kind="score_mse"), ("logps",))
CASES["sft-none"] = (_sft, ("logps",))
CASES["sft-chord"] = (functools.partial(_sft, weighting="chord"), ("logps",))
CASES["sft-chord-seq-mean-token-mean"] = (
    functools.partial(_sft, weighting="chord", agg="seq-mean-token-mean"),
    ("logps",),
)


def _loss_and_grad(fn, keys, data, *, output="loss"):
    """(loss or numerator, aux, gradient dict) of fn with respect to data[keys]."""

    def f(diff):
        loss, aux = fn({**data, **diff})
        return (loss if output == "loss" else aux["numerator"]), aux

    diff = {k: jnp.asarray(data[k]) for k in keys}
    (value, aux), grads = jax.value_and_grad(f, has_aux=True)(diff)
    return value, aux, grads


@pytest.mark.parametrize("name", slow_cases(sorted(CASES), {"dr_grpo-max_len"}))
def test_microbatches_give_the_whole_batch_loss_and_gradient(name):
    fn, keys = CASES[name]
    data = make_data(0)
    loss, _, grads = _loss_and_grad(fn, keys, data)

    size = B // MICRO
    numerators, denominators, micro_grads = [], [], []
    for k in range(MICRO):
        micro = {key: v[k * size : (k + 1) * size] for key, v in data.items()}
        num, aux, g = _loss_and_grad(fn, keys, micro, output="numerator")
        numerators.append(float(num))
        denominators.append(float(aux["denominator"]))
        micro_grads.append(g)
    total = sum(denominators)
    assert total > 0
    np.testing.assert_allclose(sum(numerators) / total, loss, rtol=RTOL, atol=ATOL)
    for key in keys:
        combined = np.concatenate([np.asarray(g[key]) for g in micro_grads]) / total
        np.testing.assert_allclose(combined, grads[key], rtol=GRAD_RTOL, atol=GRAD_ATOL)
        assert np.any(np.asarray(grads[key]) != 0), "the gradient must not be trivially zero"


@pytest.fixture(scope="module")
def batch_sharding():
    devices = jax.devices()
    assert len(devices) == 8, "conftest sets 8 fake CPU devices"
    mesh = Mesh(np.array(devices), ("data",))
    return NamedSharding(mesh, P("data"))  # batch axis split 8 ways, the rest replicated


@pytest.mark.parametrize("name", sorted(CASES))
def test_jitted_on_sharded_inputs_matches_eager(name, batch_sharding):
    fn, keys = CASES[name]
    data = make_data(1)
    loss, aux, grads = _loss_and_grad(fn, keys, data)

    sharded = {k: jax.device_put(v, batch_sharding) for k, v in data.items()}
    assert len(sharded["mask"].sharding.device_set) == 8
    assert sharded["mask"].addressable_shards[0].data.shape[0] == B // 8

    @jax.jit
    def step(d):
        return _loss_and_grad(fn, keys, d)

    s_loss, s_aux, s_grads = step(sharded)
    np.testing.assert_allclose(s_loss, loss, rtol=RTOL, atol=ATOL)
    for metric, value in aux.items():
        np.testing.assert_allclose(s_aux[metric], value, rtol=RTOL, atol=ATOL, err_msg=metric)
    for key in keys:
        np.testing.assert_allclose(s_grads[key], grads[key], rtol=GRAD_RTOL, atol=GRAD_ATOL)
        assert s_grads[key].sharding.is_equivalent_to(batch_sharding, s_grads[key].ndim)


# vmap does not depend on the aggregation mode: one case per distinct code path.
VMAP_CASES = [
    "grpo-token-token-mean",
    "grpo-sequence-seq-mean-token-sum-norm",
    "grpo-kl-k3-dual-clip",
    "dpo-sigmoid",
    "dpo-ipo",
    "dpo-hinge",
    "una-binary_mse",
    "una-binary_bce",
    "una-score_mse",
    "sft-chord-seq-mean-token-mean",
]


SLOW_VMAP_CASES = {
    "grpo-token-token-mean",
    "grpo-sequence-seq-mean-token-sum-norm",
    "grpo-kl-k3-dual-clip",
    "dpo-sigmoid",
}


@pytest.mark.parametrize("name", slow_cases(VMAP_CASES, SLOW_VMAP_CASES))
def test_vmap_over_a_leading_axis(name):
    fn, keys = CASES[name]
    batches = [make_data(seed, batch=8) for seed in (2, 3, 4)]
    stacked = {k: np.stack([b[k] for b in batches]) for k in batches[0]}
    losses, aux = jax.vmap(fn)(stacked)
    grads = jax.vmap(lambda d: _loss_and_grad(fn, keys, d)[2])(stacked)
    assert losses.shape == (3,)
    for n, b in enumerate(batches):
        want, want_aux, want_grads = _loss_and_grad(fn, keys, b)
        np.testing.assert_allclose(losses[n], want, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(aux["numerator"][n], want_aux["numerator"], RTOL, ATOL)
        for key in keys:
            np.testing.assert_allclose(grads[key][n], want_grads[key], GRAD_RTOL, GRAD_ATOL)


@pytest.mark.parametrize("name", sorted(CASES))
def test_aux_keys_are_family_slash_name(name):
    """Every metric in aux is `family/name`, the family the loss's own (`grpo` for every preset
    and variant); `numerator` and `denominator` are the two exceptions accumulation relies on."""
    fn, _ = CASES[name]
    _, aux = fn(make_data(2))
    family = name.split("-")[0].replace("dr_grpo", "grpo")
    metrics = set(aux) - {"numerator", "denominator"}
    assert {"numerator", "denominator"} <= set(aux)
    assert metrics and all(re.fullmatch(rf"{family}/[a-z_]+", key) for key in metrics), metrics
