"""Hugging Face checkpoints in and out: `load_hf(path, ...)` and `save_hf(model, path)`.

A checkpoint folder holds `config.json` (either layout, see giftjax/models/config.py) and the
weights as one `model.safetensors` or shards listed in `model.safetensors.index.json`. Pickled
`.bin` files are never read.

Name and layout mapping (transformers stores `nn.Linear.weight` as [out, in]; giftjax stores
[in, out] split by heads, with the L layers stacked on a leading axis):

| transformers name (layer i) | giftjax path | giftjax shape |
|---|---|---|
| model.embed_tokens.weight [V, D] | embed | [V, D] |
| model.norm.weight [D] | final_norm/weight | [D] |
| lm_head.weight [V, D] (untied only) | lm_head | [D, V] |
| ...input_layernorm.weight [D] | layers/input_norm/weight | [L, D] |
| ...post_attention_layernorm.weight | layers/post_attn_norm/weight | [L, D] |
| ...self_attn.q_proj.weight [N*H, D] | layers/attn/q_proj | [L, D, N, H] |
| ...self_attn.k_proj.weight [K*H, D] | layers/attn/k_proj (and v) | [L, D, K, H] |
| ...self_attn.o_proj.weight [D, N*H] | layers/attn/o_proj | [L, N, H, D] |
| ...self_attn.q_proj.bias [N*H] | layers/attn/q_bias (k, v) | [L, N, H] |
| ...self_attn.o_proj.bias [D] | layers/attn/o_bias | [L, D] |
| ...self_attn.q_norm.weight [H] | layers/attn/q_norm/weight | [L, H]  (k_norm too) |
| ...mlp.gate_proj.weight [F, D] | layers/mlp/gate_proj (up) | [L, D, F] |
| ...mlp.down_proj.weight [D, F] | layers/mlp/down_proj | [L, F, D] |
| ...mlp.gate_proj.bias [F] (up, down) | layers/mlp/gate_bias ... | [L, F] / [L, D] |

With a mesh, every parameter goes straight into its sharding: each host reads the layer tensors
from the memory-mapped safetensors files one at a time, keeps only the slices its own devices
hold, and assembles the global array with `jax.make_array_from_single_device_arrays`; no host
ever holds a full copy of the model (only its own shards plus one layer tensor).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from safetensors import safe_open
from safetensors.numpy import save_file

from giftjax import sharding as sharding_lib
from giftjax.models import lora
from giftjax.models.config import ModelConfig, from_hf_dict, to_hf_dict
from giftjax.models.decoder import Decoder

_LAYER = "model.layers.{i}."


def _linear_in(shape_out: tuple[int, ...]) -> tuple[Callable, Callable]:
    """HF [out, in] weight <-> giftjax [in, *shape_out] (out split into shape_out)."""

    def to_ours(w):
        return w.T.reshape(w.shape[1], *shape_out)

    def to_hf(p):
        return p.reshape(p.shape[0], -1).T

    return to_ours, to_hf


def _linear_out(shape_in: tuple[int, ...]) -> tuple[Callable, Callable]:
    """HF [out, in] weight <-> giftjax [*shape_in, out] (in split into shape_in)."""

    def to_ours(w):
        return w.T.reshape(*shape_in, w.shape[0])

    def to_hf(p):
        return p.reshape(-1, p.shape[-1]).T

    return to_ours, to_hf


def _reshape(shape: tuple[int, ...]) -> tuple[Callable, Callable]:
    return (lambda w: w.reshape(shape)), (lambda p: p.reshape(-1))


_SAME = (lambda w: w), (lambda p: p)
_TRANSPOSE = (lambda w: w.T), (lambda p: p.T)


def name_map(config: ModelConfig) -> dict[tuple[str, ...], tuple[str, bool, Callable, Callable]]:
    """giftjax path -> (HF name or per-layer template, per_layer, to_ours, to_hf)."""
    n, k, h = config.num_heads, config.num_kv_heads, config.head_dim
    m: dict[tuple[str, ...], tuple[str, bool, Callable, Callable]] = {
        ("embed",): ("model.embed_tokens.weight", False, *_SAME),
        ("final_norm", "weight"): ("model.norm.weight", False, *_SAME),
    }
    if not config.tie_word_embeddings:
        m[("lm_head",)] = ("lm_head.weight", False, *_TRANSPOSE)
    layer = {
        ("input_norm", "weight"): ("input_layernorm.weight", _SAME),
        ("post_attn_norm", "weight"): ("post_attention_layernorm.weight", _SAME),
        ("attn", "q_proj"): ("self_attn.q_proj.weight", _linear_in((n, h))),
        ("attn", "k_proj"): ("self_attn.k_proj.weight", _linear_in((k, h))),
        ("attn", "v_proj"): ("self_attn.v_proj.weight", _linear_in((k, h))),
        ("attn", "o_proj"): ("self_attn.o_proj.weight", _linear_out((n, h))),
        ("mlp", "gate_proj"): ("mlp.gate_proj.weight", _TRANSPOSE),
        ("mlp", "up_proj"): ("mlp.up_proj.weight", _TRANSPOSE),
        ("mlp", "down_proj"): ("mlp.down_proj.weight", _TRANSPOSE),
    }
    if config.qkv_bias:
        layer[("attn", "q_bias")] = ("self_attn.q_proj.bias", _reshape((n, h)))
        layer[("attn", "k_bias")] = ("self_attn.k_proj.bias", _reshape((k, h)))
        layer[("attn", "v_bias")] = ("self_attn.v_proj.bias", _reshape((k, h)))
    if config.o_bias:
        layer[("attn", "o_bias")] = ("self_attn.o_proj.bias", _SAME)
    if config.qk_norm:
        layer[("attn", "q_norm", "weight")] = ("self_attn.q_norm.weight", _SAME)
        layer[("attn", "k_norm", "weight")] = ("self_attn.k_norm.weight", _SAME)
    if config.mlp_bias:
        layer[("mlp", "gate_bias")] = ("mlp.gate_proj.bias", _SAME)
        layer[("mlp", "up_bias")] = ("mlp.up_proj.bias", _SAME)
        layer[("mlp", "down_bias")] = ("mlp.down_proj.bias", _SAME)
    for path, (hf, (to_ours, to_hf)) in layer.items():
        m[("layers", *path)] = (_LAYER + hf, True, to_ours, to_hf)
    return m


class _Reader:
    """Lazily opened safetensors files of one checkpoint, by tensor name."""

    def __init__(self, path: str):
        index = os.path.join(path, "model.safetensors.index.json")
        single = os.path.join(path, "model.safetensors")
        if os.path.exists(index):
            with open(index, encoding="utf-8") as f:
                self.files = {
                    name: os.path.join(path, file)
                    for name, file in json.load(f)["weight_map"].items()
                }
        elif os.path.exists(single):
            with safe_open(single, framework="numpy") as f:
                self.files = dict.fromkeys(f.keys(), single)
        else:
            raise FileNotFoundError(
                f"{path} holds neither model.safetensors nor model.safetensors.index.json "
                "(only safetensors checkpoints are read)."
            )
        self._open: dict[str, Any] = {}

    def get(self, name: str) -> np.ndarray:
        if name not in self.files:
            raise KeyError(f"tensor {name!r} is missing from the checkpoint.")
        file = self.files[name]
        if file not in self._open:
            self._open[file] = safe_open(file, framework="numpy")
        return self._open[file].get_tensor(name)


def _read_config(path: str) -> dict[str, Any]:
    file = os.path.join(path, "config.json")
    if not os.path.exists(file):
        raise FileNotFoundError(f"{path} has no config.json.")
    with open(file, encoding="utf-8") as f:
        return json.load(f)


def load_hf(
    path: str | os.PathLike,
    *,
    dtype: Any = jnp.bfloat16,
    param_dtype: Any = jnp.float32,
    mesh: Mesh | None = None,
    rules: sharding_lib.Rules | str = "fsdp",
    **config_overrides: Any,
) -> Decoder:
    """A Decoder with the weights of a local Hugging Face checkpoint.

    Args:
      path: folder with config.json and model.safetensors (or sharded safetensors + index).
      dtype: compute dtype (activations, matmul inputs); bfloat16 by default.
      param_dtype: dtype the parameters are stored in; float32 by default.
      mesh: if given, each parameter is placed straight into its sharding on this mesh.
      rules: logical axis rules (a table or "fsdp" / "fsdp_tp"), used with `mesh`.
      **config_overrides: other ModelConfig fields (e.g. remat="full").

    Returns:
      The Decoder; `model(tokens) -> logits [B, T, V]`.
    """
    path = os.fspath(path)
    config = from_hf_dict(
        _read_config(path),
        dtype=jnp.dtype(dtype).name,
        param_dtype=jnp.dtype(param_dtype).name,
        **config_overrides,
    )
    reader = _Reader(path)
    abstract = nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    mapping = name_map(config)
    out = []
    for path_key, var in nnx.to_flat_state(state):
        key = tuple(str(p) for p in path_key)
        if key not in mapping:
            raise KeyError(f"no Hugging Face name for parameter {'/'.join(key)}.")
        name, per_layer, to_ours, _ = mapping[key]
        value = var.get_value()
        sharding = None
        if mesh is not None:
            names = var.get_metadata().get("out_sharding")
            sharding = sharding_lib.named_sharding(
                names, value.shape, mesh, rules, what="/".join(key)
            )
        tensor = _Tensor(reader, name, per_layer, to_ours, value.shape, value.dtype)
        out.append((path_key, var.replace(tensor.place(sharding))))
    model = nnx.merge(graphdef, nnx.from_flat_state(out))
    if mesh is not None:
        model.set_sharding(mesh, rules)
    return model


class _Tensor:
    """One giftjax parameter read from the checkpoint (all L layer tensors if per_layer)."""

    def __init__(self, reader, name, per_layer, to_ours, shape, dtype):
        self.reader, self.name, self.per_layer, self.to_ours = reader, name, per_layer, to_ours
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)

    def read(self, layer: int | None = None) -> np.ndarray:
        """The tensor (of one layer) in giftjax layout and dtype, shape-checked."""
        name = self.name if layer is None else self.name.format(i=layer)
        value = np.asarray(self.to_ours(self.reader.get(name)), self.dtype)
        want = self.shape[1:] if self.per_layer else self.shape
        if value.shape != want:
            raise ValueError(
                f"checkpoint tensor {name}: shape {value.shape} in giftjax layout; the config "
                f"expects {want}."
            )
        return value

    def place(self, sharding: jax.sharding.NamedSharding | None) -> jax.Array:
        """The parameter on the default device, or straight into `sharding`.

        With a sharding, each layer tensor is read once per host and only the slices this
        host's devices hold are kept (replicated shards are sliced once).
        """
        if sharding is None:
            if not self.per_layer:
                return jnp.asarray(self.read())
            return jnp.asarray(np.stack([self.read(i) for i in range(self.shape[0])]))
        device_index = sharding.addressable_devices_indices_map(self.shape)
        keys = {d: tuple((s.start, s.stop, s.step) for s in idx) for d, idx in device_index.items()}
        shards = {}
        for d, idx in device_index.items():
            if keys[d] not in shards:
                shape = tuple(len(range(n)[s]) for n, s in zip(self.shape, idx, strict=True))
                shards[keys[d]] = (idx, np.empty(shape, self.dtype))
        if self.per_layer:
            for i in range(self.shape[0]):
                layer = None
                for idx, buf in shards.values():
                    layers = range(self.shape[0])[idx[0]]
                    if i in layers:
                        layer = self.read(i) if layer is None else layer
                        buf[layers.index(i)] = layer[idx[1:]]
        else:
            full = self.read()
            for idx, buf in shards.values():
                buf[...] = full[idx]
        arrays = [jax.device_put(shards[keys[d]][1], d) for d in device_index]
        return jax.make_array_from_single_device_arrays(self.shape, sharding, arrays)


def save_hf(
    model: Decoder,
    path: str | os.PathLike,
    *,
    dtype: Any = None,
    max_shard_size: int = 5 * 2**30,
    tokenizer: Any = None,
) -> None:
    """Writes `model` as a Hugging Face checkpoint that transformers' `from_pretrained` loads.

    Args:
      model: the Decoder; with LoRA adapters, the merged weights ``W + (alpha / r) A B`` are
        written (save the adapters alone with ``peft_io.save_peft``).
      path: output folder (created).
      dtype: dtype of the written tensors (default: the parameter dtype).
      max_shard_size: bytes per safetensors file; more writes shards and an index json.
      tokenizer: optional transformers tokenizer saved beside the weights (so the folder is
        complete for transformers or vLLM).

    Multi-host note: parameters are fetched with `jax.device_get`, which needs them fully
    addressable (single host, or gather them first).
    """
    if lora.has_adapters(model):
        model = lora.merged_model(model)  # W + (alpha / r) A B: a plain checkpoint
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    config = model.config
    out_dtype = jnp.dtype(dtype or config.param_dtype)
    mapping = name_map(config)
    tensors: dict[str, np.ndarray] = {}
    for path_key, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        key = tuple(str(p) for p in path_key)
        name, per_layer, _, to_hf = mapping[key]
        value = np.asarray(jax.device_get(var.get_value()))
        if per_layer:
            for i in range(config.num_layers):
                tensors[name.format(i=i)] = np.ascontiguousarray(to_hf(value[i]).astype(out_dtype))
        else:
            tensors[name] = np.ascontiguousarray(to_hf(value).astype(out_dtype))
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
        json.dump(to_hf_dict(config, torch_dtype=out_dtype.name), f, indent=2)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, t in tensors.items():
        if shards[-1] and size + t.nbytes > max_shard_size:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += t.nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], os.path.join(path, "model.safetensors"), metadata=meta)
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(path, file), metadata=meta)
        weight_map.update(dict.fromkeys(shard, file))
    index = {
        "metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
        "weight_map": weight_map,
    }
    with open(os.path.join(path, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2)


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer of a local checkpoint folder (`transformers.AutoTokenizer`)."""
    import transformers

    return transformers.AutoTokenizer.from_pretrained(os.fspath(path))
