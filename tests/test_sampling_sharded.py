"""`generate` on 8 fake CPU devices: rows sharded over the data axes (and parameters over fsdp)
give the same tokens as one device."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec
from precision import decoder_depth, reorder_atol, stable_draws
from test_sampling_generate import N_NEW, PAD, prompts, tiny_model

from giftjax import sampling
from giftjax import sharding as sharding_lib
from giftjax.models.kv_cache import CACHE_AXES


@pytest.mark.parametrize(
    "mesh_shape,temperature",
    [
        ({"data": 8}, 0.0),
        ({"data": 8}, 1.0),
        ({"data": 2, "fsdp": 4}, 1.0),
    ],
)
@pytest.mark.slow
def test_sharded_rows_same_tokens(mesh_shape, temperature):
    assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
    ids, mask = prompts(lengths=(6, 3, 1, 5, 2, 6, 4, 1), total=6, seed=4)  # P = 8
    kw = dict(
        max_new_tokens=N_NEW, key=jax.random.key(11), temperature=temperature, num_samples=2,
        eos_id=5, pad_id=PAD,
    )  # fmt: skip
    ref = sampling.generate(tiny_model(), ids, mask, **kw)

    mesh = sharding_lib.make_mesh(mesh_shape)
    model = sharding_lib.shard_params(tiny_model(), mesh, "fsdp")
    s_ids, s_mask = sharding_lib.shard_batch((ids, mask), mesh, "fsdp")
    out = sampling.generate(model, s_ids, s_mask, mesh=mesh, rules="fsdp", **kw)

    # Sharded and unsharded generation are different programs (parameters over fsdp split the
    # contractions): their logits differ by float32 reordering, at most `delta` (precision.py).
    # A row's tokens must agree up to its first draw that lies within delta of a CDF boundary
    # (or an argmax tie); after that the rows may legitimately part.
    n_checked = _check_rows_agree(tiny_model(), ids, mask, ref, out, kw)
    assert n_checked >= np.asarray(ref.mask).sum() // 2, "too few tokens were comparable"
    rows = sharding_lib.named_sharding(("batch", "length"), out.tokens.shape, mesh, "fsdp")
    for x in out:
        assert x.sharding.is_equivalent_to(rows, 2), x.sharding
    assert rows.spec[0] is not None  # rows really are split


def _check_rows_agree(model, ids, mask, ref, out, kw) -> int:
    """Asserts `out` equals `ref` row by row up to the first unstable draw; returns the number
    of response tokens compared."""
    g, temperature = kw["num_samples"], kw["temperature"]
    ids, mask = np.repeat(ids, g, 0), np.repeat(mask, g, 0)
    tokens, resp_mask = np.asarray(ref.tokens), np.asarray(ref.mask)
    full_mask = np.concatenate([mask, resp_mask], axis=1)
    logits = np.asarray(model(np.concatenate([ids, tokens], axis=1), full_mask))
    t = ids.shape[1]
    logits = logits[:, t - 1 : -1]  # [B, N, V]: column t-1+n predicts response token n
    delta = reorder_atol(np.abs(logits).max(), decoder_depth(model.config, t + N_NEW))
    n_ok = np.full(len(tokens), N_NEW)  # per row: the draws before the first unstable one
    for n in range(N_NEW):
        step_key = jax.random.fold_in(kw["key"], n)  # generate's documented step key
        drawn, stable = stable_draws(logits[:, n], step_key, delta, temperature=temperature)
        live = (n < n_ok) & (resp_mask[:, n] == 1)
        # The reference run is the sampler applied to these logits (up to rounding).
        np.testing.assert_array_equal(tokens[live & stable, n], drawn[live & stable])
        n_ok = np.where(live & ~stable, n, n_ok)
    got = [np.asarray(x) for x in out]
    for row, n in enumerate(n_ok):
        np.testing.assert_array_equal(got[0][row, :n], tokens[row, :n], err_msg=f"row {row}")
        np.testing.assert_array_equal(got[1][row, :n], resp_mask[row, :n], err_msg=f"row {row}")
        # log p = z - logsumexp(z): two logit errors of at most delta / temperature each.
        np.testing.assert_allclose(
            got[2][row, :n],
            np.asarray(ref.logps)[row, :n],
            atol=2 * delta / (temperature or 1.0),
            err_msg=f"row {row}",
        )
    return int((resp_mask * (np.arange(N_NEW)[None] < n_ok[:, None])).sum())


def test_cache_sharded_like_activations():
    """The program constrains the cache k, v [L, B, S, K, H] to rows over the data axes, at
    creation, after the prefill and in the decode loop."""
    mesh = sharding_lib.make_mesh({"data": 8})
    rules = sharding_lib.get_rules("fsdp")
    assert sharding_lib.logical_to_spec(CACHE_AXES.k, rules) == PartitionSpec(
        None, ("data", "fsdp"), None, None, None
    )
    ids, mask = prompts(lengths=(6, 3, 1, 5, 2, 6, 4, 1), total=6, seed=4)
    graphdef, state = nnx.split(tiny_model())
    settings = sampling._Settings(
        max_new_tokens=4, temperature=1.0, top_k=0, top_p=1.0, num_samples=1, eos_ids=(),
        pad_id=0, cache_dtype=None, mesh=mesh, rules=rules,
    )  # fmt: skip
    lowered = sampling._generate_jit.lower(graphdef, state, ids, mask, jax.random.key(0), settings)
    # k and v: L=2, B=8, S=6+4, K=2, H=8.
    constrained = [
        line
        for line in lowered.as_text().splitlines()
        if "sharding_constraint" in line
        and '[{}, {"data", "fsdp"}, {}, {}, {}]' in line
        and "tensor<2x8x10x2x8xf32>" in line
    ]
    assert len(constrained) == 6, constrained
