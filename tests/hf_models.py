"""Tiny random transformers (PyTorch) models of each family, for parity tests (no downloads)."""

from __future__ import annotations

import numpy as np
import torch
import transformers

VOCAB = 128

# name -> (family, config kwargs). Covers GQA ratios 1 and 4, tied and untied embeddings,
# llama3 RoPE scaling, q/k/v bias (Qwen2), attention bias (Llama) and q/k norm (Qwen3).
CASES = {
    "llama_gqa4_llama3rope_untied": (
        "llama",
        dict(
            num_attention_heads=8,
            num_key_value_heads=2 * 1,
            head_dim=8,
            tie_word_embeddings=False,
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=10000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=16,
            ),
        ),
    ),
    "llama_mha_tied_bias": (
        "llama",
        dict(
            num_attention_heads=4,
            num_key_value_heads=4,
            tie_word_embeddings=True,
            attention_bias=True,
            mlp_bias=True,
            rope_parameters=dict(rope_type="default", rope_theta=500000.0),
        ),
    ),
    "qwen2_gqa4_tied": (
        "qwen2",
        dict(
            num_attention_heads=4,
            num_key_value_heads=1,
            tie_word_embeddings=True,
            rope_parameters=dict(rope_type="default", rope_theta=1000000.0),
        ),
    ),
    "qwen3_gqa2_untied": (
        "qwen3",
        dict(
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=24,
            tie_word_embeddings=False,
            rope_parameters=dict(rope_type="default", rope_theta=1000000.0),
        ),
    ),
}

_CLASSES = {
    "llama": transformers.LlamaConfig,
    "qwen2": transformers.Qwen2Config,
    "qwen3": transformers.Qwen3Config,
}


def make_hf_model(case: str, seed: int = 0, **extra) -> transformers.PreTrainedModel:
    """A tiny random model of `case` in float32, every weight (norms, biases too) perturbed."""
    family, kwargs = CASES[case]
    kwargs = dict(
        vocab_size=VOCAB,
        hidden_size=32 if family != "qwen3" else 48,
        intermediate_size=72,
        num_hidden_layers=2,
        rms_norm_eps=1e-6,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        **kwargs,
    )
    kwargs.update(extra)
    config = _CLASSES[family](**kwargs)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            # Non-trivial norms and biases, and logits of order 1.
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def padded_batch(seed: int = 0, lengths=(10, 7, 3, 1), total: int = 10):
    """Left-padded tokens [B, total] (pad id 0) and mask [B, total]."""
    rng = np.random.default_rng(seed)
    tokens = np.zeros((len(lengths), total), np.int32)
    mask = np.zeros((len(lengths), total), np.int32)
    for b, n in enumerate(lengths):
        tokens[b, total - n :] = rng.integers(3, VOCAB, size=n)
        mask[b, total - n :] = 1
    return tokens, mask


def hf_logits(model, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """transformers logits [B, T, V] with position_ids from the mask (as generate does)."""
    ids = torch.tensor(tokens, dtype=torch.long)
    m = torch.tensor(mask, dtype=torch.long)
    pos = (m.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=m, position_ids=pos)
    return out.logits.float().numpy()
