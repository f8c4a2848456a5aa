"""LoRA adapters on the decoder's projections, applied through qwix.

Low-rank adaptation (Hu et al., "LoRA", 2021): a target projection ``y = x W`` becomes
``y = x W + (alpha / r) (x A) B`` with ``A`` [in, r], ``B`` [r, out]; ``W`` stays frozen and
only ``A`` and ``B`` train. ``B`` starts at zero, so the adapted model starts equal to the base.

How it is wired (qwix 0.1.8, ``qwix.LoraProvider``):

- qwix intercepts ``jnp.einsum`` and ``jax.lax.dot_general`` inside the model's methods, finds
  which ``nnx.Param`` of the current module is the weight operand (it follows the tracer back
  through unary ops such as ``.astype`` and ``.reshape``), and adds the low-rank term from
  the module's ``<weight>_lora_a`` / ``<weight>_lora_b`` attributes. The attention
  projections are einsums and the MLP's go through ``params.matmul`` (a ``dot_general``; a
  plain ``x @ w`` is not intercepted), so either form of a projection works.
- qwix creates missing adapters lazily on the first call, one per module. The decoder's layers
  are stacked on a leading ``layers`` axis and run under ``nnx.scan``, where a new variable
  cannot appear, so `apply_lora` creates the stacked adapters up front ([L, ...], with
  qwix's own initialisers: ``A`` he-uniform, ``B`` zeros) under the names qwix looks for, and
  qwix finds them inside the scan.
- qwix wraps one method of an NNX model (``__call__``); the sampler's ``decode_step`` and the
  trainer's ``shared_prefix_hidden`` are wrapped the same way here (``WRAPPED_METHODS``).
- Only the targets named in the config get adapters (qwix's rules select modules, and q/k/v/o
  share one); the provider skips weights without adapters, and casts the result back to the
  activations' dtype (the adapters stay in the parameter dtype, float32).

Adapter layouts (per layer; a leading L axis in the model), chosen so that qwix's einsum and
dot_general paths both read them:

| target | A | B |
|---|---|---|
| q | [D, r] | [r, N, H] |
| k, v | [D, r] | [r, K, H] |
| o | [N, H, r] | [r, D] |
| gate, up | [D, r] | [r, F] |
| down | [F, r] | [r, D] |

Norm tuning (``train_norms=True``, off by default as in PEFT): every RMSNorm gain ``w``
(each layer's input and post-attention norms, Qwen3's q/k norms, the final norm) gets a trainable
offset ``weight_delta`` (zeros at the start), so the gain becomes ``w + delta`` while ``w`` stays
frozen. LoRA leaves the embedding and the final norm frozen, and after the final RMSNorm the
logits are ``(h / rms(h)) * w @ E^T``: their range is set by ``w`` and ``E`` alone, so a base whose
output scale is small (a briefly trained toy model) caps how confident any adapted policy can
become. Tuning the gains (a few thousand numbers) lifts that cap; PEFT saves them as
``modules_to_save``.

The adapters are ``nnx.LoRAParam`` variables (a subclass of ``nnx.Param``): filter the state
with `ADAPTERS` to get them, and with `base_state` for the frozen weights. The
base model (adapters off, e.g. the reference policy) is ``nnx.merge(base_graphdef,
base_state(state))`` with the graphdef `apply_lora` returns: no copy of the weights.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import qwix
from flax import nnx
from qwix._src import model as qwix_model
from qwix._src.providers import ptq
from qwix._src.utils import flax_util

from giftjax.models.config import ModelConfig
from giftjax.models.decoder import Decoder

ADAPTERS = nnx.LoRAParam

# target name -> (submodule of the layer, weight attribute)
TARGETS: dict[str, tuple[str, str]] = {
    "q": ("attn", "q_proj"),
    "k": ("attn", "k_proj"),
    "v": ("attn", "v_proj"),
    "o": ("attn", "o_proj"),
    "gate": ("mlp", "gate_proj"),
    "up": ("mlp", "up_proj"),
    "down": ("mlp", "down_proj"),
}


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """What to adapt: ``rank`` r >= 1, ``alpha`` (the update is scaled by alpha / r), the
    ``targets`` (names from `TARGETS`), and whether the RMSNorm gains train
    (``train_norms``: an offset per gain, see the module docstring)."""

    rank: int
    alpha: float
    targets: tuple[str, ...]
    train_norms: bool = False

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def parse_targets(targets: str | Sequence[str]) -> tuple[str, ...]:
    """``"q,k,v"`` or ``("q", "k", "v")`` -> a tuple of known target names (order kept)."""
    names = [t.strip() for t in targets.split(",")] if isinstance(targets, str) else list(targets)
    names = [t for t in names if t]
    unknown = [t for t in names if t not in TARGETS]
    if unknown or not names:
        raise ValueError(
            f"LoRA targets={targets!r}: unknown or empty {unknown}; "
            f"choose among {list(TARGETS)} (comma-separated)."
        )
    return tuple(dict.fromkeys(names))


def adapter_shapes(config: ModelConfig, target: str, rank: int) -> tuple[tuple, tuple]:
    """Per-layer shapes (A, B) of ``target``'s adapter (see the module docstring)."""
    d, f = config.hidden_size, config.intermediate_size
    n, k, h = config.num_heads, config.num_kv_heads, config.head_dim
    return {
        "q": ((d, rank), (rank, n, h)),
        "k": ((d, rank), (rank, k, h)),
        "v": ((d, rank), (rank, k, h)),
        "o": ((n, h, rank), (rank, d)),
        "gate": ((d, rank), (rank, f)),
        "up": ((d, rank), (rank, f)),
        "down": ((f, rank), (rank, d)),
    }[target]


def _adapter_names(target: str) -> tuple[tuple, tuple]:
    """Logical axis names of (A, B), without the leading ``layers`` axis."""
    return {
        "q": (("embed", None), (None, "heads", "head_dim")),
        "k": (("embed", None), (None, "kv_heads", "head_dim")),
        "v": (("embed", None), (None, "kv_heads", "head_dim")),
        "o": (("heads", "head_dim", None), (None, "embed")),
        "gate": (("embed", None), (None, "mlp")),
        "up": (("embed", None), (None, "mlp")),
        "down": (("mlp", None), (None, "embed")),
    }[target]


class _Provider(qwix.LoraProvider):
    """qwix's LoRA provider, restricted to weights that have adapters, with the output in
    the activations' dtype."""

    def _has_adapter(self, rhs: Any) -> bool:
        name = flax_util.find_param(rhs, ptq.WithAux)
        module = flax_util.get_current_module()
        return name is not None and hasattr(module, name + "_lora_a")

    def dot_general(self, lhs, rhs, dimension_numbers, *args, **kwargs):
        if not self._has_adapter(rhs):
            return ptq.PtqProvider.dot_general(self, lhs, rhs, dimension_numbers, *args, **kwargs)
        out = super().dot_general(lhs, rhs, dimension_numbers, *args, **kwargs)
        # (lhs, rhs, dimension_numbers, precision, preferred_element_type, ...)
        preferred = args[1] if len(args) > 1 else kwargs.get("preferred_element_type")
        if preferred is None:
            out = out.astype(jnp.result_type(lhs, rhs))
        return out

    def einsum(self, einsum_str, *operands, **kwargs):
        if len(operands) != 2 or not self._has_adapter(operands[1]):
            return ptq.PtqProvider.einsum(self, einsum_str, *operands, **kwargs)
        out = super().einsum(einsum_str, *operands, **kwargs)
        if kwargs.get("preferred_element_type") is None:
            out = out.astype(jnp.result_type(*operands))
        return out


def _provider(spec: LoraSpec) -> _Provider:
    # The layer modules' qwix paths are "layers/attn" and "layers/mlp"; the head and the
    # embedding (module path "") never match.
    return _Provider(module_path=r"layers/(attn|mlp)", rank=spec.rank, alpha=float(spec.alpha))


def add_adapters(model: Decoder, spec: LoraSpec, *, rngs: nnx.Rngs) -> None:
    """Creates the stacked [L, ...] adapters of ``spec.targets`` on ``model`` (in place), with
    qwix's initialisers (A he-uniform, B zeros) in the parameter dtype."""
    c = model.config
    dtype = jnp.dtype(c.param_dtype)
    rule = qwix.LoraRule(rank=spec.rank, alpha=float(spec.alpha))
    for target in spec.targets:
        sub, weight = TARGETS[target]
        module = getattr(model.layers, sub)
        a_shape, b_shape = adapter_shapes(c, target, spec.rank)
        a_names, b_names = _adapter_names(target)
        keys = jax.random.split(rngs.params(), c.num_layers)
        a = jax.vmap(lambda k, s=a_shape: rule.lora_a_initializer(k, s, dtype))(keys)
        b = jnp.zeros((c.num_layers, *b_shape), dtype)
        setattr(
            module,
            weight + "_lora_a",
            ADAPTERS(a, out_sharding=("layers", *a_names), eager_sharding=False),
        )
        setattr(
            module,
            weight + "_lora_b",
            ADAPTERS(b, out_sharding=("layers", *b_names), eager_sharding=False),
        )


def norm_paths(config: ModelConfig) -> tuple[tuple[str, ...], ...]:
    """Attribute paths of the decoder's RMSNorm modules: the final norm, then the stacked
    per-layer ones ([L, D] gains; Qwen3's q/k norms [L, H] where ``config.qk_norm``)."""
    paths = [("final_norm",), ("layers", "input_norm"), ("layers", "post_attn_norm")]
    if config.qk_norm:
        paths += [("layers", "attn", "q_norm"), ("layers", "attn", "k_norm")]
    return tuple(paths)


def norm_module(model: Decoder, path: tuple[str, ...]) -> nnx.Module:
    """The RMSNorm module at ``path`` (see `norm_paths`)."""
    return functools.reduce(getattr, path, model)


def add_norm_deltas(model: Decoder) -> None:
    """Gives every RMSNorm of ``model`` a trainable gain offset ``weight_delta`` (zeros, the
    gain's shape, dtype and sharding names), in place."""
    for path in norm_paths(model.config):
        norm = norm_module(model, path)
        weight = norm.weight
        norm.weight_delta = ADAPTERS(
            jnp.zeros_like(weight[...]),
            out_sharding=weight.get_metadata().get("out_sharding"),
            eager_sharding=False,
        )


# The Decoder's entry points besides ``__call__`` (which qwix wraps itself) that run the
# layers: each must be wrapped, or its projections would silently skip the adapters.
WRAPPED_METHODS = ("decode_step", "shared_prefix_hidden")


def apply_lora(
    model: Decoder,
    *,
    rank: int,
    alpha: float,
    targets: str | Sequence[str],
    seed: int = 0,
    train_norms: bool = False,
) -> tuple[Decoder, nnx.GraphDef]:
    """The model with LoRA adapters (through qwix), and the base model's graphdef.

    Args:
      model: a Decoder (its weights become the frozen base; the model itself is left as is).
      rank: r >= 1.
      alpha: the update is scaled by alpha / r (PEFT's ``lora_alpha``).
      targets: names from `TARGETS`, e.g. ``"q,k,v,o,gate,up,down"``.
      seed: seeds the A initialisation.
      train_norms: also train an offset on every RMSNorm gain (see the module docstring).

    Returns:
      (lora_model, base_graphdef): ``lora_model`` shares ``model``'s weight arrays (no copy)
      and adds the adapters; ``nnx.merge(base_graphdef, base_state(nnx.state(lora_model)))``
      is the base model with the adapters off.
    """
    if rank < 1:
        raise ValueError(f"LoRA rank={rank} must be >= 1 (0 means LoRA off: do not apply it).")
    spec = LoraSpec(
        rank=int(rank),
        alpha=float(alpha),
        targets=parse_targets(targets),
        train_norms=bool(train_norms),
    )
    base_graphdef = nnx.graphdef(model)
    lora_model = nnx.clone(model)  # new Variables holding the same arrays
    add_adapters(lora_model, spec, rngs=nnx.Rngs(params=seed))
    if spec.train_norms:
        add_norm_deltas(lora_model)
    provider = _provider(spec)
    dummy = jnp.zeros((1, 1), jnp.int32)
    # skip_nnx_init: the adapters exist already; qwix needs inputs only to run that first call.
    lora_model = qwix.apply_lora_to_model(
        lora_model, provider, dummy, rngs=nnx.Rngs(params=seed), skip_nnx_init=True
    )
    cls = type(lora_model)
    wrapped = {
        name: qwix_model._apply_interceptors(
            getattr(cls._unquantized_type, name),
            provider,
            output_transform=functools.partial(provider.process_model_output, name),
        )
        for name in WRAPPED_METHODS
    }
    lora_model.__class__ = type(cls.__name__, (cls,), wrapped)
    lora_model.lora_spec = spec
    return lora_model, base_graphdef


def has_adapters(model_or_state: Any) -> bool:
    """Whether a model (or an ``nnx.State``) holds LoRA adapters."""
    state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state)
    return len(jax.tree.leaves(nnx.filter_state(state, ADAPTERS))) > 0


def adapter_state(state: nnx.State) -> nnx.State:
    """The adapters of a LoRA model's state."""
    return nnx.filter_state(state, ADAPTERS)


def base_state(state: nnx.State) -> nnx.State:
    """Everything but the adapters (the frozen base weights); the same arrays, no copy."""
    return nnx.filter_state(state, nnx.Not(ADAPTERS))


def split_trainable(state: nnx.State, lora: bool) -> tuple[nnx.State, nnx.State]:
    """(trainable, frozen): (adapters, base) with LoRA, else (everything, empty)."""
    if lora:
        return adapter_state(state), base_state(state)
    return state, nnx.State({})


def merge_trainable(trainable: nnx.State, frozen: nnx.State) -> nnx.State:
    """Inverse of `split_trainable`.

    The frozen part is rebuilt (new Variable objects over the same arrays): a loss that closes
    over it is then traced at the level of its caller, as NNX's lifted transforms (``nnx.scan``
    and ``nnx.remat`` in the decoder) require of the Variables they see.
    """
    return nnx.merge_state(trainable, jax.tree.map(lambda x: x, frozen))


def adapter_delta(a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
    """The weight update ``scale * A @ B`` of one layer in the base weight's layout:
    A [*in, r], B [r, *out] -> [*in, *out]."""
    r = a.shape[-1]
    a2 = a.reshape(-1, r)
    b2 = b.reshape(r, -1)
    return (scale * (a2 @ b2)).reshape(*a.shape[:-1], *b.shape[1:])


def merged_model(model: Decoder) -> Decoder:
    """A plain Decoder whose weights are ``W + (alpha / r) A B`` and, with ``train_norms``,
    whose RMSNorm gains are ``w + delta`` (for ``save_hf``), computed in float32; ``model`` is
    unchanged."""
    spec: LoraSpec = model.lora_spec
    merged = nnx.eval_shape(lambda: Decoder(model.config, rngs=nnx.Rngs(0)))
    nnx.update(merged, base_state(nnx.state(model)))
    for target in spec.targets:
        sub, weight = TARGETS[target]
        src = getattr(model.layers, sub)
        dst = getattr(merged.layers, sub)
        w = getattr(src, weight)[...]
        a = getattr(src, weight + "_lora_a")[...].astype(jnp.float32)
        b = getattr(src, weight + "_lora_b")[...].astype(jnp.float32)
        delta = jax.vmap(lambda a_l, b_l: adapter_delta(a_l, b_l, spec.scale))(a, b)
        getattr(dst, weight)[...] = (w.astype(jnp.float32) + delta).astype(w.dtype)
    if spec.train_norms:
        for path in norm_paths(model.config):
            src, dst = norm_module(model, path), norm_module(merged, path)
            dst.weight[...] = src.gain()
    if model.activation_sharding is not None:
        merged.set_sharding(*model.activation_sharding)
    return merged
