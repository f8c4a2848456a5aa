"""Flax NNX decoders for Llama 3, Qwen2/2.5 and Qwen3, with Hugging Face import and export."""

from giftjax.models import lora
from giftjax.models.config import ModelConfig, from_hf_dict, to_hf_dict
from giftjax.models.decoder import Decoder
from giftjax.models.hf_io import load_hf, load_tokenizer, save_hf
from giftjax.models.kv_cache import KVCache, init_cache
from giftjax.models.peft_io import load_peft, save_peft

__all__ = [
    "Decoder",
    "KVCache",
    "ModelConfig",
    "from_hf_dict",
    "init_cache",
    "load_hf",
    "load_peft",
    "load_tokenizer",
    "lora",
    "save_hf",
    "save_peft",
    "to_hf_dict",
]
