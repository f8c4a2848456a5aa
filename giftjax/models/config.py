"""ModelConfig: the hyperparameters of one Llama/Qwen decoder, and Hugging Face config parsing.

One dataclass covers the three families (docs/development/architecture.md, "A model family"):

- Llama 3/3.1/3.2 (`model_type="llama"`): optional llama3 RoPE scaling, optional biases.
- Qwen2/Qwen2.5 (`model_type="qwen2"`): bias on the q/k/v projections (not on o).
- Qwen3 (`model_type="qwen3"`): RMSNorm on each query and key head (q/k norm), explicit head_dim.

`from_hf_dict` reads both config layouts found in the wild: the Hub layout (`rope_theta` and
`rope_scaling` at the top level, `torch_dtype`) and the transformers 5 layout (`rope_parameters`
holding `rope_theta`, `rope_type` and the scaling fields, `dtype`). `to_hf_dict` writes the
transformers 5 layout, which transformers 5 loads and which older transformers also read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

FAMILIES = ("llama", "qwen2", "qwen3")
ROPE_TYPES = ("default", "llama3")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "save_qkv_proj")
_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of one decoder (shape letters: V vocab, D model, F mlp, L layers,
    N query heads, K key/value heads, H head dim).

    Attributes:
      family: "llama", "qwen2" or "qwen3" (the Hugging Face `model_type`).
      vocab_size: V.
      hidden_size: D.
      intermediate_size: F, the SwiGLU width.
      num_layers: L.
      num_heads: N.
      num_kv_heads: K; N must be a multiple of K (grouped-query attention).
      head_dim: H.
      rms_norm_eps: epsilon inside every RMSNorm.
      rope_theta: RoPE base.
      rope_type: "default" or "llama3" (Llama 3.1 frequency scaling).
      rope_factor, rope_low_freq_factor, rope_high_freq_factor, rope_original_max_len: llama3
        scaling fields (ignored for "default").
      max_position_embeddings: informational (written back to config.json).
      tie_word_embeddings: the LM head is the transposed embedding.
      qkv_bias: bias on the q/k/v projections (Qwen2; Llama/Qwen3 `attention_bias`).
      o_bias: bias on the output projection (Llama/Qwen3 `attention_bias`).
      mlp_bias: bias on the three MLP projections (Llama `mlp_bias`).
      qk_norm: RMSNorm over H on each query and key head (Qwen3).
      dtype: compute dtype name ("bfloat16" by default; "float32" for parity tests).
      param_dtype: parameter dtype name ("float32" by default).
      remat: rematerialisation policy of each layer, one of REMAT_POLICIES.
      bos_token_id, eos_token_id, pad_token_id: copied to and from config.json.
    """

    family: str = "llama"
    vocab_size: int = 256
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_factor: float = 8.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_len: int = 8192
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    dtype: str = "bfloat16"
    param_dtype: str = "float32"
    remat: str = "none"
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family={self.family!r}; expected one of {FAMILIES}.")
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"rope_type={self.rope_type!r}; expected one of {ROPE_TYPES}.")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat={self.remat!r}; expected one of {REMAT_POLICIES}.")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of "
                f"num_kv_heads={self.num_kv_heads} (grouped-query attention)."
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even (RoPE rotates pairs).")
        if isinstance(self.eos_token_id, list):
            # Keep the dataclass hashable (it is static under jit).
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))

    def replace(self, **kwargs: Any) -> ModelConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **kwargs)

    @property
    def num_params(self) -> int:
        """Parameter count from the shapes alone (what `jax.eval_shape` of the model gives)."""
        d, f, n, k, h = (
            self.hidden_size,
            self.intermediate_size,
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
        )
        attn = d * n * h + 2 * d * k * h + n * h * d
        attn += (n * h + 2 * k * h) * self.qkv_bias + d * self.o_bias + 2 * h * self.qk_norm
        mlp = 3 * d * f + (2 * f + d) * self.mlp_bias
        layer = attn + mlp + 2 * d
        embed = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * layer + embed + d


def _rope_fields(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """RoPE fields from either layout (top-level rope_theta/rope_scaling, or rope_parameters)."""
    params = cfg.get("rope_parameters")
    if params and any(isinstance(v, Mapping) for v in params.values()):
        raise ValueError(
            "config.json has per-layer-type rope_parameters; giftjax decoders use one RoPE for "
            f"every layer. Received rope_parameters={params!r}."
        )
    if not params:
        params = dict(cfg.get("rope_scaling") or {})
        params.setdefault("rope_theta", cfg.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"rope type {rope_type!r} is not supported; expected one of {ROPE_TYPES}.")
    out: dict[str, Any] = {"rope_theta": float(params["rope_theta"]), "rope_type": rope_type}
    if rope_type == "llama3":
        out.update(
            rope_factor=float(params["factor"]),
            rope_low_freq_factor=float(params["low_freq_factor"]),
            rope_high_freq_factor=float(params["high_freq_factor"]),
            rope_original_max_len=int(
                params.get(
                    "original_max_position_embeddings", cfg.get("max_position_embeddings", 8192)
                )
            ),
        )
    return out


def from_hf_dict(cfg: Mapping[str, Any], **overrides: Any) -> ModelConfig:
    """A ModelConfig from a Hugging Face `config.json` dict (either layout).

    Args:
      cfg: the parsed config.json.
      **overrides: ModelConfig fields to set (e.g. dtype="float32", remat="full").
    """
    family = cfg.get("model_type")
    if family not in FAMILIES:
        raise ValueError(f"config.json model_type={family!r}; giftjax supports {FAMILIES}.")
    if cfg.get("use_sliding_window"):
        raise ValueError("use_sliding_window=True is not supported (full attention only).")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act={cfg.get('hidden_act')!r}; only 'silu' is supported.")
    n = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n
    attention_bias = bool(cfg.get("attention_bias", False))
    fields: dict[str, Any] = dict(
        family=family,
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_layers=cfg["num_hidden_layers"],
        num_heads=n,
        num_kv_heads=cfg.get("num_key_value_heads") or n,
        head_dim=head_dim,
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=cfg.get("max_position_embeddings", 4096),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        qkv_bias=True if family == "qwen2" else attention_bias,
        o_bias=False if family == "qwen2" else attention_bias,
        mlp_bias=bool(cfg.get("mlp_bias", False)) if family == "llama" else False,
        qk_norm=family == "qwen3",
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_id=cfg.get("eos_token_id"),
        pad_token_id=cfg.get("pad_token_id"),
    )
    fields.update(_rope_fields(cfg))
    fields.update(overrides)
    return ModelConfig(**fields)


def to_hf_dict(config: ModelConfig, *, torch_dtype: str = "float32") -> dict[str, Any]:
    """The transformers 5 `config.json` dict (rope_parameters layout) for `config`."""
    rope: dict[str, Any] = {"rope_theta": config.rope_theta, "rope_type": config.rope_type}
    if config.rope_type == "llama3":
        rope.update(
            factor=config.rope_factor,
            low_freq_factor=config.rope_low_freq_factor,
            high_freq_factor=config.rope_high_freq_factor,
            original_max_position_embeddings=config.rope_original_max_len,
        )
    if config.family == "qwen2" and (not config.qkv_bias or config.o_bias or config.qk_norm):
        raise ValueError("a qwen2 checkpoint has q/k/v bias, no o bias and no q/k norm.")
    if config.family == "qwen3" and not config.qk_norm:
        raise ValueError("a qwen3 checkpoint has q/k norm.")
    if config.family != "qwen2" and config.qkv_bias != config.o_bias:
        raise ValueError(
            f"{config.family} has one attention_bias flag for q/k/v/o; received "
            f"qkv_bias={config.qkv_bias}, o_bias={config.o_bias}."
        )
    eos = config.eos_token_id
    out: dict[str, Any] = {
        "architectures": [_ARCHITECTURES[config.family]],
        "model_type": config.family,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": config.rms_norm_eps,
        "max_position_embeddings": config.max_position_embeddings,
        "tie_word_embeddings": config.tie_word_embeddings,
        "rope_parameters": rope,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": list(eos) if isinstance(eos, tuple) else eos,
        "pad_token_id": config.pad_token_id,
        "dtype": torch_dtype,
        "use_cache": True,
    }
    if config.family != "qwen2":
        out["attention_bias"] = config.qkv_bias
    if config.family == "llama":
        out["mlp_bias"] = config.mlp_bias
    else:
        out["use_sliding_window"] = False
    return out
