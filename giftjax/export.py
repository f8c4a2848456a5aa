"""Export a trained policy: ``python -m giftjax.export --config=configs/NAME.py --workdir=DIR``.

Opens the run as ``python -m giftjax.eval`` does ([`Trainer`][giftjax.train.loop.Trainer],
read-only, the same config and overrides), restores checkpoint ``--step`` (default: the newest)
and writes the policy as a Hugging Face checkpoint to ``--out`` (default ``DIR/hf``):
``config.json``, safetensors weights and the run's tokenizer, which transformers, vLLM and
giftjax itself (``--config.model.hf_path=OUT``) load. A LoRA run writes the merged weights
``W + (alpha / r) A B`` there, and its adapters alone, in the PEFT layout, to ``OUT/adapter``
(``peft.PeftModel.from_pretrained`` or ``giftjax.models.load_peft`` on the base checkpoint).

``--dtype=bfloat16`` halves the files (default: the parameter dtype, float32 in the CPU
recipes). Nothing of the run is modified. One process only: the parameters must fit the host.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

from giftjax import runtime

ADAPTER_DIR = "adapter"


def export_checkpoint(
    config, workdir: str, out: str | None = None, *, step: int | None = None, dtype: str = ""
) -> tuple[int, list[str]]:
    """Writes checkpoint ``step`` (None: the newest) of the run in ``workdir`` to ``out``
    (None: ``workdir/hf``) as a Hugging Face checkpoint, plus ``out/adapter`` (PEFT) for a LoRA
    run.

    Returns:
      ``(step, folders written)``.

    Raises:
      FileNotFoundError: no config.json or no finished checkpoint (for ``step``).
      ValueError: the config differs from the run's in a key outside ``EVAL_KEYS``, or several
        processes run (export from one host).
    """
    import jax
    from flax import nnx

    from giftjax import models
    from giftjax import workdir as workdir_lib
    from giftjax.train import checkpoint, loop

    if jax.process_count() > 1:
        raise ValueError(
            f"giftjax.export runs in one process ({jax.process_count()} here): the parameters "
            "are written from one host's memory."
        )
    step = checkpoint.resolve_step(workdir, step)
    out = out or os.path.join(workdir, workdir_lib.HF_DIR)
    trainer = loop.Trainer(config, workdir, read_only=True)
    try:
        trainer.restore(step)
        model = nnx.merge(trainer.graphdef, trainer.state.params)
        models.save_hf(model, out, dtype=dtype or None, tokenizer=trainer.tokenizer)
        written = [out]
        if trainer.lora:
            adapter = os.path.join(out, ADAPTER_DIR)
            base = config.model.hf_path or None
            models.save_peft(model, adapter, base_model_name_or_path=base)
            written.append(adapter)
    finally:
        trainer.close()
    return step, written


@dataclasses.dataclass(frozen=True)
class _Flags:
    run: runtime.RunFlags
    out: Any
    dtype: Any


def _define_flags() -> _Flags:
    from absl import flags

    run = runtime.define_run_flags(step_help="The checkpoint step to export (default: newest).")
    out = flags.DEFINE_string("out", None, "Output folder (default: WORKDIR/hf).")
    dtype = flags.DEFINE_enum(
        "dtype", "", ["", "float32", "bfloat16"], "Dtype of the written weights (default: params')."
    )
    return _Flags(run, out, dtype)


def main(flags: _Flags) -> None:
    """Exports ``--step`` of the run in ``--workdir`` and prints the folders written."""
    from giftjax.train.config import ConfigError

    try:
        step, written = export_checkpoint(
            flags.run.config.value,
            flags.run.workdir.value,
            flags.out.value,
            step=flags.run.step.value,
            dtype=flags.dtype.value,
        )
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    merged = " (the adapters merged into the weights)" if len(written) > 1 else ""
    print(f"step {step}: Hugging Face checkpoint{merged} written to {written[0]}")
    if len(written) > 1:
        print(f"step {step}: PEFT adapter written to {written[1]}")


def run() -> None:
    """Entry point (also used by ``python -m giftjax.export``)."""
    from absl import logging as absl_logging

    # orbax warns about every read-only open of a checkpoint folder: absl's errors only.
    runtime.start_cli(main, _define_flags, absl_verbosity=absl_logging.ERROR)


if __name__ == "__main__":
    run()
