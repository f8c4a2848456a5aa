"""Ahead-of-time TPU compiles of the Pallas kernels, on this CPU machine, through libtpu.

Interpret mode (the CPU tests) proves numerics, not TPU lowering: here the Mosaic
compiler sees the kernels, enforces the (8, 128) block tiling and VMEM limits, and
reports memory (docs/development/architecture.md, section 5). ``JAX_PLATFORMS=cpu``
(conftest) does not block ``jax.experimental.topologies``: the TPU client is created from
libtpu for the topology description only, so these tests run in the same process as the CPU suite.
Skipped when libtpu is not installed (``pip install libtpu``; CI installs it).
"""

from __future__ import annotations

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from giftjax import kernels

pytestmark = [
    pytest.mark.tpu_aot,
    pytest.mark.skipif(
        importlib.util.find_spec("libtpu") is None,
        reason="libtpu is not installed (pip install libtpu==0.0.42.1): no TPU AOT compile",
    ),
]

TOPOLOGIES = ["v5e:2x2", "v5p:2x2x1"]

# libtpu takes a machine-wide lock file (/tmp/libtpu_lockfile) when it loads; an AOT compile
# needs no exclusive access to a TPU, so let several processes (xdist workers, other
# checkouts) load it at once.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def tpu_mesh(topology: str) -> Mesh:
    from jax.experimental import topologies

    devices = topologies.get_topology_desc(platform="tpu", topology_name=topology).devices
    assert len(devices) == 4, devices
    return Mesh(np.array(devices).reshape(2, 2), ("data", "tensor"))


def compile_for(mesh, fn, *shapes_specs):
    args = [
        jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))
        for shape, dtype, spec in shapes_specs
    ]
    return jax.jit(fn).lower(*args).compile()


@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize("with_entropy", [False, True])
def test_token_logprobs_pallas_in_shard_map_compiles(topology, with_entropy):
    mesh = tpu_mesh(topology)
    # 1000 tokens per data shard (not a multiple of the token block), 16001 ids per vocabulary
    # shard (not a multiple of 128), bf16.
    n, d, v = 2000, 512, 32002

    def fwd(h, w, t):
        return kernels.token_logprobs_sharded(
            h,
            w,
            t,
            mesh=mesh,
            token_axes=("data",),
            impl="pallas",
            with_entropy=with_entropy,
            temperature=0.8,
        )

    def fwd_bwd(h, w, t):
        def loss(h, w):
            out = fwd(h, w, t)
            return jnp.sum(out[0] + 0.1 * out[1]) if with_entropy else jnp.sum(out)

        return jax.value_and_grad(loss, argnums=(0, 1))(h, w)

    specs = (
        ((n, d), jnp.bfloat16, P("data", None)),
        ((d, v), jnp.bfloat16, P(None, "tensor")),
        ((n,), jnp.int32, P("data")),
    )
    for fn in (fwd, fwd_bwd):
        compiled = compile_for(mesh, fn, *specs)
        hlo = compiled.as_text()
        # The Mosaic kernels themselves are in the executable, not an interpret-mode loop.
        assert "tpu_custom_call" in hlo, f"{fn.__name__}: no Mosaic custom call for {topology}"
        assert compiled.memory_analysis() is not None


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_token_logprobs_pallas_single_chip_memory(topology):
    """On one chip, fwd+bwd temporaries stay below the f32 [N, D] floor (far below [N, V]).

    V is a multiple of 128 here: with a ragged V, XLA's TPU layout for a [D, V] entry
    parameter is column-major and it adds a relayout copy of W (and of dW) around the
    Mosaic call (the kernels themselves handle any V; see the README).
    """
    mesh = tpu_mesh(topology)
    one = Mesh(np.array(mesh.devices.flat[:1]).reshape(1), ("x",))
    n, d, v = 4000, 1024, 391 * 128

    def fwd_bwd(h, w, t):
        loss = lambda h, w: jnp.sum(kernels.token_logprobs(h, w, t, impl="pallas"))
        return jax.grad(loss, argnums=(0, 1))(h, w)

    compiled = compile_for(
        one,
        fwd_bwd,
        ((n, d), jnp.bfloat16, P()),
        ((d, v), jnp.bfloat16, P()),
        ((n,), jnp.int32, P()),
    )
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert temp < n * d * 4, f"temp {temp} bytes >= the f32 [N, D] floor {n * d * 4}"


@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize(("num_groups", "group_size"), [(4096, 8), (1030, 16)])
def test_group_normalize_pallas_compiles(topology, num_groups, group_size):
    """Forward and full-gradient backward, in shard_map over the data axis (groups split)."""
    mesh = tpu_mesh(topology)

    def local(x):
        z, mean, std = kernels.group_normalize(
            x, group_size=group_size, stop_grad_stats=False, std_floor=0.1, impl="pallas"
        )
        return jnp.sum(z * z) + jnp.sum(mean) + jnp.sum(std)

    def fwd_bwd(x):
        per_shard = jax.shard_map(
            lambda x: jax.grad(local)(x),
            mesh=mesh,
            in_specs=P("data"),
            out_specs=P("data"),
            check_vma=False,
        )
        return per_shard(x)

    b = 2 * num_groups * group_size  # two data shards, num_groups groups each
    compiled = compile_for(mesh, fwd_bwd, ((b,), jnp.float32, P("data")))
    hlo = compiled.as_text()
    assert hlo.count("tpu_custom_call") >= 2, "expected the forward and backward Mosaic kernels"
