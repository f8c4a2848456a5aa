"""Model size presets as ml_collections configs (one per published checkpoint shape).

`get_config("qwen2.5-7b")` returns the preset's ModelConfig fields under `model`, plus the
mesh and sharding rules a run places it with. This file is a model-section provider, not a
runnable recipe (it has no `mode`, so `giftjax.main` refuses it). Recipes include it as their
model section:

    from configs import models
    config.model = models.get_config("qwen2.5-7b").model

Presets: tiny, qwen2.5-0.5b, qwen2.5-1.5b, qwen2.5-7b, qwen2.5-32b, llama3.1-8b, qwen3-8b
(see giftjax/models/presets.py for parameter counts). `giftjax.models.presets.from_config_dict`
turns the `model` section back into a ModelConfig; to fine-tune a released checkpoint, set
`hf_path` and `giftjax.models.load_hf` reads its own config.json instead.
"""

import dataclasses

import ml_collections

from giftjax.models.presets import PRESETS


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config of preset `arg` (default "tiny")."""
    name = arg or "tiny"
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known presets are {sorted(PRESETS)}.")
    config = ml_collections.ConfigDict()
    config.preset = name

    # Model: every ModelConfig field (dtype = compute dtype, param_dtype = storage dtype).
    fields = dataclasses.asdict(PRESETS[name])
    if isinstance(fields["eos_token_id"], tuple):
        fields["eos_token_id"] = list(fields["eos_token_id"])
    config.model = ml_collections.ConfigDict(fields)
    # ml_collections locks types on first assignment; None-valued ids may become ints later.
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        config.model[key] = ml_collections.FieldReference(fields[key], field_type=object)

    # Optional local Hugging Face checkpoint to load instead of initialising from scratch.
    config.hf_path = ""

    # Sharding: mesh sizes over ("data", "fsdp", "tensor"), -1 takes the remaining devices;
    # rules "fsdp" (ZeRO-3 style) or "fsdp_tp" (plus tensor parallelism over heads/mlp/vocab).
    config.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
    config.rules = "fsdp"
    return config
