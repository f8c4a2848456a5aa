"""The command line: ``python -m giftjax.main --config=configs/NAME.py --workdir=DIR``.

Parses flags, sets up logging and hands the config to [`train`][giftjax.train.loop.train].
``algo.name`` picks the loop. Configs are loaded locked, so a misspelt key fails; any key can
be overridden (``--config.train.steps=20``). Re-running the same command on the same DIR
resumes from its newest checkpoint; SIGTERM saves once and exits with code 0.

Multi-host: the same command runs on every host; the ``GIFTJAX_*`` environment variables
(``giftjax.distributed``; the scripts in ``launch/`` set them) join the hosts into one job
before anything else touches JAX. A SIGTERM on any host stops every host after the same step,
with one checkpoint.
"""

from __future__ import annotations

import os
import sys

from giftjax import runtime


def _define_flags() -> runtime.RunFlags:
    return runtime.define_run_flags(
        config_help="Path to a config file (configs/*.py), optionally ':variant'.",
        workdir_help="Where metrics and checkpoints are written.",
    )


def main(flags: runtime.RunFlags) -> None:
    """Trains the run of ``--config`` in ``--workdir`` (resuming it) and prints the last step."""
    from giftjax import distributed

    try:
        distributed.initialize()  # before any other JAX call
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    from giftjax.train import loop
    from giftjax.train.config import ConfigError

    workdir = flags.workdir.value
    try:
        last = loop.train(flags.config.value, workdir)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if last:
        keys = [k for k in ("reward/mean", "loss", "eval/heldout/pass@1") if k in last]
        summary = ", ".join(f"{k} {last[k]:.4g}" for k in keys)
        print(f"step {last['step']}: {summary}")
    if distributed.process_index() == 0:  # only process 0 writes metrics.jsonl
        print(f"metrics: {os.path.join(workdir, 'metrics.jsonl')}")


def run() -> None:
    """Entry point (also used by ``python -m giftjax.main``)."""
    from absl import logging as absl_logging

    # orbax and grain log every checkpoint step at INFO through absl: keep the console for
    # the progress bar and warnings (--verbosity=0 brings them back).
    runtime.start_cli(main, _define_flags, absl_verbosity=absl_logging.WARNING)


if __name__ == "__main__":
    run()
