"""Meshes, logical axis rules, placing parameters and batches on them
(docs/development/architecture.md 4).

Code names *logical* axes only. Parameters carry them in their `out_sharding` metadata
(`embed`, `vocab`, `heads`, `kv_heads`, `head_dim`, `mlp`, `layers`); activations and batches use
`batch` and `length`. A rules table, a sequence of `(logical name, mesh axes)` pairs as in
MaxText's `logical_axis_rules`, maps each to a mesh axis, a tuple of mesh axes, or None
(replicated). Changing the parallelism is one table edit:

- `FSDP_RULES`: parameters sharded over `fsdp` along `embed` (ZeRO-3 style), rows over
  `data` x `fsdp`.
- `FSDP_TP_RULES`: as FSDP, plus Megatron tensor parallelism over `tensor` (heads, kv_heads,
  mlp and vocab split; embed over fsdp).

The mesh has the axes `("data", "fsdp", "tensor")`, sized from a config where one size may be -1
(the remaining devices).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from giftjax import distributed

MESH_AXES = ("data", "fsdp", "tensor")
LOGICAL_AXES = (
    "batch", "length", "embed", "vocab", "heads", "kv_heads", "head_dim", "mlp", "layers",
)  # fmt: skip

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

FSDP_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("vocab", None),
    ("heads", None),
    ("kv_heads", None),
    ("head_dim", None),
    ("mlp", None),
    ("layers", None),
)

FSDP_TP_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("layers", None),
)

RULES = {"fsdp": FSDP_RULES, "fsdp_tp": FSDP_TP_RULES}


def get_rules(rules: str | Rules | Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A rules table from its name ("fsdp", "fsdp_tp"), a mapping or a sequence of pairs."""
    if isinstance(rules, str):
        if rules not in RULES:
            raise ValueError(f"rules={rules!r}; known rule tables are {sorted(RULES)}.")
        rules = RULES[rules]
    items = rules.items() if isinstance(rules, Mapping) else rules
    out = []
    for name, axes in items:
        if isinstance(axes, list):
            axes = tuple(axes)
        for a in axes if isinstance(axes, tuple) else (axes,):
            if a is not None and a not in MESH_AXES:
                raise ValueError(
                    f"rule {name!r} -> {axes!r} names mesh axis {a!r}; mesh axes are {MESH_AXES}."
                )
        out.append((name, axes))
    return tuple(out)


def make_mesh(
    shape: Mapping[str, int] | Sequence[int] = (1, -1, 1),
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A mesh with axes ("data", "fsdp", "tensor"); one size may be -1 (the rest).

    Axis types are `Auto`: jax 0.10's `jax.make_mesh` defaults to `Explicit` axes, under which
    every array's sharding is part of its type and each op must be told how to shard its
    output. The model and the train step instead state shardings at the jit boundary
    (`in_shardings`/`out_shardings`, parameters placed by `shard_params`) and let the GSPMD
    partitioner propagate them through the layers, which is what `Auto` does.

    Args:
      shape: sizes in the order of MESH_AXES, or a mapping {"data": 2, "fsdp": -1, ...}
        (missing axes are 1).
      devices: the devices to use (default all of `jax.devices()`).
    """
    devices = list(jax.devices() if devices is None else devices)
    if isinstance(shape, Mapping):
        unknown = set(shape) - set(MESH_AXES)
        if unknown:
            raise ValueError(f"mesh shape names unknown axes {sorted(unknown)}; use {MESH_AXES}.")
        sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
    else:
        sizes = [int(s) for s in shape]
        if len(sizes) != len(MESH_AXES):
            raise ValueError(f"mesh shape {tuple(shape)} must give {len(MESH_AXES)} sizes.")
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh shape {sizes}: at most one size may be -1.")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices are not divisible by the sizes {sizes}.")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"mesh shape {dict(zip(MESH_AXES, sizes, strict=True))} needs "
            f"{math.prod(sizes)} devices; {len(devices)} are given."
        )
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def logical_to_spec(names: Sequence[str | None], rules: Rules) -> PartitionSpec:
    """The PartitionSpec of an array whose dims carry logical `names`.

    A mesh axis already used by an earlier dimension is not used again (a mesh axis may shard
    at most one dimension of an array).
    """
    table = dict(get_rules(rules))
    used: set[str] = set()
    spec = []
    for name in names:
        if name is not None and name not in table:
            raise ValueError(f"logical axis {name!r} has no rule; rules cover {sorted(table)}.")
        axes = table.get(name) if name is not None else None
        axes = axes if isinstance(axes, tuple) else (axes,) if axes else ()
        axes = tuple(a for a in axes if a not in used)
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def num_shards(axes: str | tuple[str, ...] | None, mesh: Mesh) -> int:
    """How many pieces a dimension is split into by one PartitionSpec entry (None: 1)."""
    axes = axes if isinstance(axes, tuple) else (axes,) if axes else ()
    return math.prod(mesh.shape[a] for a in axes)


def named_sharding(
    names: Sequence[str | None],
    shape: Sequence[int],
    mesh: Mesh,
    rules: Rules,
    *,
    what: str = "array",
) -> NamedSharding:
    """The NamedSharding of an array of `shape` with logical `names`, checking divisibility.

    Raises:
      ValueError: naming `what`, the dimension, its size and the mesh axes, when a dimension
        is not divisible by the product of the mesh axes it is sharded over.
    """
    if len(names) != len(shape):
        raise ValueError(f"{what}: logical names {tuple(names)} do not match shape {shape}.")
    spec = logical_to_spec(names, rules)
    for dim, (size, axes, name) in enumerate(zip(shape, spec, names, strict=True)):
        n = num_shards(axes, mesh)
        if size % n:
            axes = axes if isinstance(axes, tuple) else (axes,)
            raise ValueError(
                f"{what}: dimension {dim} ({name!r}, size {size}) is not divisible by mesh "
                f"axes {axes} of total size {n}; change the mesh shape or the rule for {name!r}."
            )
    return NamedSharding(mesh, spec)


def _path_str(path) -> str:
    return "/".join(str(getattr(p, "key", p)) for p in path)


def param_shardings(state: nnx.State, mesh: Mesh, rules: Rules) -> nnx.State:
    """A State of NamedSharding, one per Variable of `state`, from its logical names.

    Variables without `out_sharding` metadata are replicated.
    """
    flat = nnx.to_flat_state(state)
    out = []
    for path, var in flat:
        value = var.get_value()
        names = var.get_metadata().get("out_sharding") or (None,) * len(value.shape)
        sharding = named_sharding(names, value.shape, mesh, rules, what=_path_str(path))
        out.append((path, var.replace(sharding)))
    return nnx.from_flat_state(out)


def shard_params(model: nnx.Module, mesh: Mesh, rules: Rules) -> nnx.Module:
    """Places every Variable of `model` on `mesh` by its logical names (in place); returns it.

    A model with a `set_sharding(mesh, rules)` method (the Decoder) also gets its activation
    constraints set.
    """
    state = nnx.state(model)
    shardings = param_shardings(state, mesh, rules)
    nnx.update(model, jax.device_put(state, shardings))
    if hasattr(model, "set_sharding"):
        model.set_sharding(mesh, rules)
    return model


def batch_sharding(ndim: int, mesh: Mesh, rules: Rules) -> NamedSharding:
    """Sharding of a batch array [B, T, ...]: rows by `batch`, tokens by `length`."""
    names = ("batch", "length", *([None] * (ndim - 2)))[:ndim]
    return NamedSharding(mesh, logical_to_spec(names, rules))


def shard_batch(batch: Any, mesh: Mesh, rules: Rules) -> Any:
    """Places every array of the pytree `batch` ([B], [B, T], ...) rows over the data axes.

    In a multi-process run each process passes ITS rows (its contiguous block of B / n rows,
    in process order, see `giftjax.distributed`) and gets the global [B, ...] array
    (`jax.make_array_from_process_local_data`); 0-d arrays are replicated and must be equal
    on every process.
    """
    multi = jax.process_count() > 1

    def place(path, x):
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        if x.ndim == 0:
            return jax.device_put(x, NamedSharding(mesh, PartitionSpec()))
        names = ("batch", "length", *([None] * (x.ndim - 2)))[: x.ndim]
        shape = ((x.shape[0] * jax.process_count()) if multi else x.shape[0], *x.shape[1:])
        sharding = named_sharding(names, shape, mesh, rules, what=f"batch {_path_str(path)}")
        if not multi:
            return jax.device_put(x, sharding)
        distributed.process_block(shape[0], sharding)  # a clear error if the rows interleave
        return jax.make_array_from_process_local_data(sharding, np.asarray(x), shape)

    return jax.tree_util.tree_map_with_path(place, batch)


def shard_by_names(tree: Any, names: Any, mesh: Mesh, rules: Rules) -> Any:
    """Places each array of `tree` by the logical names at the same place in `names`.

    `names` mirrors `tree` with a tuple of logical names per array (e.g.
    `giftjax.models.kv_cache.CACHE_AXES` for a KVCache).
    """
    is_names = lambda x: isinstance(x, tuple) and all(isinstance(n, str | None) for n in x)
    shardings = jax.tree.map(
        lambda n, x: named_sharding(n, x.shape, mesh, rules, what=f"array with axes {n}"),
        names,
        tree,
        is_leaf=is_names,
    )
    return jax.device_put(tree, shardings)


def constrain(x: jax.Array, names: Sequence[str | None], mesh: Mesh, rules: Rules) -> jax.Array:
    """`with_sharding_constraint` of an activation by logical names, inside jit.

    Mesh axes that do not divide their dimension (a batch of 3 rows on 8 devices) are dropped
    for that dimension rather than raising: activation constraints are hints, while parameter
    placement (`named_sharding`) is strict.
    """
    spec = []
    for size, axes in zip(x.shape, logical_to_spec(names, rules), strict=True):
        spec.append(axes if axes and size % num_shards(axes, mesh) == 0 else None)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(*spec)))


def data_ways(mesh: Mesh) -> int:
    """How many ways batch rows split over ``mesh``: the size of its data x fsdp axes."""
    return int(mesh.shape["data"] * mesh.shape["fsdp"])


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple`` (rows padded to whole shards)."""
    return -(-n // multiple) * multiple


def sampled_prompts(prompts: int, samples: int, ways: int) -> int:
    """The prompt rows the sampler runs for ``prompts`` x ``samples`` rows over ``ways`` data
    shards: ``prompts`` when the rows divide, else ``prompts`` rounded up to a multiple of
    ``ways`` (dummy prompts, whose samples are dropped)."""
    if (prompts * samples) % ways == 0:
        return prompts
    return round_up(prompts, ways)
