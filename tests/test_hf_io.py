"""Hugging Face I/O: sharded checkpoints, both config.json layouts, bf16 files, exact round
trips of every tensor name and value, and errors."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from hf_models import CASES, hf_logits, make_hf_model, padded_batch
from precision import logits_atol
from safetensors import safe_open

from giftjax.models import from_hf_dict, load_hf, load_tokenizer, save_hf, to_hf_dict
from giftjax.models.presets import PRESETS


def _atol(model, expected) -> float:
    """giftjax (XLA) vs transformers (PyTorch) logits: two programs, the float32 reordering
    bound along the decoder (precision.py), about 1.2e-7 * 700-950 * max|logit|."""
    return logits_atol(model.config, expected, kv_len=expected.shape[1])


def _tensors(folder) -> dict[str, np.ndarray]:
    """Every tensor of a checkpoint folder (single file or shards) by name."""
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, framework="numpy") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


def _logits(model, tokens, mask):
    return np.asarray(model(jnp.asarray(tokens), jnp.asarray(mask)))


@pytest.mark.parametrize("case", ["llama_gqa4_llama3rope_untied", "qwen2_gqa4_tied"])
@pytest.mark.slow
def test_sharded_checkpoint_and_exact_round_trip(case, tmp_path):
    hf = make_hf_model(case)
    hf.save_pretrained(tmp_path / "hf", max_shard_size="40KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    assert len(list((tmp_path / "hf").glob("*.safetensors"))) > 1
    tokens, mask = padded_batch(1)
    real = mask.astype(bool)
    model = load_hf(tmp_path / "hf", dtype=jnp.float32)
    expected = hf_logits(hf, tokens, mask)
    np.testing.assert_allclose(
        _logits(model, tokens, mask)[real], expected[real], atol=_atol(model, expected)
    )

    # save_hf writes shards + index too, with exactly the names and values it read.
    save_hf(model, tmp_path / "out", max_shard_size=30_000)
    assert (tmp_path / "out" / "model.safetensors.index.json").exists()
    original, written = _tensors(tmp_path / "hf"), _tensors(tmp_path / "out")
    assert sorted(written) == sorted(original)
    for name, value in original.items():
        np.testing.assert_array_equal(written[name], value, err_msg=name)
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    # Same weights (checked bit for bit above), same PyTorch program: rounding alone.
    np.testing.assert_allclose(
        hf_logits(back, tokens, mask)[real], expected[real], atol=_atol(model, expected)
    )


def _to_hub_layout(folder, type_key: str) -> None:
    """Rewrites config.json in the Hub layout: rope_theta/rope_scaling at the top, torch_dtype."""
    file = folder / "config.json"
    cfg = json.loads(file.read_text())
    rope = dict(cfg.pop("rope_parameters"))
    cfg["rope_theta"] = rope.pop("rope_theta")
    rope_type = rope.pop("rope_type")
    cfg["rope_scaling"] = None if rope_type == "default" else {type_key: rope_type, **rope}
    cfg["torch_dtype"] = cfg.pop("dtype", "float32")
    file.write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "case,type_key",
    [
        ("llama_gqa4_llama3rope_untied", "rope_type"),
        ("llama_gqa4_llama3rope_untied", "type"),
        pytest.param("qwen3_gqa2_untied", "rope_type", marks=pytest.mark.slow),
    ],
)
def test_hub_config_layout(case, type_key, tmp_path):
    hf = make_hf_model(case)
    hf.save_pretrained(tmp_path / "hf")
    t5 = from_hf_dict(json.loads((tmp_path / "hf" / "config.json").read_text()))
    _to_hub_layout(tmp_path / "hf", type_key)
    hub_dict = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert "rope_parameters" not in hub_dict and "rope_theta" in hub_dict
    assert from_hf_dict(hub_dict) == t5
    tokens, mask = padded_batch(2)
    real = mask.astype(bool)
    model = load_hf(tmp_path / "hf", dtype=jnp.float32)
    expected = hf_logits(hf, tokens, mask)
    np.testing.assert_allclose(
        _logits(model, tokens, mask)[real], expected[real], atol=_atol(model, expected)
    )


def test_config_fields_from_both_families():
    _, kw = CASES["llama_gqa4_llama3rope_untied"]
    cfg = from_hf_dict(
        {
            "model_type": "llama",
            "vocab_size": 10,
            "hidden_size": 64,
            "intermediate_size": 8,
            "num_hidden_layers": 1,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "rope_parameters": kw["rope_parameters"],
        }
    )
    assert (cfg.head_dim, cfg.rope_type, cfg.rope_factor, cfg.rope_original_max_len) == (
        8,
        "llama3",
        8.0,
        16,
    )
    assert not cfg.qkv_bias and not cfg.qk_norm
    qwen2 = from_hf_dict({**_minimal("qwen2"), "rope_theta": 1e6})
    assert qwen2.qkv_bias and not qwen2.o_bias and qwen2.rope_theta == 1e6
    assert from_hf_dict(_minimal("qwen3")).qk_norm
    with pytest.raises(ValueError, match="model_type='gpt2'"):
        from_hf_dict(_minimal("gpt2"))
    with pytest.raises(ValueError, match="rope type 'yarn'"):
        from_hf_dict({**_minimal("qwen2"), "rope_scaling": {"type": "yarn", "factor": 4.0}})
    with pytest.raises(ValueError, match="use_sliding_window"):
        from_hf_dict({**_minimal("qwen2"), "use_sliding_window": True})


def _minimal(model_type):
    return {
        "model_type": model_type,
        "vocab_size": 10,
        "hidden_size": 16,
        "intermediate_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
    }


def test_bfloat16_checkpoint_in_and_out(tmp_path):
    hf = make_hf_model("qwen3_gqa2_untied").to(torch.bfloat16)
    hf.save_pretrained(tmp_path / "hf")
    model = load_hf(tmp_path / "hf", dtype=jnp.float32)
    assert model.embed[...].dtype == jnp.float32
    tokens, mask = padded_batch(3)
    real = mask.astype(bool)
    # The float32 reference runs on exactly the bf16 weights (reloaded: `hf.float()` would keep
    # the RoPE inv_freq buffer rounded to bf16).
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    expected = hf_logits(ref.eval(), tokens, mask)
    np.testing.assert_allclose(
        _logits(model, tokens, mask)[real], expected[real], atol=_atol(model, expected)
    )

    save_hf(model, tmp_path / "out", dtype=jnp.bfloat16)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["dtype"] == "bfloat16"
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert back.dtype == torch.bfloat16
    original, written = _tensors(tmp_path / "hf"), _tensors(tmp_path / "out")
    for name, value in original.items():
        np.testing.assert_array_equal(written[name], value, err_msg=name)


def test_missing_files_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_hf(tmp_path)
    hf = make_hf_model("qwen2_gqa4_tied")
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").rename(tmp_path / "hf" / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="only safetensors"):
        load_hf(tmp_path / "hf")


def test_tokenizer_travels_with_the_checkpoint(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(20)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    make_hf_model("qwen2_gqa4_tied").save_pretrained(tmp_path / "hf")
    model = load_hf(tmp_path / "hf", dtype=jnp.float32)
    save_hf(model, tmp_path / "out", tokenizer=fast)
    written = json.loads((tmp_path / "out" / "tokenizer.json").read_text())
    assert written["model"]["vocab"] == vocab
    # transformers picks the tokenizer class from config.json's model_type when it has one (a
    # Qwen2 folder gets Qwen2Tokenizer), so read this toy word-level tokenizer from its own folder.
    fast.save_pretrained(tmp_path / "tok")
    back = load_tokenizer(tmp_path / "tok")
    assert back("w3 w7 w1")["input_ids"] == [6, 10, 4]
    assert back.eos_token_id == 2


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_json_round_trip(name):
    """to_hf_dict then from_hf_dict gives the config back (eos lists, llama3 fields too)."""
    config = PRESETS[name].replace(eos_token_id=[7, 9]) if name == "llama3.1-8b" else PRESETS[name]
    written = json.loads(json.dumps(to_hf_dict(config)))
    assert from_hf_dict(written) == config
    assert written["eos_token_id"] == ([7, 9] if name == "llama3.1-8b" else config.eos_token_id)
