"""FLOPs per step of a run's device programs, counted from XLA's cost analysis.

XLA's cost analysis counts a loop body once (the layer scan, the micro-batch scan, the decode
loop), so compiled programs undercount. These counts lower the same functions
(`giftjax.train.programs.programs`) with every scan unrolled, on the host CPU, on 1- and
2-layer copies of the model extrapolated to L identical layers, with the decode loop counted
``max_new_tokens - 1`` times (every row generating to the end, an upper bound). A step costs
``sampler + logps_calls x logps + updates_per_step x train`` (``giftjax.aot``'s report).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any
from unittest import mock

import jax
import ml_collections
from flax import nnx

from giftjax import sharding as sharding_lib
from giftjax.train import programs


@contextlib.contextmanager
def _unrolled_loops() -> Iterator[None]:
    """Every ``lax.scan``, ``lax.fori_loop`` and ``nnx.scan`` traced meanwhile is unrolled (so
    that the cost analysis counts each iteration)."""

    def force(fn):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            kwargs["unroll"] = True
            return fn(*args, **kwargs)

        return wrapped

    with (
        mock.patch.object(jax.lax, "scan", force(jax.lax.scan)),
        mock.patch.object(jax.lax, "fori_loop", force(jax.lax.fori_loop)),
        mock.patch.object(nnx, "scan", force(nnx.scan)),
    ):
        yield


def cost_flops(fn: Any, args: tuple[Any, ...]) -> float:
    """FLOPs of ``fn(*args)`` as XLA's cost analysis counts them with every loop unrolled."""
    with _unrolled_loops():
        lowered = jax.jit(fn).lower(*args)
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost["flops"])


def decode_flops(config: ml_collections.ConfigDict, mesh: Any, rows: int, slots: int) -> float:
    """FLOPs of one decode step (one token for each of ``rows`` rows, cache of ``slots``)."""
    ctx, state = programs.abstract_run(config, mesh)
    graphdef = ctx.graphdef
    model = nnx.merge(graphdef, state.params)
    cache = jax.eval_shape(lambda: model.init_cache(rows, slots))
    prev = jax.ShapeDtypeStruct((rows, 1), jax.numpy.int32)

    def decode(params, prev, cache):
        return nnx.merge(graphdef, params).decode_step(prev, cache=cache)

    return cost_flops(decode, (state.params, prev, cache))


def count_flops_once(config: ml_collections.ConfigDict) -> dict[str, float]:
    """FLOPs of one call of each program of ``config`` as it is (its own layer count)."""
    mesh = sharding_lib.make_mesh((1, 1, 1), devices=jax.devices("cpu")[:1])
    out: dict[str, float] = {}
    for p in programs.programs(config, mesh):
        out[p.name] = cost_flops(p.fn, p.args)
        if p.name == "sampler":
            m = config.rollout.max_new_tokens
            rows = p.args[1].shape[0] * config.rollout.group_size
            step = decode_flops(config, mesh, rows, config.data.max_prompt_len + m)
            # The loop body is counted once by the cost analysis; it runs up to M - 1 times.
            out[p.name] += (m - 2) * step
    return out


def count_flops(config: ml_collections.ConfigDict) -> dict[str, float]:
    """FLOPs of one call of each program (all chips together), on one host CPU device with
    every loop unrolled (see the module docstring).

    The L layers are identical, so a program's FLOPs are ``f(1) + (L - 1) (f(2) - f(1))``
    with ``f(l)`` the count of the same program on an ``l``-layer model: two small lowerings
    instead of one with L unrolled layers.
    """
    c = config.copy_and_resolve_references()
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 1, 1
    layers = programs.abstract_model_config(c).num_layers
    counts = []
    for n in (1, 2):
        c.model.shape.num_layers = n
        counts.append(count_flops_once(c))
    one, two = counts
    return {k: one[k] + (layers - 1) * (two[k] - one[k]) for k in one}
