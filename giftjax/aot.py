"""Will it fit? ``python -m giftjax.aot --config=configs/X.py --topology=v5p:2x2x2``.

Compiles a recipe's device programs for a TPU topology on a machine without a TPU (libtpu
installed: ``pip install libtpu``), with the recipe's mesh built over the topology's devices,
and reports per chip what the compiler allocates against the chip's HBM:

- ``train``: one optimiser update (forward, backward, optimiser; micro-batched), the function
  the Trainer jits, with its in/out shardings and donated state;
- ``logps``: the pi_old / reference log-probs of the P*G rollout rows (when the algorithm
  needs them);
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

FLOPs per step: XLA's cost analysis counts a loop body once (the layer scan, the micro-batch
scan, the decode loop), so the compiled TPU programs undercount. The report's FLOPs are the
cost analysis of the same functions lowered with every scan unrolled (on the host CPU; the
micro-batches unrolled too; on 1- and 2-layer copies of the model, extrapolated to L
identical layers), the decode loop counted
``max_new_tokens - 1`` times (every row generating to the end, an upper bound):
``sampler + passes x logps + updates_per_rollout x train``.

    python -m giftjax.aot --config=configs/gsm8k_qwen2.5_7b_gift.py --topology=v5p:2x2x2
    python -m giftjax.aot --config=configs/math_qwen2.5_32b_gift.py --topology=v5p:4x4x4 \
        --json=/tmp/fit.json
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

# Chip HBM in GiB per chip (Google Cloud's TPU documentation: v4 32 GiB, v5e 16 GiB,
# v5p 95 GiB, v6e 32 GiB).
HBM_GIB = {"v4": 32.0, "v5e": 16.0, "v5p": 95.0, "v6e": 32.0}
HEADROOM = 0.10
GIB = 2**30


def set_environment() -> None:
    """libtpu on a machine without a TPU: JAX on the CPU, no TPU host or metadata lookups."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compiles need no exclusive TPU


def chip_hbm(topology: str) -> tuple[str, int]:
    """``(chip, HBM bytes per chip)`` of a topology name such as ``v5p:2x2x2``."""
    chip = topology.split(":", 1)[0].lower()
    if chip not in HBM_GIB:
        raise ValueError(
            f"--topology={topology!r}: unknown chip {chip!r}; known chips: {sorted(HBM_GIB)} "
            "(e.g. v5p:2x2x2, v5e:2x2, v6e:4x4, v4:2x2x1)."
        )
    return chip, int(HBM_GIB[chip] * GIB)


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


def topology_devices(topology: str) -> list[Any]:
    """The devices of a TPU topology (``jax.experimental.topologies``), compile-only."""
    from jax.experimental import topologies

    chip_hbm(topology)
    with quiet_libtpu():
        return list(topologies.get_topology_desc(platform="tpu", topology_name=topology).devices)


@dataclasses.dataclass
class ProgramReport:
    """Per-chip memory (bytes) and cost of one compiled program.

    Attributes:
      name: ``train``, ``logps`` or ``sampler``.
      compile_s: seconds to lower and compile for the topology.
      arguments, outputs, aliased, temporaries: ``memory_analysis()`` (temporaries: the peak
        less arguments and outputs, when that is larger than the reported temp size).
      program_peak: the compiler's peak of the program.
      resident: train state in HBM but not an argument (optimiser state, reference).
      peak: ``program_peak + resident``, what the chip holds at most while it runs.
      breakdown: named parts (parameters, optimizer_state, reference, gradients, kv_cache).
      flops: FLOPs of one call, all chips together (loops unrolled; see the module doc).
      calls_per_step: how many times an RL step runs it.
      error: the compiler's out-of-memory message when it refused the program (then
        ``temporaries`` is what it said it needed and ``arguments`` come from the shapes).
    """

    name: str
    compile_s: float
    arguments: int
    outputs: int
    aliased: int
    temporaries: int
    program_peak: int
    resident: int
    peak: int
    breakdown: dict[str, int]
    flops: float | None
    calls_per_step: int
    error: str = ""


@dataclasses.dataclass
class Report:
    """The fit report of one recipe on one topology (bytes are per chip)."""

    config: str
    topology: str
    chips: int
    mesh: dict[str, int]
    hbm: int
    headroom: float
    programs: list[ProgramReport]
    flops_per_step: float | None
    fits: bool
    advice: list[str]

    @property
    def peak(self) -> int:
        return max(p.peak for p in self.programs)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["peak"] = self.peak
        return out


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


def _advice(config, report_programs: list[ProgramReport], budget: int, mesh) -> list[str]:
    """What to change, per program that does not leave the headroom."""
    from giftjax.train.plan import RunPlan

    c = config
    r = c.rollout
    plan = RunPlan.from_config(c, math.prod(mesh.values()))
    ways = plan.data_ways
    tp, m = c.data.max_prompt_len, r.max_new_tokens
    out: list[str] = []
    for p in report_programs:
        if p.peak <= budget:
            continue
        where = f"{p.name}: peak {p.peak / GIB:.1f} GiB per chip > {budget / GIB:.1f} GiB"
        if p.resident + p.breakdown.get("parameters", 0) > budget:
            out.append(
                f"{where}; the train state alone does not fit: more chips (a larger topology; "
                "mesh.fsdp=-1 shards parameters and optimiser state over all of them)"
                + (", or algo.reference='old' (no frozen copy)" if p.breakdown["reference"] else "")
            )
            continue
        if p.name == "train":
            groups = plan.prompts // plan.updates_per_step
            rows = plan.rows_per_update[0]
            k = c.train.micro_batches
            larger = [
                d for d in range(k + 1, groups + 1) if groups % d == 0 and (rows // d) % ways == 0
            ]
            tips = []
            if larger:
                tips.append(f"train.micro_batches={larger[0]} (now {k}: {rows // k} rows each)")
            if c.model.remat != "full":
                tips.append(f"model.remat='full' (now {c.model.remat!r})")
            tips.append(f"shorter rows: data.max_prompt_len + rollout.max_new_tokens = {tp + m}")
        elif p.name == "sampler":
            kv = p.breakdown.get("kv_cache", 0) / GIB
            tips = [
                f"cache length data.max_prompt_len + rollout.max_new_tokens = {tp + m} "
                f"(KV cache {kv:.1f} GiB per chip)",
                f"rollout batch rollout.prompts_per_step x rollout.group_size = "
                f"{r.prompts_per_step * r.group_size} rows",
            ]
        else:
            tips = [
                f"rollout batch rollout.prompts_per_step x rollout.group_size = "
                f"{r.prompts_per_step * r.group_size} rows",
                f"data.max_prompt_len + rollout.max_new_tokens = {tp + m}",
            ]
        if mesh["tensor"] == 1:
            tips.append("mesh.tensor=2 or 4 with mesh.rules='fsdp_tp' (splits heads, MLP, vocab)")
        tips.append("more chips (a larger topology)")
        out.append(f"{where}; change: " + "; ".join(tips))
    return out


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


def assess(report: Report, config, *, headroom: float = HEADROOM) -> Report:
    """The report's verdict for ``headroom``: ``fits`` when every program's peak is at most
    ``(1 - headroom) x HBM``, else ``advice`` names the settings to change per program."""
    if not 0.0 <= headroom < 1.0:
        raise ValueError(f"headroom={headroom!r} must be in [0, 1).")
    budget = int((1.0 - headroom) * report.hbm)
    return dataclasses.replace(
        report,
        headroom=headroom,
        fits=all(p.peak <= budget for p in report.programs),
        advice=_advice(config, report.programs, budget, report.mesh),
    )


def format_report(report: Report) -> str:
    """The report as text: one row per program, the verdict, and what to change."""
    hbm = report.hbm / GIB
    lines = [
        f"{report.config or 'config'} on {report.topology}: {report.chips} chips, mesh "
        f"{report.mesh}, HBM {hbm:.0f} GiB per chip",
        "",
        f"{'GiB per chip':<14}" + "".join(f"{p.name:>10}" for p in report.programs),
    ]
    keys = ["parameters", "optimizer_state", "reference", "gradients", "kv_cache"]
    rows = [(k, [p.breakdown.get(k) for p in report.programs]) for k in keys]
    rows += [
        ("temporaries", [p.temporaries for p in report.programs]),
        ("arguments", [p.arguments for p in report.programs]),
        ("not in args", [p.resident for p in report.programs]),
        ("peak", [p.peak for p in report.programs]),
    ]
    for label, values in rows:
        if all(not v for v in values):
            continue
        cells = "".join(f"{'-' if v is None else f'{v / GIB:.2f}':>10}" for v in values)
        lines.append(f"{label:<14}{cells}")
    lines.append(
        f"{'% of HBM':<14}"
        + "".join(f"{100 * p.peak / report.hbm:>9.0f}%" for p in report.programs)
    )
    lines.append(f"{'compile s':<14}" + "".join(f"{p.compile_s:>10.1f}" for p in report.programs))
    if report.flops_per_step is not None:
        lines.append(
            f"{'TFLOPs/call':<14}" + "".join(f"{p.flops / 1e12:>10.1f}" for p in report.programs)
        )
        lines.append(
            f"{'calls/step':<14}" + "".join(f"{p.calls_per_step:>10}" for p in report.programs)
        )
        lines.append(
            f"\nFLOPs per RL step: {report.flops_per_step / 1e12:.1f} TFLOPs "
            f"({report.flops_per_step / report.chips / 1e12:.1f} per chip)"
        )
    for p in report.programs:
        if p.error:
            lines.append(f"\n{p.name}: the compiler ran out of HBM: {p.error}")
    free = 100 * (1 - report.peak / report.hbm)
    if report.fits:
        lines.append(
            f"\nFITS: peak {report.peak / GIB:.1f} GiB of {hbm:.0f} GiB per chip "
            f"({free:.0f}% free, >= {100 * report.headroom:.0f}% asked)."
        )
    else:
        verdict = "DOES NOT FIT" if report.peak > report.hbm else "TOO TIGHT"
        lines.append(
            f"\n{verdict}: peak {report.peak / GIB:.1f} GiB of {hbm:.0f} GiB per chip "
            f"({free:.0f}% free; {100 * report.headroom:.0f}% headroom asked)."
        )
        lines += [f"  - {a}" for a in report.advice]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    from absl import app
    from absl import flags as absl_flags
    from ml_collections import config_flags

    from giftjax.train.config import ConfigError

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    flags = _FLAGS
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


_FLAGS: dict[str, Any] = {}


def _define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags

    _FLAGS["config"] = config_flags.DEFINE_config_file(
        "config", None, "Path to a recipe (configs/*.py), optionally ':variant'.", lock_config=True
    )
    _FLAGS["topology"] = flags.DEFINE_string(
        "topology", None, "TPU topology, e.g. v5p:2x2x2 (8 chips), v5p:4x4x4, v5e:2x2, v6e:4x4."
    )
    _FLAGS["headroom"] = flags.DEFINE_float(
        "headroom", HEADROOM, "Fraction of HBM that must stay free for a recipe to fit."
    )
    _FLAGS["flops"] = flags.DEFINE_boolean(
        "flops", True, "Count FLOPs per step (lowers the programs again with loops unrolled)."
    )
    _FLAGS["json"] = flags.DEFINE_string("json", None, "Also write the report to this JSON file.")
    flags.mark_flags_as_required(["config", "topology"])


def run() -> None:
    """Entry point of ``python -m giftjax.aot``; exits 1 when the recipe does not fit."""
    from absl import app

    set_environment()
    _define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
