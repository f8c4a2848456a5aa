"""Process set-up shared by the command-line entry points (no JAX import here).

``quiet_accelerator_probes`` keeps a CPU run free of libtpu's start-up noise: with libtpu
installed (the ``[test]`` extra) on a machine without a TPU, JAX's TPU backend probe prints
initialisation errors ("could not determine TPU worker hostnames ...") before a CPU run
starts. Unless the user chose a platform (``JAX_PLATFORMS``), the CPU is picked when the
machine has no TPU or GPU device files, and libtpu is told not to query the cloud metadata
server. On a TPU VM or a GPU machine nothing changes.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import sys
from typing import Any


def has_tpu() -> bool:
    """Whether this machine exposes TPU chips (v2-v4: /dev/accel*, v5+: /dev/vfio/*)."""
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def has_gpu() -> bool:
    """Whether this machine exposes NVIDIA GPUs."""
    return os.path.exists("/dev/nvidiactl") or bool(glob.glob("/dev/nvidia[0-9]*"))


def quiet_accelerator_probes() -> None:
    """Set the environment so a CPU-only machine starts JAX without TPU probe errors.

    Call it before JAX's first computation (JAX reads ``JAX_PLATFORMS`` when it is imported;
    if it already is, the same setting goes through ``jax.config``).
    """
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    if "JAX_PLATFORMS" in os.environ or has_tpu() or has_gpu():
        return
    os.environ["JAX_PLATFORMS"] = "cpu"
    if "jax" in sys.modules:
        sys.modules["jax"].config.update("jax_platforms", "cpu")


def start_read_only_cli(argv: list[str]) -> None:
    """The common start of ``giftjax.eval`` and ``giftjax.export`` (absl ``main``): no stray
    arguments, giftjax's info logs shown, and absl's warnings hidden unless ``--verbosity`` is
    given (orbax warns about every read-only open of a checkpoint folder)."""
    import logging

    from absl import app, flags
    from absl import logging as absl_logging

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.getLogger("giftjax").setLevel(logging.INFO)
    if not flags.FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.ERROR)


@dataclasses.dataclass(frozen=True)
class RunFlags:
    """The absl flag holders of a command that reads a finished run (``giftjax.eval``,
    ``giftjax.export``): ``--config`` (with its overrides), ``--workdir`` and ``--step``."""

    config: Any
    workdir: Any
    step: Any


def define_run_flags(step_help: str) -> RunFlags:
    """Defines ``--config``, ``--workdir`` (both required) and ``--step`` on absl's global
    flags. Called from a command's ``run()`` only, never at import, so that the modules'
    functions (``evaluate_checkpoint``, ``export_checkpoint``) can be imported together and
    into programs with flags of their own."""
    from absl import flags
    from ml_collections import config_flags

    config = config_flags.DEFINE_config_file(
        "config",
        None,
        "Path to the run's config file (configs/*.py), optionally ':variant'.",
        lock_config=True,
    )
    workdir = flags.DEFINE_string(
        "workdir", None, "The run's directory (checkpoints/, config.json)."
    )
    step = flags.DEFINE_integer("step", None, step_help)
    flags.mark_flags_as_required(["config", "workdir"])
    return RunFlags(config, workdir, step)
