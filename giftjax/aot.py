"""Will it fit? ``python -m giftjax.aot --config=configs/X.py --topology=v5p:2x2x2``.

Compiles a recipe's device programs for a TPU topology on a machine without a TPU (libtpu
installed: ``pip install libtpu``), with the recipe's mesh built over the topology's devices,
and reports per chip what the compiler allocates against the chip's HBM:

- ``train``: one optimiser update (forward, backward, optimiser; micro-batched), the function
  the Trainer jits, with its in/out shardings and donated state;
- ``logps``: the pi_old / reference log-probs of the P*G rollout rows (DPO: the reference's
  of the P pairs), when the run plan has such a pass;
- ``sampler``: ``sampling.generate`` for P prompts x G samples, prefill and decode with a KV
  cache of ``data.max_prompt_len + rollout.max_new_tokens`` slots.

Memory per chip (from ``compiled.memory_analysis()``): a program's peak is the compiler's
peak of its arguments, outputs and temporaries, plus the train state it does not take as an
argument but which stays in HBM while it runs (the optimiser state and the reference weights
while sampling). The breakdown names parameters, optimiser state, the reference copy, the
float32 gradient accumulator and the KV cache (computed from the shapes and shardings; both
are part of the compiler's temporaries). A recipe fits when every program's peak leaves
``--headroom`` (10%) of the HBM free; otherwise the report says so and names the settings to
change (mesh, micro-batches, remat, cache length, rollout batch).

FLOPs per step (`giftjax.train.flops`): the cost analysis of the same functions lowered
with every loop unrolled on the host CPU, ``sampler + logps_calls x logps + updates_per_step x
train`` as the run plan counts the calls. The programs and their calls come from the run plan
the Trainer follows (`giftjax.train.plan.RunPlan`); the report itself is
`giftjax.aot_report`'s.

    python -m giftjax.aot --config=configs/gsm8k_qwen2.5_7b_gift.py --topology=v5p:2x2x2
    python -m giftjax.aot --config=configs/math_qwen2.5_32b_gift.py --topology=v5p:4x4x4 \
        --json=/tmp/fit.json
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from typing import Any

from giftjax import runtime
from giftjax.aot_report import (  # jax-free
    GIB,
    HEADROOM,
    ProgramReport,
    Report,
    assess,
    format_report,
)
from giftjax.runtime import quiet_libtpu

# Chip HBM in GiB per chip (Google Cloud's TPU documentation: v4 32 GiB, v5e 16 GiB,
# v5p 95 GiB, v6e 32 GiB).
HBM_GIB = {"v4": 32.0, "v5e": 16.0, "v5p": 95.0, "v6e": 32.0}


def chip_hbm(topology: str) -> tuple[str, int]:
    """``(chip, HBM bytes per chip)`` of a topology name such as ``v5p:2x2x2``."""
    chip = topology.split(":", 1)[0].lower()
    if chip not in HBM_GIB:
        raise ValueError(
            f"--topology={topology!r}: unknown chip {chip!r}; known chips: {sorted(HBM_GIB)} "
            "(e.g. v5p:2x2x2, v5e:2x2, v6e:4x4, v4:2x2x1)."
        )
    return chip, int(HBM_GIB[chip] * GIB)


def topology_devices(topology: str) -> list[Any]:
    """The devices of a TPU topology (``jax.experimental.topologies``), compile-only."""
    from jax.experimental import topologies

    chip_hbm(topology)
    with quiet_libtpu():
        return list(topologies.get_topology_desc(platform="tpu", topology_name=topology).devices)


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def temporaries_needed(message: str) -> int | None:
    """Bytes of HLO temporaries in the TPU compiler's out-of-memory message ("... the total
    memory required for HLO temporaries (40.65G) exceeds available HBM (15.75G)"), else None."""
    match = re.search(r"HLO temporaries \(([\d.]+)\s*([KMGT]?)i?B?\)", message)
    if "RESOURCE_EXHAUSTED" not in message or match is None:
        return None
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def _progress(message: str) -> None:
    """A progress line on stderr (compiles of 7B+ models take minutes)."""
    print(message, file=sys.stderr, flush=True)


def _memory(compiled) -> tuple[int, int, int, int, int]:
    m = compiled.memory_analysis()
    args, outs, alias = m.argument_size_in_bytes, m.output_size_in_bytes, m.alias_size_in_bytes
    peak = m.peak_memory_in_bytes or args + outs - alias + m.temp_size_in_bytes
    temps = max(m.temp_size_in_bytes, peak - args - outs + alias)
    return args, outs, alias, temps, peak


def check(
    config,
    topology: str,
    *,
    headroom: float = HEADROOM,
    flops: bool = True,
    name: str = "",
) -> Report:
    """Compiles ``config``'s programs for ``topology`` and reports per-chip memory and fit.

    Args:
      config: a recipe (a ConfigDict as ``configs/*.py`` return it, overrides applied).
      topology: a TPU topology name, e.g. ``v5p:2x2x2`` (8 chips), ``v5e:2x2``.
      headroom: the fraction of HBM that must stay free (0.10: a peak <= 90% of HBM fits).
      flops: also count FLOPs per step (lowering with unrolled loops; seconds to minutes).
      name: the config's name for the report.

    Returns:
      The Report; ``fits`` is False when a program's peak exceeds ``(1 - headroom) x HBM``.
    """
    import jax

    from giftjax import sharding as sharding_lib
    from giftjax.models import lora as lora_lib
    from giftjax.train import config as config_lib
    from giftjax.train import flops as flops_lib
    from giftjax.train import programs

    if not 0.0 <= headroom < 1.0:
        raise ValueError(f"headroom={headroom!r} must be in [0, 1).")
    _, hbm = chip_hbm(topology)
    devices = topology_devices(topology)
    sizes = config_lib.mesh_shape(config, len(devices))
    mesh = sharding_lib.make_mesh(sizes, devices=devices)
    progs = programs.programs(config, mesh)
    ctx, state = programs.abstract_run(config, mesh)
    parts = {
        "parameters": programs.per_device_bytes(state.params),
        "optimizer_state": programs.per_device_bytes(state.opt_state),
        "reference": programs.per_device_bytes(state.ref_params),
    }
    # Gradients of what trains: every weight, or with LoRA the adapters alone.
    trainable, _ = lora_lib.split_trainable(state.params, ctx.plan.lora)
    f32_grads = sum(
        4 * math.prod(x.sharding.shard_shape(x.shape)) for x in jax.tree.leaves(trainable)
    )
    calls = {"train": ctx.plan.updates_per_step, "logps": ctx.plan.logps_calls}
    if flops:
        _progress(f"counting FLOPs ({', '.join(p.name for p in progs)}, loops unrolled) ...")
    costs = flops_lib.count_flops(config) if flops else {}
    reports = []
    for p in progs:
        _progress(f"compiling {p.name} for {topology} ({len(devices)} chips) ...")
        start = time.perf_counter()
        error = ""
        try:
            with quiet_libtpu():
                compiled = p.fn.lower(*p.args).compile()
            args, outs, alias, temps, peak = _memory(compiled)
        except jax.errors.JaxRuntimeError as e:
            # The TPU compiler refuses a program whose temporaries exceed the chip's HBM and
            # says how much it needed: that is the answer, not a failure of the check.
            needed = temporaries_needed(str(e))
            if needed is None:
                raise
            error = str(e).splitlines()[0]
            args, outs, alias = programs.per_device_bytes(p.args), 0, 0
            temps, peak = needed, args + needed
        seconds = time.perf_counter() - start
        breakdown = dict(parts)
        if p.name == "train":
            breakdown["gradients"] = f32_grads
        if p.name == "sampler":
            breakdown["kv_cache"] = programs.kv_cache_bytes(config, mesh)
        reports.append(
            ProgramReport(
                name=p.name,
                compile_s=seconds,
                arguments=args,
                outputs=outs,
                aliased=alias,
                temporaries=temps,
                program_peak=peak,
                resident=p.resident,
                peak=peak + p.resident,
                breakdown=breakdown,
                flops=costs.get(p.name),
                calls_per_step=calls.get(p.name, 1),
                error=error,
            )
        )
    total = sum(p.flops * p.calls_per_step for p in reports) if flops else None
    report = Report(
        config=name,
        topology=topology,
        chips=len(devices),
        mesh=dict(sizes),
        hbm=hbm,
        headroom=headroom,
        programs=reports,
        flops_per_step=total,
        fits=False,
        advice=[],
    )
    return assess(report, config, headroom=headroom)


def main(flags: dict[str, Any]) -> None:
    """Checks ``--config`` against ``--topology``, prints the report; exit 1 if it does not fit."""
    from absl import flags as absl_flags
    from ml_collections import config_flags

    from giftjax.train.config import ConfigError

    config = flags["config"].value
    try:
        report = check(
            config,
            flags["topology"].value,
            headroom=flags["headroom"].value,
            flops=flags["flops"].value,
            name=config_flags.get_config_filename(absl_flags.FLAGS["config"]),
        )
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(format_report(report))
    if flags["json"].value:
        with open(flags["json"].value, "w", encoding="utf-8") as f:
            json.dump(report.to_json(), f, indent=2)
            f.write("\n")
    sys.exit(0 if report.fits else 1)


def _define_flags() -> dict[str, Any]:
    from absl import flags
    from ml_collections import config_flags

    recipe = "Path to a recipe (configs/*.py), optionally ':variant'."
    defined = {
        "config": config_flags.DEFINE_config_file("config", None, recipe, lock_config=True),
        "topology": flags.DEFINE_string(
            "topology", None, "TPU topology, e.g. v5p:2x2x2 (8 chips), v5p:4x4x4, v5e:2x2, v6e:4x4."
        ),
        "headroom": flags.DEFINE_float(
            "headroom", HEADROOM, "Fraction of HBM that must stay free for a recipe to fit."
        ),
        "flops": flags.DEFINE_boolean(
            "flops", True, "Count FLOPs per step (lowers the programs again with loops unrolled)."
        ),
        "json": flags.DEFINE_string("json", None, "Also write the report to this JSON file."),
    }
    flags.mark_flags_as_required(["config", "topology"])
    return defined


def run() -> None:
    """Entry point of ``python -m giftjax.aot``; exits 1 when the recipe does not fit."""
    runtime.start_cli(main, _define_flags, compile_only=True)


if __name__ == "__main__":
    run()
