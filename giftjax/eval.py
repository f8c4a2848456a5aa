"""Evaluate one checkpoint: ``python -m giftjax.eval --config=configs/NAME.py --workdir=DIR``.

Builds the run's parts as the trainer does ([`Trainer`][giftjax.train.loop.Trainer], opened
read-only), restores checkpoint ``--step`` (default: the newest), runs
`giftjax.train.evaluate.evaluate` with the key the training loop uses at that step
(``fold_in(fold_in(base_key, step), 1)``), prints the ``eval/...`` metrics as a table and
writes them to ``DIR/eval_step_N.json``. The numbers therefore equal the ``eval/...`` row the
run logged at that step (when it evaluated there), and two evaluations of the same step agree.

Nothing of the run is modified (metrics.jsonl, config.json, checkpoints). The config must be
the run's own; it may differ only in keys that leave the trained weights alone
(``giftjax.train.run_config.EVAL_KEYS``: ``eval.*``, ``data.eval_size``, ``log.*``,
``train.steps``, ``checkpoint.keep``), e.g. ``--config.data.eval_size=500``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping

from giftjax import runtime
from giftjax import workdir as workdir_lib


def output_path(workdir: str, step: int) -> str:
    """Where the metrics of ``step`` are written: ``WORKDIR/eval_step_<step>.json``."""
    return workdir_lib.eval_path(workdir, step)


def format_table(step: int, metrics: Mapping[str, float]) -> str:
    """The metrics as a two-column text table, keys sorted, values to 4 significant digits."""
    if not metrics:
        return (
            f"step {step}: no evaluation split (set data.eval_path, data.tfds_eval_split, "
            "or data.eval_size > 0)"
        )
    width = max(len(k) for k in metrics)
    lines = [f"{'step':<{width}}  {step}"]
    lines += [f"{k:<{width}}  {metrics[k]:.4g}" for k in sorted(metrics)]
    return "\n".join(lines)


def evaluate_checkpoint(config, workdir: str, step: int | None = None) -> tuple[int, dict]:
    """Evaluates checkpoint ``step`` of the run in ``workdir`` (None: the newest).

    Returns:
      ``(step, metrics)`` with the ``eval/...`` metrics; also written to
      `output_path` (by process 0).

    Raises:
      FileNotFoundError: ``workdir`` holds no config.json or no finished checkpoint, or none
        for ``step`` (the message lists the finished steps).
      ValueError: the config differs from the run's in a key outside ``EVAL_KEYS``.
    """
    import jax

    from giftjax.train import checkpoint, loop

    step = checkpoint.resolve_step(workdir, step)
    trainer = loop.Trainer(config, workdir, read_only=True)
    try:
        trainer.restore(step)
        metrics = trainer.evaluate(step)
    finally:
        trainer.close()
    if jax.process_index() == 0:
        path = output_path(workdir, step)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"step": step, **metrics}, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    return step, metrics


def _define_flags() -> runtime.RunFlags:
    return runtime.define_run_flags(step_help="The checkpoint step to evaluate (default: newest).")


def main(flags: runtime.RunFlags) -> None:
    """Evaluates ``--step`` of the run in ``--workdir`` and prints the metrics table."""
    from giftjax.train.config import ConfigError

    workdir = flags.workdir.value
    try:
        step, metrics = evaluate_checkpoint(flags.config.value, workdir, flags.step.value)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(format_table(step, metrics))
    print(f"written: {output_path(workdir, step)}")


def run() -> None:
    """Entry point (also used by ``python -m giftjax.eval``)."""
    from absl import logging as absl_logging

    # orbax warns about every read-only open of a checkpoint folder: absl's errors only.
    runtime.start_cli(main, _define_flags, absl_verbosity=absl_logging.ERROR)


if __name__ == "__main__":
    run()
