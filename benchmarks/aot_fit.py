"""The "Will it fit?" table: every production recipe compiled for its TPU topology.

Runs ``giftjax.aot.check`` (the same code as ``python -m giftjax.aot``) on each recipe and
its target topology, one recipe per subprocess (a compile holds gigabytes), and writes
``benchmarks/results/aot_fit.md`` and a JSON file of the full reports.

    python benchmarks/aot_fit.py
    python benchmarks/aot_fit.py --only gsm8k_qwen2.5_7b_gift --out /tmp/aot_fit.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30

# recipe -> the topology its docstring targets.
RECIPES = {
    "gsm8k_qwen2.5_0.5b_gift": "v5e:2x4",
    "gsm8k_qwen2.5_7b_gift": "v5p:2x2x2",
    "math_qwen2.5_7b_gift": "v5p:2x2x2",
    "math_qwen2.5_32b_gift": "v5p:4x4x4",
    "gsm8k_llama3.1_8b_grpo": "v5p:2x2x2",
    "math_qwen3_8b_hybrid_gac": "v5p:2x2x2",
}


def run_one(recipe: str, topology: str, json_path: Path) -> dict:
    """``python -m giftjax.aot`` in a subprocess; returns its JSON report."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [
        sys.executable,
        "-m",
        "giftjax.aot",
        f"--config=configs/{recipe}.py",
        f"--topology={topology}",
        f"--json={json_path}",
    ]
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    print(out.stdout, flush=True)
    if out.returncode not in (0, 1):  # 1: ran, does not fit (the table says so)
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-4000:]}")
    report = json.loads(json_path.read_text())
    report["wall_s"] = time.perf_counter() - start
    return report


def _cell(peaks: dict[str, float], name: str) -> str:
    return f"{peaks[name]:.1f}" if name in peaks else "-"


def table(reports: list[dict]) -> str:
    head = (
        "| recipe | topology (chips) | mesh | train peak | logps peak | sampler peak | HBM "
        "| fits (>= 10% free) | TFLOPs / step | compile s |\n"
        "|---|---|---|---:|---:|---:|---:|---|---:|---:|\n"
    )
    rows = []
    for r in reports:
        peaks = {p["name"]: p["peak"] / GIB for p in r["programs"]}
        mesh = "x".join(str(r["mesh"][a]) for a in ("data", "fsdp", "tensor"))
        compile_s = sum(p["compile_s"] for p in r["programs"])
        free = 100 * (1 - r["peak"] / r["hbm"])
        rows.append(
            f"| {r['config']} | {r['topology']} ({r['chips']}) | {mesh} | {_cell(peaks, 'train')} "
            f"| {_cell(peaks, 'logps')} | {_cell(peaks, 'sampler')} | {r['hbm'] / GIB:.0f} "
            f"| {'yes' if r['fits'] else 'NO'} ({free:.0f}% free) "
            f"| {r['flops_per_step'] / 1e12:,.0f} | {compile_s:.0f} |"
        )
    return head + "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", default=None, help="recipe names (default: all)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/aot_fit.md"))
    args = parser.parse_args()
    names = args.only or list(RECIPES)
    unknown = sorted(set(names) - set(RECIPES))
    if unknown:
        parser.error(f"unknown recipes {unknown}; known: {sorted(RECIPES)}")
    out = Path(args.out)
    reports = []
    for name in names:
        reports.append(run_one(name, RECIPES[name], out.with_suffix(f".{name}.json")))
    import jax

    text = (
        "# Will it fit? Ahead-of-time HBM check of the recipes\n\n"
        "Written by `python benchmarks/aot_fit.py` (each row is `python -m giftjax.aot "
        "--config=configs/<recipe>.py --topology=<topology>`), compiled through libtpu on "
        f"a CPU host ({platform.machine()}, {os.cpu_count()} cores; jax {jax.__version__}). "
        "Peaks are GiB per chip: the compiler's peak of each program plus the train state it "
        "does not take as an argument (the optimiser state while sampling). TFLOPs per RL "
        "step, all chips: sampler (every row to max_new_tokens, an upper bound) + pi_old "
        "log-probs + updates_per_rollout updates, from XLA's cost analysis with the loops "
        "unrolled. Compile s: the three programs, on this (shared, loaded) host.\n\n"
        + table(reports)
    )
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(reports, indent=2) + "\n")
    for name in names:
        out.with_suffix(f".{name}.json").unlink(missing_ok=True)
    print(text)


if __name__ == "__main__":
    main()
