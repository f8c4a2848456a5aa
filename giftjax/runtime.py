"""Process set-up shared by the command-line entry points (no JAX import here).

Every giftjax command (``giftjax.main``, ``giftjax.eval``, ``giftjax.export``, ``giftjax.aot``)
starts the same way, through `start_cli`: the accelerator environment first (before JAX
is imported), then its absl flags, defined when the command runs and never at import (so its
library functions import together, and into programs with flags of their own), then absl's
parsing, a refusal of stray arguments and the logging levels:

```
def run() -> None:
    runtime.start_cli(_main, _define_flags, absl_verbosity=absl_logging.WARNING)
```

The host-side tools ``giftjax.plot`` and ``giftjax.data.prepare`` take positional arguments and
are called in-process as ``main(argv) -> exit code``: `parse_flags` defines their absl
flags on a fresh ``FlagValues`` each call (the same flag syntax, ``--out=DIR`` or ``--out DIR``,
with nothing left on absl's global flags).

``quiet_accelerator_probes`` keeps a CPU run free of libtpu's start-up noise: with libtpu
installed (the ``[test]`` extra) on a machine without a TPU, JAX's TPU backend probe prints
initialisation errors ("could not determine TPU worker hostnames ...") before a CPU run
starts. Unless the user chose a platform (``JAX_PLATFORMS``), the CPU is picked when the
machine has no TPU or GPU device files, and libtpu is told not to query the cloud metadata
server. On a TPU VM or a GPU machine nothing changes. With ``compile_only=True`` (``giftjax.aot``:
libtpu compiles for a TPU topology on a machine without one) JAX stays on the CPU wherever it
runs, and libtpu looks up no TPU host and may be loaded by several processes.
``quiet_libtpu`` silences libtpu's C++ logging (file descriptor 2) around a block.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

Flags = TypeVar("Flags")


def has_tpu() -> bool:
    """Whether this machine exposes TPU chips (v2-v4: /dev/accel*, v5+: /dev/vfio/*)."""
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def has_gpu() -> bool:
    """Whether this machine exposes NVIDIA GPUs."""
    return os.path.exists("/dev/nvidiactl") or bool(glob.glob("/dev/nvidia[0-9]*"))


def quiet_accelerator_probes(*, compile_only: bool = False) -> None:
    """Set the environment so JAX starts without TPU probe errors (see the module docstring).

    Call it before JAX's first computation (JAX reads ``JAX_PLATFORMS`` when it is imported;
    if it already is, the same setting goes through ``jax.config``).

    Args:
      compile_only: the process compiles for a TPU topology through libtpu and runs nothing on
        an accelerator (``giftjax.aot``): the CPU platform unless ``JAX_PLATFORMS`` is set,
        ``TPU_WORKER_HOSTNAMES=localhost`` and ``ALLOW_MULTIPLE_LIBTPU_LOAD=1`` (a compile
        needs no exclusive TPU).
    """
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    if compile_only:
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    elif has_tpu() or has_gpu():
        return
    if "JAX_PLATFORMS" in os.environ:
        return
    os.environ["JAX_PLATFORMS"] = "cpu"
    if "jax" in sys.modules:
        sys.modules["jax"].config.update("jax_platforms", "cpu")


@contextlib.contextmanager
def _stderr_to(path: str) -> Iterator[None]:
    """Redirects file descriptor 2 (libtpu's C++ logging goes there) to ``path``."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "w") as f:
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def quiet_libtpu() -> Iterator[None]:
    """Silences libtpu's start-up and compile chatter; shows it if the block raises."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "stderr.txt")
        try:
            with _stderr_to(path):
                yield
        except BaseException:
            with open(path, errors="replace") as f:
                sys.stderr.write(f.read()[-4000:])
            raise


def start_cli(
    main: Callable[[Flags], None],
    define_flags: Callable[[], Flags],
    *,
    absl_verbosity: int | None = None,
    compile_only: bool = False,
) -> None:
    """Runs a giftjax command: the one start-up of ``giftjax.main``, ``eval``, ``export``, ``aot``.

    In order: `quiet_accelerator_probes` (with ``compile_only``), ``define_flags()`` (the
    command's absl flags, defined now rather than at import), absl's ``app.run``, which parses
    the command line; then stray positional arguments are a usage error, giftjax's INFO logs
    are shown, absl's verbosity (orbax and grain log through absl) is set to
    ``absl_verbosity`` unless ``--verbosity`` was given, and ``main(flags)`` runs with what
    ``define_flags`` returned (absl flag holders; read ``.value``).

    Args:
      main: the command's body, given the flag holders.
      define_flags: defines the command's flags on absl's global ``FLAGS`` and returns their
        holders (e.g. a `RunFlags`).
      absl_verbosity: an ``absl.logging`` level (``WARNING``, ``ERROR``), or None to leave
        absl's default.
      compile_only: passed to `quiet_accelerator_probes`.
    """
    quiet_accelerator_probes(compile_only=compile_only)
    import logging

    from absl import app, flags
    from absl import logging as absl_logging

    holders = define_flags()

    def app_main(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        logging.getLogger("giftjax").setLevel(logging.INFO)
        if absl_verbosity is not None and not flags.FLAGS["verbosity"].present:
            absl_logging.set_verbosity(absl_verbosity)
        main(holders)

    app.run(app_main)


def parse_flags(
    argv: Sequence[str] | None,
    define_flags: Callable[[Any], Flags],
    *,
    prog: str,
    usage: str,
    num_args: int,
) -> tuple[Flags, list[str]]:
    """Parses a host-side tool's command line with absl flags defined for this call only.

    Args:
      argv: the arguments after the program name (None: ``sys.argv[1:]``).
      define_flags: ``define_flags(flag_values)`` defines the tool's flags on the given
        ``absl.flags.FlagValues`` (``flags.DEFINE_string(..., flag_values=flag_values)``) and
        returns their holders.
      prog: the command, for messages (``python -m giftjax.plot``).
      usage: the arguments' synopsis (``WORKDIR [--out PATH] [--smooth N]``).
      num_args: how many positional arguments the tool takes.

    Returns:
      ``(holders, positional arguments)``.

    Raises:
      SystemExit: code 0 after printing the help for ``--help``; code 2 after printing the
        usage and the error for a bad command line (an unknown or invalid flag, a missing
        required one, a wrong number of positional arguments).
    """
    from absl import flags

    values = flags.FlagValues()
    holders = define_flags(values)
    args = list(sys.argv[1:] if argv is None else argv)
    if "--help" in args or "-h" in args:
        print(f"usage: {prog} {usage}\n\n{values.get_help(include_special_flags=False)}")
        raise SystemExit(0)
    try:
        rest = values([prog, *args])[1:]
        if len(rest) != num_args:
            raise flags.Error(f"expected {num_args} positional argument(s), got {rest}")
    except flags.Error as e:
        print(f"usage: {prog} {usage}\nerror: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return holders, rest


@dataclasses.dataclass(frozen=True)
class RunFlags:
    """The absl flag holders of a command that reads or writes a run: ``--config`` (with its
    overrides), ``--workdir`` and, for a command that reads a finished run (``giftjax.eval``,
    ``giftjax.export``), ``--step``."""

    config: Any
    workdir: Any
    step: Any = None


def define_run_flags(
    *,
    config_help: str = "Path to the run's config file (configs/*.py), optionally ':variant'.",
    workdir_help: str = "The run's directory (checkpoints/, config.json).",
    step_help: str | None = None,
) -> RunFlags:
    """Defines ``--config`` (loaded locked, so a misspelt key fails; keys overridable as
    ``--config.train.steps=20``), ``--workdir`` (both required) and, given ``step_help``,
    ``--step`` on absl's global flags. Call it from a command's ``define_flags`` only."""
    from absl import flags
    from ml_collections import config_flags

    config = config_flags.DEFINE_config_file("config", None, config_help, lock_config=True)
    workdir = flags.DEFINE_string("workdir", None, workdir_help)
    step = None if step_help is None else flags.DEFINE_integer("step", None, step_help)
    flags.mark_flags_as_required(["config", "workdir"])
    return RunFlags(config, workdir, step)
