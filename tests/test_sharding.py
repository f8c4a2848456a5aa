"""Sharding on 8 fake CPU devices: mesh construction, rules, divisibility errors, and the
decoder giving the same logits sharded (FSDP, FSDP+TP) as unsharded."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hf_models import make_hf_model, padded_batch
from jax.sharding import AxisType, PartitionSpec
from precision import logits_atol

from giftjax import sharding
from giftjax.models import Decoder, load_hf
from giftjax.models.kv_cache import CACHE_AXES
from giftjax.models.presets import get_preset


def test_make_mesh_sizes_and_axis_types():
    assert jax.device_count() == 8
    mesh = sharding.make_mesh({"data": 2, "fsdp": -1})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert mesh.axis_types == (AxisType.Auto,) * 3
    assert dict(sharding.make_mesh((1, 4, -1)).shape) == {"data": 1, "fsdp": 4, "tensor": 2}
    with pytest.raises(ValueError, match="at most one size may be -1"):
        sharding.make_mesh((-1, -1, 1))
    with pytest.raises(ValueError, match="needs 6 devices; 8 are given"):
        sharding.make_mesh((1, 3, 2))
    with pytest.raises(ValueError, match="unknown axes"):
        sharding.make_mesh({"model": 8})


def test_rules_and_specs():
    spec = sharding.logical_to_spec(("layers", "embed", "heads", "head_dim"), "fsdp_tp")
    assert spec == PartitionSpec(None, "fsdp", "tensor", None)
    assert sharding.logical_to_spec(("batch", "length"), "fsdp") == PartitionSpec(
        ("data", "fsdp"), None
    )
    # A mesh axis shards at most one dimension of an array.
    rules = (("embed", "fsdp"), ("mlp", ("fsdp", "tensor")))
    assert sharding.logical_to_spec(("embed", "mlp"), rules) == PartitionSpec("fsdp", "tensor")
    with pytest.raises(ValueError, match="known rule tables"):
        sharding.get_rules("zero3")
    with pytest.raises(ValueError, match="mesh axis 'model'"):
        sharding.get_rules({"embed": "model"})
    with pytest.raises(ValueError, match="'experts' has no rule"):
        sharding.logical_to_spec(("experts",), "fsdp")


def test_divisibility_error_names_the_parameter():
    mesh = sharding.make_mesh((1, 1, -1))  # tensor = 8
    model = nnx.eval_shape(lambda: Decoder(get_preset("tiny"), rngs=nnx.Rngs(0)))
    with pytest.raises(
        ValueError, match=r"layers/attn/k_\w+: dimension 1 \('kv_heads', size 2\) .* total size 8"
    ):
        sharding.param_shardings(nnx.state(model), mesh, "fsdp_tp")


_forward = nnx.jit(lambda m, tokens, mask: m(tokens, mask))


@pytest.mark.parametrize(
    "mesh_shape,rules",
    [((1, 8, 1), "fsdp"), ((1, 4, 2), "fsdp_tp"), ((2, 2, 2), "fsdp_tp")],
)
@pytest.mark.slow
def test_sharded_logits_equal_unsharded(mesh_shape, rules):
    cfg = get_preset("tiny", dtype="float32", vocab_size=256)
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    # Larger weights than the 0.02 init, so logits are of order 1; x3 keeps the attention
    # scores of order 1 too, so the logits' scale is the magnitude of the reordering bound.
    nnx.update(model, jax.tree.map(lambda x: x * 3 if x.ndim > 1 else x, state))
    tokens, mask = padded_batch(0, lengths=(8, 5, 2, 8, 1, 7, 3, 6), total=8)
    expected = np.asarray(_forward(model, jnp.asarray(tokens), jnp.asarray(mask)))
    # Sharded contractions sum in another order: float32 reordering bound along the decoder
    # (precision.py), about 1.2e-7 * 1100 * max|logit| for this 2-layer, width-64 model.
    atol = logits_atol(cfg, expected, kv_len=10)

    mesh = sharding.make_mesh(mesh_shape)
    sharding.shard_params(model, mesh, rules)
    q = model.layers.attn.q_proj[...]
    assert q.sharding.spec == sharding.logical_to_spec(
        ("layers", "embed", "heads", "head_dim"), rules
    )
    assert len(q.addressable_shards) == 8
    batch = sharding.shard_batch({"tokens": tokens, "mask": mask}, mesh, rules)
    assert batch["tokens"].sharding.spec == PartitionSpec(("data", "fsdp"), None)
    got = _forward(model, batch["tokens"], batch["mask"])
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(got)[real], expected[real], atol=atol)

    # The KV-cache path, cache sharded like the activations.
    cache = sharding.shard_by_names(model.init_cache(8, 10), CACHE_AXES, mesh, rules)
    logits, cache = nnx.jit(lambda m, t, k, c: m(t, k, cache=c))(
        model, batch["tokens"], batch["mask"], cache
    )
    np.testing.assert_allclose(np.asarray(logits)[real], expected[real], atol=atol)


@pytest.mark.parametrize("rules", [pytest.param("fsdp", marks=pytest.mark.slow), "fsdp_tp"])
def test_load_hf_places_each_tensor_in_its_sharding(rules, tmp_path):
    hf = make_hf_model("qwen3_gqa2_untied")
    hf.save_pretrained(tmp_path / "hf")
    tokens, mask = padded_batch(4, lengths=(10, 7, 3, 1, 9, 10, 2, 5))
    reference = load_hf(tmp_path / "hf", dtype=jnp.float32)
    expected = np.asarray(_forward(reference, jnp.asarray(tokens), jnp.asarray(mask)))

    mesh = sharding.make_mesh((2, -1, 2) if rules == "fsdp_tp" else (2, -1, 1))
    model = load_hf(tmp_path / "hf", dtype=jnp.float32, mesh=mesh, rules=rules)
    ref_params = dict(nnx.to_flat_state(nnx.state(reference, nnx.Param)))
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        value = var.get_value()
        want = sharding.logical_to_spec(var.get_metadata()["out_sharding"], rules)
        assert value.sharding.spec == want, path
        ref_value = ref_params[path].get_value()
        np.testing.assert_array_equal(np.asarray(value), np.asarray(ref_value), err_msg=str(path))
    batch = sharding.shard_batch((tokens, mask), mesh, rules)
    got = np.asarray(_forward(model, *batch))
    real = mask.astype(bool)
    # Sharded vs unsharded: the float32 reordering bound (precision.py).
    atol = logits_atol(reference.config, expected, kv_len=tokens.shape[1])
    np.testing.assert_allclose(got[real], expected[real], atol=atol)


@pytest.mark.parametrize("constrained", [True, False])
def test_fsdp_forward_gathers_weights_not_activations(constrained):
    """With activation constraints the FSDP forward only all-gathers weights; without them
    GSPMD resolves the rows-vs-embed conflict by all-reducing full-batch activations."""
    cfg = get_preset("tiny", vocab_size=256, hidden_size=128, intermediate_size=256)
    abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
    mesh = sharding.make_mesh((1, 8, 1))
    if constrained:
        abstract.set_sharding(mesh, "fsdp")
    graphdef, state = nnx.split(abstract)
    shardings = sharding.param_shardings(state, mesh, "fsdp")
    state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
    )
    tokens = jax.ShapeDtypeStruct(
        (16, 32), jnp.int32, sharding=sharding.batch_sharding(2, mesh, "fsdp")
    )
    forward = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))
    hlo = forward.lower(state, tokens).compile().as_text()
    assert "all-gather(" in hlo
    assert ("all-reduce(" in hlo) != constrained
