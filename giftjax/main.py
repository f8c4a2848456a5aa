"""The command line: ``python -m giftjax.main --config=CONFIG.py --workdir=DIR``.

Parses flags, sets the JAX flags a run needs, and hands the config to the runner named
by ``config.mode``. Configs are loaded locked, so a misspelt override fails.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Path to a config file (configs/*.py), optionally ':variant'.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where metrics and checkpoints are written.")
flags.mark_flags_as_required(["config", "workdir"])

MODES = ("loss_demo",)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if config.mode not in MODES:
        raise ValueError(f"config.mode must be one of {MODES}, got {config.mode!r}.")
    os.makedirs(_WORKDIR.value, exist_ok=True)
    if config.mode == "loss_demo":
        from giftjax import demo

        demo.run(config, _WORKDIR.value)


def run() -> None:
    """Entry point (also used by ``python -m giftjax.main``)."""
    # libtpu, when installed on a CPU machine, probes for TPUs at start-up.
    if not any(a.startswith("--jax_platforms") for a in sys.argv):
        os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    app.run(main)


if __name__ == "__main__":
    run()
