"""The "Will it fit?" table: every production recipe compiled for its TPU topology.

Runs ``python -m giftjax.aot --config=configs/<recipe>.py --topology=<topology>
--json=<dir>/<recipe>.json`` for each recipe on its target topology, one subprocess each (a
compile holds gigabytes; ``--jobs`` run at once), and writes ``benchmarks/results/aot_fit.md``
and ``aot_fit.json`` (the full reports). ``--reuse`` reads a recipe's report from
``--json-dir`` when that command already wrote it there (a 32B compile takes many minutes on
a small host).

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


def command(recipe: str, topology: str, json_path: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "giftjax.aot",
        f"--config=configs/{recipe}.py",
        f"--topology={topology}",
        f"--json={json_path}",
    ]


def start(recipe: str, topology: str, json_path: Path) -> subprocess.Popen:
    """``python -m giftjax.aot ... --json=json_path`` in a subprocess."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.Popen(
        command(recipe, topology, json_path),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen, json_path: Path) -> dict:
    """Waits for ``proc``; its JSON report (exit status 1 means "does not fit": reported)."""
    stdout, stderr = proc.communicate()
    print(stdout, flush=True)
    if proc.returncode not in (0, 1) or not json_path.exists():
        raise RuntimeError(f"{' '.join(proc.args)} failed:\n{stderr[-4000:]}")
    return json.loads(json_path.read_text())


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
    parser.add_argument("--json-dir", default="/tmp/giftjax-aot-fit", help="per-recipe reports")
    parser.add_argument("--reuse", action="store_true", help="read reports already in json-dir")
    parser.add_argument("--jobs", type=int, default=1, help="compiles at once (memory!)")
    args = parser.parse_args()
    names = args.only or list(RECIPES)
    unknown = sorted(set(names) - set(RECIPES))
    if unknown:
        parser.error(f"unknown recipes {unknown}; known: {sorted(RECIPES)}")
    folder = Path(args.json_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {n: folder / f"{n}.json" for n in names}
    todo = [n for n in names if not (args.reuse and paths[n].exists())]
    running: dict[str, subprocess.Popen] = {}
    while todo or running:
        while todo and len(running) < max(args.jobs, 1):
            name = todo.pop(0)
            paths[name].unlink(missing_ok=True)
            running[name] = start(name, RECIPES[name], paths[name])
        name = next(iter(running))
        finish(running.pop(name), paths[name])
    reports = [json.loads(paths[n].read_text()) for n in names]
    import jax

    out = Path(args.out)
    text = (
        "# Will it fit? Ahead-of-time HBM check of the recipes\n\n"
        "Written by `python benchmarks/aot_fit.py`: each row is the report of `python -m "
        "giftjax.aot --config=configs/<recipe>.py --topology=<topology>`, compiled through "
        f"libtpu on a CPU host ({platform.machine()}, {os.cpu_count()} cores, shared and "
        f"loaded; jax {jax.__version__}). Peaks are GiB per chip: the compiler's peak of "
        "each program plus the train state it does not take as an argument (the optimiser "
        "state while sampling). TFLOPs per RL step, all chips: sampler (every row to "
        "max_new_tokens, an upper bound) + pi_old log-probs + updates_per_rollout updates, "
        "from XLA's cost analysis with the loops unrolled. Compile s: the three programs.\n\n"
        + table(reports)
    )
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(reports, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
