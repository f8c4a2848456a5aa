"""`generate` on 8 fake CPU devices: rows sharded over the data axes (and parameters over fsdp)
give the same tokens as one device."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec
from precision import assert_same_generation
from test_sampling_generate import N_NEW, PAD, prompts, tiny_model

from giftjax import sampling
from giftjax import sharding as sharding_lib
from giftjax.models.kv_cache import CACHE_AXES
from giftjax.sampling.generate import _generate_jit, _Settings


@pytest.mark.parametrize(
    "mesh_shape,temperature,num_prompts",
    [
        ({"data": 8}, 0.0, 8),
        ({"data": 8}, 1.0, 8),
        ({"data": 2, "fsdp": 4}, 1.0, 8),
        # 4 prompts do not split over 8 devices: the prefill then runs on the 8 repeated rows
        # instead of once per prompt (giftjax.sampling.generate._batch_shards).
        ({"data": 8}, 1.0, 4),
    ],
)
@pytest.mark.slow
def test_sharded_rows_same_tokens(mesh_shape, temperature, num_prompts):
    assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
    ids, mask = prompts(lengths=(6, 3, 1, 5, 2, 6, 4, 1), total=6, seed=4)  # P = 8
    ids, mask = ids[:num_prompts], mask[:num_prompts]
    kw = dict(
        max_new_tokens=N_NEW, key=jax.random.key(11), temperature=temperature, num_samples=2,
        eos_id=5, pad_id=PAD,
    )  # fmt: skip
    ref = sampling.generate(tiny_model(), ids, mask, **kw)

    mesh = sharding_lib.make_mesh(mesh_shape)
    model = sharding_lib.shard_params(tiny_model(), mesh, "fsdp")
    s_ids, s_mask = (ids, mask)  # 4 prompt rows cannot be placed on 8 devices: host arrays
    if num_prompts % 8 == 0:
        s_ids, s_mask = sharding_lib.shard_batch((ids, mask), mesh, "fsdp")
    out = sampling.generate(model, s_ids, s_mask, mesh=mesh, rules="fsdp", **kw)

    # Sharded and unsharded generation are different programs (parameters over fsdp split the
    # contractions): their logits differ by float32 reordering, at most `delta` (precision.py).
    # A row's tokens must agree up to its first draw that lies within delta of a CDF boundary
    # (or an argmax tie); after that the rows may legitimately part.
    g = kw["num_samples"]
    compared = assert_same_generation(
        tiny_model(), np.repeat(ids, g, 0), np.repeat(mask, g, 0), ref, out,
        key=kw["key"], temperature=temperature,
    )  # fmt: skip
    assert compared.sum() >= np.asarray(ref.mask).sum() // 2, "too few tokens were comparable"
    rows_ok = np.all(np.asarray(out.tokens) == np.asarray(ref.tokens), axis=1)
    np.testing.assert_array_equal(np.asarray(out.mask)[rows_ok], np.asarray(ref.mask)[rows_ok])
    rows = sharding_lib.named_sharding(("batch", "length"), out.tokens.shape, mesh, "fsdp")
    for x in out:
        assert x.sharding.is_equivalent_to(rows, 2), x.sharding
    assert rows.spec[0] is not None  # rows really are split


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
    settings = _Settings(
        max_new_tokens=4, temperature=1.0, top_k=0, top_p=1.0, num_samples=1, eos_ids=(),
        pad_id=0, cache_dtype=None, mesh=mesh, rules=rules,
    )  # fmt: skip
    lowered = _generate_jit.lower(graphdef, state, ids, mask, jax.random.key(0), settings)
    # k and v: L=2, B=8, S=6+4, K=2, H=8.
    constrained = [
        line
        for line in lowered.as_text().splitlines()
        if "sharding_constraint" in line
        and '[{}, {"data", "fsdp"}, {}, {}, {}]' in line
        and "tensor<2x8x10x2x8xf32>" in line
    ]
    assert len(constrained) == 6, constrained
