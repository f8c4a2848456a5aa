"""Multi-controller JAX: joining a multi-host job, and moving per-host rows in and out of it.

Every host runs the same program (``python -m giftjax.main ...``). Before any other JAX call,
`initialize` joins the hosts into one job with ``jax.distributed.initialize`` when the
environment asks for it:

- ``GIFTJAX_COORDINATOR=host:port``, ``GIFTJAX_NUM_PROCESSES=n``, ``GIFTJAX_PROCESS_ID=i``:
  explicit (``launch/local_multihost.sh`` sets these);
- ``GIFTJAX_DISTRIBUTED=auto``: JAX's own cluster detection (TPU pod slices, SLURM,
  Open MPI), as ``launch/tpu_pod.sh`` and ``launch/slurm_gpu.sbatch`` set;
- neither: a single-process run, nothing to do.

``GIFTJAX_INIT_TIMEOUT`` (seconds, default 300) bounds the wait for every host to join: a host
that never arrives makes the others fail with an error naming the coordinator, instead of a
hang. On CPU the cross-process collectives use gloo.

Rows of a batch are sharded over the mesh's data axes (``batch`` -> ``("data", "fsdp")``).
Each process holds a contiguous block of the global rows: process ``i`` of ``n`` holds rows
``[i * B / n, (i + 1) * B / n)`` (`process_block` checks it). Hosts tokenise, decode and
score only their own rows; `local_rows` takes a process's rows out of a global array and
`allgather` puts small host arrays (rewards, lengths) back together for metrics.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

__all__ = [
    "allgather",
    "any_process",
    "distributed_args",
    "initialize",
    "is_multiprocess",
    "local_rows",
    "process_block",
    "process_index",
    "use_distributed_barriers",
]

ENV_COORDINATOR = "GIFTJAX_COORDINATOR"
ENV_NUM_PROCESSES = "GIFTJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "GIFTJAX_PROCESS_ID"
ENV_MODE = "GIFTJAX_DISTRIBUTED"
ENV_TIMEOUT = "GIFTJAX_INIT_TIMEOUT"
DEFAULT_TIMEOUT_S = 300


def _int_env(env: Mapping[str, str], name: str, low: int) -> int:
    raw = env.get(name, "")
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < low:
        raise ValueError(f"{name}={raw!r}; expected an integer >= {low}.")
    return value


def distributed_args(env: Mapping[str, str]) -> dict[str, Any] | None:
    """The ``jax.distributed.initialize`` keyword arguments the environment asks for.

    Returns None for a single-process run (no ``GIFTJAX_*`` variable set).

    Raises:
      ValueError: a variable is malformed or only some of the explicit ones are set; the
        message names the variable, its value and what is valid.
    """
    timeout = DEFAULT_TIMEOUT_S
    if env.get(ENV_TIMEOUT):
        timeout = _int_env(env, ENV_TIMEOUT, 1)
    mode = env.get(ENV_MODE, "")
    explicit = [k for k in (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID) if env.get(k)]
    if mode not in ("", "auto"):
        raise ValueError(f"{ENV_MODE}={mode!r}; expected 'auto' (or unset).")
    if mode == "auto":
        if explicit:
            raise ValueError(f"{ENV_MODE}=auto detects the cluster; unset {', '.join(explicit)}.")
        return {"initialization_timeout": timeout}
    if not explicit:
        return None
    missing = [k for k in (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID) if not env.get(k)]
    if missing:
        raise ValueError(
            f"{', '.join(explicit)} set but {', '.join(missing)} not: a multi-process run needs "
            f"all three of {ENV_COORDINATOR}, {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID}."
        )
    coordinator = env[ENV_COORDINATOR]
    if ":" not in coordinator:
        raise ValueError(f"{ENV_COORDINATOR}={coordinator!r}; expected host:port.")
    n = _int_env(env, ENV_NUM_PROCESSES, 1)
    i = _int_env(env, ENV_PROCESS_ID, 0)
    if i >= n:
        raise ValueError(f"{ENV_PROCESS_ID}={i} must be < {ENV_NUM_PROCESSES}={n}.")
    return {
        "coordinator_address": coordinator,
        "num_processes": n,
        "process_id": i,
        "initialization_timeout": timeout,
    }


def initialize(env: Mapping[str, str] | None = None) -> bool:
    """Joins the multi-host job the environment describes (module docstring); call it before
    any other JAX computation. Returns whether ``jax.distributed`` was initialised.

    Raises:
      RuntimeError: ``jax.distributed.initialize`` raised; names the coordinator, the
        process and the timeout. (When a host never joins, jaxlib itself ends the process
        after the timeout; the line printed before joining names what it waited for.)
    """
    args = distributed_args(os.environ if env is None else env)
    if args is None:
        return False
    # CPU devices of different processes talk through gloo (the default has no cross-process
    # CPU collectives); TPU and GPU devices keep their own interconnect.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    where = args.get("coordinator_address", "the auto-detected coordinator")
    who = args.get("process_id", "?")
    how_many = args.get("num_processes", "all")
    timeout = args["initialization_timeout"]
    # When a host never joins, jaxlib's coordination client ends the process (a fatal log,
    # not a Python exception) once the timeout has passed: say beforehand what it waits for.
    print(
        f"giftjax: process {who} joining {where}; waiting at most {timeout} s "
        f"({ENV_TIMEOUT}) for {how_many} processes to join",
        file=sys.stderr,
        flush=True,
    )
    try:
        jax.distributed.initialize(**args)
    except Exception as e:  # jaxlib raises XlaRuntimeError (DEADLINE_EXCEEDED ...)
        raise RuntimeError(
            f"jax.distributed.initialize failed for process {who} with coordinator {where} "
            f"after at most {timeout} s ({ENV_TIMEOUT}): a host did not join, or the "
            f"coordinator is unreachable. Start the same command on every host. Cause: {e}"
        ) from e
    use_distributed_barriers()
    return True


def use_distributed_barriers() -> bool:
    """Makes orbax synchronise processes through the ``jax.distributed`` client's barriers.

    By default orbax 0.12 synchronises with ``sync_global_devices``, a collective computation
    on every device. An asynchronous save runs such barriers from its background thread while
    the training thread runs its own collectives, and two processes can then start them in
    different orders and wait on each other forever (seen with gloo on CPU). The client's
    barriers are not device computations, so they cannot interleave with the training step.

    Returns whether the setting is in force (it is an absl flag: False when absl flags have
    not been parsed, i.e. outside an ``absl.app`` program such as ``giftjax.main``).
    """
    from absl import flags
    from orbax.checkpoint._src.multihost import multihost as orbax_multihost

    name = orbax_multihost.EXPERIMENTAL_ORBAX_USE_DISTRIBUTED_BARRIER.name
    if not flags.FLAGS.is_parsed():
        return False
    setattr(flags.FLAGS, name, True)
    return bool(orbax_multihost.EXPERIMENTAL_ORBAX_USE_DISTRIBUTED_BARRIER.value)


def process_index() -> int:
    """This process's index in the job (0 in a single-process run)."""
    return jax.process_index()


def is_multiprocess() -> bool:
    """Whether this run spans more than one process."""
    return jax.process_count() > 1


def process_block(rows: int, sharding: jax.sharding.Sharding) -> tuple[int, int]:
    """The rows ``[start, stop)`` this process holds of an array of ``rows`` rows.

    Raises:
      ValueError: the process's rows are not one contiguous block of ``rows / process_count``
        (the data axes do not split over the processes in order); the message names the
        mesh and what to change.
    """
    n, i = jax.process_count(), jax.process_index()
    index_map = sharding.addressable_devices_indices_map((rows,))
    spans = sorted(
        {(s[0].start or 0, rows if s[0].stop is None else s[0].stop) for s in index_map.values()}
    )
    start, stop = spans[0][0], spans[-1][1]
    contiguous = all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    if rows % n or not contiguous or (start, stop) != (i * rows // n, (i + 1) * rows // n):
        mesh = getattr(sharding, "mesh", None)
        shape = dict(mesh.shape) if isinstance(mesh, Mesh) else sharding
        raise ValueError(
            f"process {i} of {n} holds rows {spans} of {rows}; multi-host runs need each "
            f"process to hold the contiguous block [{i} * {rows} / {n}, ...) of the batch rows. "
            f"Make the data axes (data x fsdp of mesh {shape}) a multiple of the {n} processes "
            f"and the rows a multiple of data x fsdp."
        )
    return start, stop


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a global array sharded by rows, as a NumPy array [B / n, ...].

    In a single-process run this is ``np.asarray(x)``. Replicated copies of a row (a tensor
    axis) are taken once.
    """
    if x.is_fully_addressable:
        return np.asarray(x)
    start, stop = process_block(x.shape[0], x.sharding)
    out = np.empty((stop - start, *x.shape[1:]), x.dtype)
    for shard in x.addressable_shards:
        idx = shard.index[0]
        a = idx.start or 0
        b = x.shape[0] if idx.stop is None else idx.stop
        out[a - start : b - start] = np.asarray(shard.data)
    return out


def allgather(x: np.ndarray) -> np.ndarray:
    """Every process's ``x`` (same shape everywhere), concatenated along axis 0 in process
    order: rows ``[i * len(x), (i + 1) * len(x))`` came from process ``i``. A collective: all
    processes must call it together. Single process: ``x`` itself."""
    x = np.asarray(x)
    if not is_multiprocess():
        return x
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def any_process(flag: bool) -> bool:
    """Whether ``flag`` is True on any process (a collective in multi-process runs: every
    process must call it at the same point, e.g. once per step, for the hosts to agree on
    when to stop)."""
    if not is_multiprocess():
        return bool(flag)
    return bool(np.max(multihost_utils.process_allgather(np.int32(bool(flag)))))
