"""LoRA through qwix on the decoder, and PEFT adapters in and out.

Equalities that are the same arithmetic are checked bit for bit (B = 0 adds exact zeros; the
base graphdef runs the same program as the base model). Comparisons of two different programs
(LoRA's low-rank path vs a merged weight, giftjax vs transformers + peft) use the float32
reordering bound of tests/precision.py.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from precision import decoder_depth, logits_atol, reorder_atol

from giftjax import models
from giftjax.models import lora
from giftjax.models.presets import PRESETS

ALL = "q,k,v,o,gate,up,down"


def _model(dtype="float32", **shape):
    cfg = dataclasses.replace(PRESETS["tiny"], dtype=dtype, **shape)
    return models.Decoder(cfg, rngs=nnx.Rngs(0))


def _perturb_adapters(model, scale=0.05, seed=3):
    """Random non-zero A and B (B starts at 0, which would hide every mapping error)."""
    state = lora.adapter_state(nnx.state(model))
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [
        x + scale * jax.random.normal(k, x.shape, x.dtype)
        for x, k in zip(leaves, keys, strict=False)
    ]
    nnx.update(model, jax.tree.unflatten(tree, leaves))


def _tokens(b=3, t=7, seed=0):
    return jax.random.randint(jax.random.key(seed), (b, t), 0, PRESETS["tiny"].vocab_size)


@pytest.mark.slow
def test_zero_b_is_the_base_model_and_adapters_are_only_the_targets():
    base = _model()
    tokens = _tokens()
    expected = np.asarray(base(tokens))
    model, base_graphdef = lora.apply_lora(base, rank=4, alpha=8.0, targets="q,v,down")
    np.testing.assert_array_equal(np.asarray(model(tokens)), expected)  # + exact zeros
    names = {
        "/".join(map(str, path))
        for path, _ in nnx.to_flat_state(lora.adapter_state(nnx.state(model)))
    }
    assert names == {
        f"layers/{sub}/{w}_lora_{ab}"
        for sub, w in (("attn", "q_proj"), ("attn", "v_proj"), ("mlp", "down_proj"))
        for ab in "ab"
    }
    # Stacked over the layers, with qwix's initialisation (A random, B zero).
    a = model.layers.attn.q_proj_lora_a[...]
    assert a.shape == (2, 64, 4) and float(jnp.std(a)) > 0
    assert not np.any(np.asarray(model.layers.mlp.down_proj_lora_b[...]))
    # The base graphdef over the policy's base weights is the base model: adapters off.
    _perturb_adapters(model)
    off = nnx.merge(base_graphdef, lora.base_state(nnx.state(model)))
    np.testing.assert_array_equal(np.asarray(off(tokens)), expected)
    assert not lora.has_adapters(off)


@pytest.mark.parametrize("targets", [ALL, "o,up"])
def test_lora_forward_equals_the_merged_weights(targets):
    model, _ = lora.apply_lora(_model(), rank=4, alpha=8.0, targets=targets)
    _perturb_adapters(model)
    tokens = _tokens()
    graphdef, state = nnx.split(model)
    out = np.asarray(jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))(state, tokens))
    merged = lora.merged_model(model)
    assert not lora.has_adapters(merged)
    expected = np.asarray(merged(tokens))
    # x W + s (x A) B vs x (W + s A B): another summation order of the same projections.
    atol = logits_atol(model.config, expected, kv_len=tokens.shape[1])
    np.testing.assert_allclose(out, expected, atol=atol, rtol=0)
    base = np.asarray(_model()(tokens))
    assert np.abs(out - base).max() > 100 * atol  # the adapters do act


def test_cached_decode_uses_the_adapters():
    model, _ = lora.apply_lora(_model(), rank=4, alpha=8.0, targets=ALL)
    _perturb_adapters(model)
    tokens = _tokens(t=6)
    full = np.asarray(model(tokens))
    cache = model.init_cache(3, 8)
    _, cache = model(tokens[:, :5], cache=cache)
    step, _ = model.decode_step(tokens[:, 5:6], cache=cache)
    atol = logits_atol(model.config, full, kv_len=6)
    np.testing.assert_allclose(np.asarray(step)[:, 0], full[:, 5], atol=atol, rtol=0)


def test_shared_prompt_pass_uses_the_adapters():
    """The trainer's shared-prompt log-prob pass (Decoder.shared_prefix_hidden) goes through
    the adapters like the full forward: its hidden states equal those of the concatenated
    rows within the float32 reordering bound, and differ from the base model's."""
    model, _ = lora.apply_lora(_model(), rank=4, alpha=8.0, targets=ALL)
    _perturb_adapters(model)
    g, prompt, resp = 2, _tokens(2, 4, seed=1), _tokens(4, 3, seed=2)
    hp, hs = model.shared_prefix_hidden(
        prompt, jnp.ones_like(prompt), resp, jnp.ones_like(resp), group_size=g
    )
    rows = jnp.concatenate([jnp.repeat(prompt, g, axis=0), resp], axis=1)
    full = np.asarray(model(rows, return_hidden=True))
    atol = reorder_atol(float(np.abs(full).max()), decoder_depth(model.config, 7))
    np.testing.assert_allclose(np.asarray(hs), full[:, 4:], atol=atol, rtol=0)
    np.testing.assert_allclose(np.asarray(hp), full[::g, :4], atol=atol, rtol=0)
    base = np.asarray(_model()(rows, return_hidden=True))
    assert np.abs(np.asarray(hs) - base[:, 4:]).max() > 100 * atol


def test_bfloat16_compute_keeps_activation_dtypes():
    model, _ = lora.apply_lora(_model("bfloat16"), rank=4, alpha=8.0, targets=ALL)
    _perturb_adapters(model)
    cache = model.init_cache(2, 8)
    hidden, cache = model(_tokens(2, 5), cache=cache, return_hidden=True)
    assert hidden.dtype == jnp.bfloat16 and cache.k.dtype == jnp.bfloat16
    # The adapters stay float32 (the parameter dtype).
    assert model.layers.attn.q_proj_lora_a[...].dtype == jnp.float32


def _qwen3_model():
    return _model(family="qwen3", qk_norm=True, qkv_bias=False)


def _norm_names(qk_norm: bool) -> set[str]:
    names = {"final_norm", "layers/input_norm", "layers/post_attn_norm"}
    if qk_norm:
        names |= {"layers/attn/q_norm", "layers/attn/k_norm"}
    return {f"{n}/weight_delta" for n in names}


def test_norm_tuning_offsets_every_gain_and_merges_into_it():
    base = _qwen3_model()
    tokens = _tokens()
    expected = np.asarray(base(tokens))
    model, base_graphdef = lora.apply_lora(
        base, rank=2, alpha=4.0, targets="q", train_norms=True
    )
    assert model.lora_spec.train_norms
    np.testing.assert_array_equal(np.asarray(model(tokens)), expected)  # zero offsets
    names = {
        "/".join(map(str, path))
        for path, _ in nnx.to_flat_state(lora.adapter_state(nnx.state(model)))
    }
    assert names == _norm_names(True) | {"layers/attn/q_proj_lora_a", "layers/attn/q_proj_lora_b"}
    assert model.layers.input_norm.weight_delta[...].shape == (2, 64)  # stacked like the gain

    # Offsets only (B stays 0, so the low-rank path adds exact zeros): the same arithmetic as
    # the merged gains w + delta, bit for bit; and far from the base model.
    for path in lora.norm_paths(model.config):
        norm = lora.norm_module(model, path)
        key = jax.random.key(len(path) + len(path[-1]))
        norm.weight_delta[...] = 0.5 * jax.random.normal(key, norm.weight.shape)
    out = np.asarray(model(tokens))
    np.testing.assert_array_equal(out, np.asarray(lora.merged_model(model)(tokens)))
    assert np.abs(out - expected).max() > 1e-2
    # The base graphdef ignores the offsets: the base model, with its gains untouched.
    off = nnx.merge(base_graphdef, lora.base_state(nnx.state(model)))
    np.testing.assert_array_equal(np.asarray(off(tokens)), expected)


@pytest.mark.parametrize("remat, train_norms", [("none", False), ("full", True)])
def test_gradient_reaches_only_the_adapters(remat, train_norms):
    model, _ = lora.apply_lora(
        _model(remat=remat), rank=2, alpha=4.0, targets=ALL, train_norms=train_norms
    )
    graphdef, state = nnx.split(model)
    tokens = _tokens()

    @jax.jit
    def grads(state):
        # As the trainer does: split inside the jitted update, the loss closes over the base.
        trainable, frozen = lora.split_trainable(state, True)

        def loss(p):
            out = nnx.merge(graphdef, lora.merge_trainable(p, frozen))(tokens)
            return jnp.mean(out**2)

        return trainable, jax.grad(loss)(trainable)

    trainable, g = grads(state)
    assert jax.tree.structure(g) == jax.tree.structure(trainable)
    assert len(jax.tree.leaves(g)) == 14 + 3 * train_norms  # 7 targets x (A, B) (+ 3 gains)
    # B = 0, so only the B gradients are non-zero at the start (dL/dA = x^T g B^T = 0).
    flat = {"/".join(map(str, k)): v.get_value() for k, v in nnx.to_flat_state(g)}
    b_norm = sum(float(jnp.sum(x**2)) for k, x in flat.items() if k.endswith("_lora_b"))
    assert b_norm > 0
    gains = {k: x for k, x in flat.items() if k.endswith("weight_delta")}
    assert set(gains) == (_norm_names(False) if train_norms else set())
    assert all(float(jnp.abs(x).max()) > 0 for x in gains.values())  # they train from step 1


@pytest.mark.slow
def test_adapter_gradients_equal_those_of_the_merged_weights():
    """d/dA, d/dB of a loss through qwix's low-rank path = through W + s A B (chain rule by
    hand): two programs, so the float32 reordering bound (x a few, for the backward)."""
    model, base_graphdef = lora.apply_lora(_model(), rank=4, alpha=8.0, targets=ALL)
    _perturb_adapters(model)
    graphdef, state = nnx.split(model)
    trainable, frozen = lora.split_trainable(state, True)
    tokens = _tokens()
    scale = 8.0 / 4

    def ce(logits):
        logp = jax.nn.log_softmax(logits[:, :-1])
        return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], -1))

    def through_qwix(p):
        return ce(nnx.merge(graphdef, lora.merge_trainable(p, frozen))(tokens))

    def through_merged(p):
        flat = []
        for path, var in nnx.to_flat_state(frozen):
            names = tuple(str(k) for k in path)
            if len(names) == 3 and names[0] == "layers" and names[2].endswith("_proj"):
                a = p["layers"][names[1]][names[2] + "_lora_a"][...]
                b = p["layers"][names[1]][names[2] + "_lora_b"][...]
                delta = jax.vmap(lambda a_l, b_l: lora.adapter_delta(a_l, b_l, scale))(a, b)
                var = var.replace(var.get_value() + delta)
            flat.append((path, var))
        return ce(nnx.merge(base_graphdef, nnx.from_flat_state(flat))(tokens))

    g1 = jax.jit(jax.grad(through_qwix))(trainable)
    g2 = jax.jit(jax.grad(through_merged))(trainable)
    depth = 2 * decoder_depth(model.config, tokens.shape[1])  # forward + backward chains
    for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        magnitude = float(jnp.abs(y).max())
        assert magnitude > 0
        np.testing.assert_allclose(x, y, atol=reorder_atol(magnitude, depth), rtol=0)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"rank": 0}, "rank=0"),
        ({"targets": "q,lm_head"}, "lm_head"),
        ({"targets": ""}, "targets"),
    ],
)
def test_bad_arguments_are_named(kwargs, needle):
    args = {"rank": 4, "alpha": 8.0, "targets": ALL, **kwargs}
    with pytest.raises(ValueError, match=needle):
        lora.apply_lora(_model(), **args)


# ------------------------------------------------------------------------------------------
# PEFT
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, train_norms",
    [
        ("qwen2_gqa4_tied", False),
        ("llama_gqa4_llama3rope_untied", False),
        ("qwen3_gqa2_untied", True),  # norm tuning, q/k norms included: PEFT modules_to_save
    ],
)
def test_peft_adapter_loads_into_transformers_with_the_same_logits(case, train_norms, tmp_path):
    peft = pytest.importorskip("peft")
    from hf_models import hf_logits, make_hf_model, padded_batch

    hf = make_hf_model(case)
    hf.save_pretrained(tmp_path / "hf")
    base = models.load_hf(tmp_path / "hf", dtype=jnp.float32)
    model, _ = lora.apply_lora(base, rank=4, alpha=8.0, targets=ALL, train_norms=train_norms)
    _perturb_adapters(model, scale=0.2)
    models.save_peft(model, tmp_path / "adapter", base_model_name_or_path=str(tmp_path / "hf"))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8.0 and config["peft_type"] == "LORA"
    norms = ["norm", "input_layernorm", "post_attention_layernorm", "q_norm", "k_norm"]
    assert config["modules_to_save"] == (norms if train_norms else None)

    tokens, mask = padded_batch(2)
    real = mask.astype(bool)
    merged = np.asarray(lora.merged_model(model)(jnp.asarray(tokens), jnp.asarray(mask)))
    # Every PEFT tensor name is one transformers + peft created and read.
    wrapped = peft.PeftModel.from_pretrained(hf, str(tmp_path / "adapter")).eval()
    names = {n for n, _ in wrapped.named_parameters() if "lora_" in n}
    assert len(names) == 2 * 7 * base.config.num_layers
    saved = {n for n, _ in wrapped.named_parameters() if "modules_to_save" in n}
    assert len(saved) == (1 + 4 * base.config.num_layers if train_norms else 0)
    expected = hf_logits(wrapped, tokens, mask)
    atol = logits_atol(base.config, expected, kv_len=tokens.shape[1])
    np.testing.assert_allclose(merged[real], expected[real], atol=atol, rtol=0)
    assert np.abs(expected - hf_logits(make_hf_model(case), tokens, mask))[real].max() > 100 * atol

    # Merged weights through save_hf: a plain checkpoint transformers reads alone.
    models.save_hf(model, tmp_path / "merged")
    import transformers

    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    np.testing.assert_allclose(
        hf_logits(plain, tokens, mask)[real], expected[real], atol=atol, rtol=0
    )

    # And back: load_peft puts the same adapters on a fresh base model.
    back, _ = models.load_peft(
        models.load_hf(tmp_path / "hf", dtype=jnp.float32), tmp_path / "adapter"
    )
    for (p1, v1), (p2, v2) in zip(
        nnx.to_flat_state(lora.adapter_state(nnx.state(model))),
        nnx.to_flat_state(lora.adapter_state(nnx.state(back))),
        strict=True,
    ):
        assert p1 == p2
        v1, v2 = np.asarray(v1.get_value()), np.asarray(v2.get_value())
        if p1[-1] != "weight_delta":
            np.testing.assert_array_equal(v1, v2)
        else:  # saved as the gain w + delta, read back as (w + delta) - w: one rounding
            gain = np.abs(np.asarray(lora.norm_module(model, p1[:-1]).weight[...])) + np.abs(v1)
            np.testing.assert_allclose(v2, v1, atol=float(gain.max()) * 2.0**-23, rtol=0)


def test_peft_config_that_giftjax_cannot_read_is_refused(tmp_path):
    model, _ = lora.apply_lora(_model(), rank=2, alpha=4.0, targets="q")
    models.save_peft(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["use_dora"] = True
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="use_dora"):
        models.load_peft(_model(), tmp_path)


@pytest.mark.parametrize(
    "key, value, needle",
    [
        ("rank", -1, r"model\.lora\.rank"),
        ("dropout", 0.1, r"model\.lora\.dropout"),
        ("targets", "q,embed", "embed"),
        ("alpha", 0.0, r"model\.lora\.alpha"),
    ],
)
def test_bad_lora_config_is_named(key, value, needle):
    from giftjax.train import config as config_lib

    c = config_lib.base_config()
    c.model.lora.rank = 8
    c.model.lora[key] = value
    with pytest.raises(config_lib.ConfigError, match=needle):
        config_lib.validate(c, num_devices=1)
