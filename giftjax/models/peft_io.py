"""LoRA adapters in the PEFT layout: `save_peft(model, path)` and `load_peft(model, path)`.

A PEFT adapter folder holds `adapter_config.json` (a `LoraConfig`: `r`, `lora_alpha`,
`target_modules`, ...) and `adapter_model.safetensors`, which `peft.PeftModel.from_pretrained`
loads onto the transformers model. Per layer i and target module, with transformers' Linear
layout ([out, in]) and the LoRA update `(lora_alpha / r) * lora_B @ lora_A`:

| PEFT name | giftjax (layer i) |
|---|---|
| base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight [r, D] | q_proj_lora_a [D, r] |
|base_model.model.model.layers.{i}.self_attn.q_proj.lora_B.weight [N*H, r]|q_proj_lora_b [r, N, H]|
| ... k_proj, v_proj (K*H), o_proj (lora_A [r, N*H], lora_B [D, r]) |  |
| base_model.model.model.layers.{i}.mlp.gate_proj.lora_A.weight [r, D] | gate_proj_lora_a [D, r] |
| ... up_proj, down_proj (lora_A [r, F], lora_B [D, r]) |  |

so ``lora_A = A.reshape(-1, r).T`` and ``lora_B = B.reshape(r, -1).T`` (the head split of
giftjax's weights flattens head-major, as `hf_io` does). Only plain LoRA is written and read
(no rsLoRA, DoRA, per-module ranks or bias training).

With norm tuning (``train_norms``) the tuned gains ``w + delta`` are written whole, as PEFT
writes its ``modules_to_save`` (``modules_to_save: ["norm", "input_layernorm",
"post_attention_layernorm"]``, plus ``q_norm`` and ``k_norm`` for Qwen3):
``base_model.model.model.norm.weight`` [D],
``base_model.model.model.layers.{i}.input_layernorm.weight`` [D],
``...self_attn.q_norm.weight`` [H]. Loading sets ``delta = saved - w`` on the given base.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from giftjax.models import lora as lora_lib
from giftjax.models.decoder import Decoder

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

# giftjax target -> (transformers submodule, module name)
_HF_MODULES = {
    "q": ("self_attn", "q_proj"),
    "k": ("self_attn", "k_proj"),
    "v": ("self_attn", "v_proj"),
    "o": ("self_attn", "o_proj"),
    "gate": ("mlp", "gate_proj"),
    "up": ("mlp", "up_proj"),
    "down": ("mlp", "down_proj"),
}
_BY_MODULE = {module: target for target, (_, module) in _HF_MODULES.items()}

# giftjax RMSNorm path (lora.norm_paths) -> (PEFT modules_to_save name, tensor name in layer i)
_NORMS = {
    ("final_norm",): ("norm", "base_model.model.model.norm.weight"),
    ("layers", "input_norm"): (
        "input_layernorm",
        "base_model.model.model.layers.{i}.input_layernorm.weight",
    ),
    ("layers", "post_attn_norm"): (
        "post_attention_layernorm",
        "base_model.model.model.layers.{i}.post_attention_layernorm.weight",
    ),
    ("layers", "attn", "q_norm"): (
        "q_norm",
        "base_model.model.model.layers.{i}.self_attn.q_norm.weight",
    ),
    ("layers", "attn", "k_norm"): (
        "k_norm",
        "base_model.model.model.layers.{i}.self_attn.k_norm.weight",
    ),
}
_NORM_NAMES = {name for name, _ in _NORMS.values()}


def peft_name(layer: int, target: str, which: str) -> str:
    """The PEFT tensor name of ``target``'s ``which`` ("A" or "B") matrix in ``layer``."""
    sub, module = _HF_MODULES[target]
    return f"base_model.model.model.layers.{layer}.{sub}.{module}.lora_{which}.weight"


def _adapter(model: Decoder, target: str) -> tuple[nnx.Variable, nnx.Variable]:
    sub, weight = lora_lib.TARGETS[target]
    module = getattr(model.layers, sub)
    return getattr(module, weight + "_lora_a"), getattr(module, weight + "_lora_b")


def save_peft(
    model: Decoder, path: str | os.PathLike, *, base_model_name_or_path: str | None = None
) -> None:
    """Writes ``model``'s adapters as a PEFT LoRA adapter folder (float32 tensors).

    Args:
      model: a Decoder with adapters (``lora.apply_lora`` or
        [`load_peft`][giftjax.models.load_peft]).
      path: the output folder (created).
      base_model_name_or_path: recorded in ``adapter_config.json`` (PEFT loads the adapter
        onto whatever base model it is given; this only documents which one).
    """
    if not lora_lib.has_adapters(model):
        raise ValueError("save_peft: the model has no LoRA adapters (see lora.apply_lora).")
    spec: lora_lib.LoraSpec = model.lora_spec
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    r = spec.rank
    tensors: dict[str, np.ndarray] = {}
    for target in spec.targets:
        a_var, b_var = _adapter(model, target)
        a = np.asarray(jax.device_get(a_var[...]), np.float32)  # [L, *in, r]
        b = np.asarray(jax.device_get(b_var[...]), np.float32)  # [L, r, *out]
        for i in range(a.shape[0]):
            tensors[peft_name(i, target, "A")] = np.ascontiguousarray(a[i].reshape(-1, r).T)
            tensors[peft_name(i, target, "B")] = np.ascontiguousarray(b[i].reshape(r, -1).T)
    modules_to_save = None
    if spec.train_norms:
        modules_to_save = []
        for npath in lora_lib.norm_paths(model.config):
            name, tensor = _NORMS[npath]
            modules_to_save.append(name)
            gain = np.asarray(jax.device_get(lora_lib.norm_module(model, npath).gain()), np.float32)
            if npath[0] == "layers":  # stacked [L, D]
                for i in range(gain.shape[0]):
                    tensors[tensor.format(i=i)] = np.ascontiguousarray(gain[i])
            else:
                tensors[tensor] = gain
    save_file(tensors, os.path.join(path, ADAPTER_WEIGHTS), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": r,
        "lora_alpha": spec.alpha,
        "lora_dropout": 0.0,
        "target_modules": [_HF_MODULES[t][1] for t in spec.targets],
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": modules_to_save,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    with open(os.path.join(path, ADAPTER_CONFIG), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)


def read_adapter_config(path: str | os.PathLike) -> dict[str, Any]:
    """``adapter_config.json`` of a PEFT folder, checked to be plain LoRA that giftjax reads."""
    file = os.path.join(os.fspath(path), ADAPTER_CONFIG)
    if not os.path.exists(file):
        raise FileNotFoundError(f"{file} does not exist: not a PEFT adapter folder.")
    with open(file, encoding="utf-8") as f:
        cfg = json.load(f)
    if cfg.get("peft_type") != "LORA":
        raise ValueError(f"{file}: peft_type={cfg.get('peft_type')!r}; only 'LORA' is read.")
    for key, plain in (("use_rslora", False), ("use_dora", False), ("bias", "none")):
        if cfg.get(key, plain) not in (plain, None):
            raise ValueError(f"{file}: {key}={cfg[key]!r} is not supported (need {plain!r}).")
    if cfg.get("fan_in_fan_out"):
        raise ValueError(f"{file}: fan_in_fan_out=True is not supported (Linear layers only).")
    for key in ("layers_to_transform", "rank_pattern", "alpha_pattern"):
        if cfg.get(key):
            raise ValueError(f"{file}: {key}={cfg[key]!r} is not supported (plain LoRA only).")
    saved = cfg.get("modules_to_save") or []
    if isinstance(saved, str) or any(m not in _NORM_NAMES for m in saved):
        raise ValueError(
            f"{file}: modules_to_save={saved!r}; giftjax reads only RMSNorm gains there "
            f"(among {sorted(_NORM_NAMES)})."
        )
    modules = cfg.get("target_modules")
    if isinstance(modules, str) or not modules:
        raise ValueError(
            f"{file}: target_modules={modules!r}; give the list of module names "
            f"(among {sorted(_BY_MODULE)})."
        )
    unknown = [m for m in modules if m not in _BY_MODULE]
    if unknown:
        raise ValueError(f"{file}: target_modules {unknown} unknown; known: {sorted(_BY_MODULE)}.")
    return cfg


def load_peft(
    model: Decoder, path: str | os.PathLike, *, seed: int = 0
) -> tuple[Decoder, nnx.GraphDef]:
    """``model`` (a base Decoder, e.g. from ``load_hf``) with the PEFT adapter at ``path``.

    Returns ``(lora_model, base_graphdef)`` as ``lora.apply_lora`` does; the adapters hold the
    saved values (in the model's parameter dtype), so training can continue from them.
    """
    if lora_lib.has_adapters(model):
        raise ValueError("load_peft: the model already has adapters; give the base model.")
    cfg = read_adapter_config(path)
    targets = [_BY_MODULE[m] for m in cfg["target_modules"]]
    order = [t for t in lora_lib.TARGETS if t in targets]
    saved_norms = set(cfg.get("modules_to_save") or [])
    lora_model, base_graphdef = lora_lib.apply_lora(
        model,
        rank=int(cfg["r"]),
        alpha=float(cfg["lora_alpha"]),
        targets=order,
        seed=seed,
        train_norms=bool(saved_norms),
    )
    c = model.config
    r = int(cfg["r"])
    file = os.path.join(os.fspath(path), ADAPTER_WEIGHTS)
    with safe_open(file, framework="numpy") as f:
        names = set(f.keys())
        for target in order:
            a_var, b_var = _adapter(lora_model, target)
            a_shape, b_shape = lora_lib.adapter_shapes(c, target, r)
            a_layers, b_layers = [], []
            for i in range(c.num_layers):
                for which in ("A", "B"):
                    if peft_name(i, target, which) not in names:
                        raise KeyError(f"{file} has no tensor {peft_name(i, target, which)!r}.")
                a_layers.append(f.get_tensor(peft_name(i, target, "A")).T.reshape(a_shape))
                b_layers.append(f.get_tensor(peft_name(i, target, "B")).T.reshape(b_shape))
            for var, layers in ((a_var, a_layers), (b_var, b_layers)):
                _assign(var, np.stack(layers))
        for npath in lora_lib.norm_paths(c) if saved_norms else ():
            name, tensor = _NORMS[npath]
            if name not in saved_norms:
                continue  # not saved: its offset stays zero
            stacked = npath[0] == "layers"
            names_i = [tensor.format(i=i) for i in range(c.num_layers)] if stacked else [tensor]
            missing = [n for n in names_i if n not in names]
            if missing:
                raise KeyError(f"{file} has no tensor {missing[0]!r} (modules_to_save {name!r}).")
            gains = [f.get_tensor(n) for n in names_i]
            norm = lora_lib.norm_module(lora_model, npath)
            gain = np.stack(gains) if stacked else gains[0]
            base = np.asarray(jax.device_get(norm.weight[...]), np.float32)
            if gain.shape != base.shape:
                raise ValueError(
                    f"{file}: {name} gains have shape {gain.shape}, expected {base.shape}."
                )
            _assign(norm.weight_delta, gain.astype(np.float32) - base)
    return lora_model, base_graphdef


def _assign(var: nnx.Variable, value: np.ndarray) -> None:
    """``var[...] = value`` in the variable's dtype and on its sharding."""
    value = jnp.asarray(value, var[...].dtype)
    sharding = getattr(var[...], "sharding", None)
    var[...] = jax.device_put(value, sharding) if sharding is not None else value
