"""The fit report of ``python -m giftjax.aot``: per-program memory, the verdict, the advice.

`giftjax.aot.check` compiles a recipe's programs and fills a `Report`;
`assess` judges it against a headroom and names the settings to change, and
`format_report` renders it as text. This module imports no jax (the CLI sets up libtpu's
environment before jax is first imported).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

__all__ = ["GIB", "HEADROOM", "ProgramReport", "Report", "assess", "format_report"]

HEADROOM = 0.10  # the fraction of HBM that must stay free for a recipe to fit
GIB = 2**30


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
