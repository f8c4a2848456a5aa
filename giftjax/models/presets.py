"""Size presets: the published shapes of the checkpoints giftjax fine-tunes, plus a tiny one.

`load_hf` always reads `config.json`, so presets serve building a model from scratch, sizing
memory and compile checks (`jax.eval_shape`), and configs (`model.preset`). Values are those
of the released Hugging Face `config.json` files.

Parameter counts (embeddings included; `jax.eval_shape` of the model gives the same):

| preset | parameters |
|---|---|
| tiny | see config |
| qwen2.5-0.5b | 494,032,768 |
| qwen2.5-1.5b | 1,543,714,304 |
| qwen2.5-7b | 7,615,616,512 |
| qwen2.5-32b | 32,763,876,352 |
| llama3.1-8b | 8,030,261,248 |
| qwen3-8b | 8,190,735,360 |

"""

from __future__ import annotations

from typing import Any

from giftjax.models.config import ModelConfig

_QWEN2 = dict(family="qwen2", qkv_bias=True, rope_theta=1_000_000.0, rms_norm_eps=1e-6)

PRESETS: dict[str, ModelConfig] = {
    # A 2-layer toy for tests and CPU smoke runs.
    "tiny": ModelConfig(
        family="qwen2",
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        qkv_bias=True,
        tie_word_embeddings=True,
        max_position_embeddings=1024,
    ),
    "qwen2.5-0.5b": ModelConfig(
        **_QWEN2,
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_layers=24,
        num_heads=14,
        num_kv_heads=2,
        head_dim=64,
        tie_word_embeddings=True,
        max_position_embeddings=32768,
        bos_token_id=151643,
        eos_token_id=151643,
    ),
    "qwen2.5-1.5b": ModelConfig(
        **_QWEN2,
        vocab_size=151936,
        hidden_size=1536,
        intermediate_size=8960,
        num_layers=28,
        num_heads=12,
        num_kv_heads=2,
        head_dim=128,
        tie_word_embeddings=True,
        max_position_embeddings=131072,
        bos_token_id=151643,
        eos_token_id=151643,
    ),
    "qwen2.5-7b": ModelConfig(
        **_QWEN2,
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_layers=28,
        num_heads=28,
        num_kv_heads=4,
        head_dim=128,
        tie_word_embeddings=False,
        max_position_embeddings=131072,
        bos_token_id=151643,
        eos_token_id=151643,
    ),
    "qwen2.5-32b": ModelConfig(
        **{**_QWEN2, "rms_norm_eps": 1e-5},
        vocab_size=152064,
        hidden_size=5120,
        intermediate_size=27648,
        num_layers=64,
        num_heads=40,
        num_kv_heads=8,
        head_dim=128,
        tie_word_embeddings=False,
        max_position_embeddings=131072,
        bos_token_id=151643,
        eos_token_id=151643,
    ),
    "llama3.1-8b": ModelConfig(
        family="llama",
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        rms_norm_eps=1e-5,
        rope_theta=500_000.0,
        rope_type="llama3",
        rope_factor=8.0,
        rope_low_freq_factor=1.0,
        rope_high_freq_factor=4.0,
        rope_original_max_len=8192,
        tie_word_embeddings=False,
        max_position_embeddings=131072,
        bos_token_id=128000,
        eos_token_id=128001,
    ),
    "qwen3-8b": ModelConfig(
        family="qwen3",
        vocab_size=151936,
        hidden_size=4096,
        intermediate_size=12288,
        num_layers=36,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        rms_norm_eps=1e-6,
        rope_theta=1_000_000.0,
        qk_norm=True,
        tie_word_embeddings=False,
        max_position_embeddings=40960,
        bos_token_id=151643,
        eos_token_id=151645,
    ),
}


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """The ModelConfig of preset `name`, with some fields overridden (e.g. dtype, remat)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known presets are {sorted(PRESETS)}.")
    return PRESETS[name].replace(**overrides)
