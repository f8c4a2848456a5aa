"""Shared machinery of the reproduction benchmarks (convergence.py, hybrid.py).

- :class:`Run` and :func:`run_all`: trainer runs as subprocesses of ``python -m
  giftjax.main``, ``--jobs N`` at a time, each pinned to its own share of the CPUs (Linux
  ``sched_setaffinity``: XLA's CPU thread pool is sized from the CPUs a process may use, and
  the pinning bounds it whatever the pool), with a learning-rate sweep on seed 0 followed by
  the other seeds at the chosen rate, one progress line per finished run.
- :func:`summarise_run`: the numbers of one run from its metrics.jsonl.
- :func:`aggregate`, :func:`compare`: mean and spread over seeds, and the reading rule of the
  README's "Results" section: a difference counts only when it exceeds the seed spread.
- :func:`plot_curves`, :func:`markdown_table`: PNG plots (mean and min-max band over seeds)
  and markdown tables.

This module imports neither jax nor the trainer: the runs are separate processes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: import giftjax from the checkout
    sys.path.insert(0, str(ROOT))

from giftjax import workdir as workdir_lib  # noqa: E402  (no jax import)
from giftjax.plot import moving_average  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results"
QUICK_OUT = ROOT / "benchmarks" / "out" / "quick"  # git-ignored: quick runs are not results
SMOOTH = 10  # moving-average window (steps) of the reward for thresholds and plots
FINAL_FRACTION = 0.1  # final training reward: mean over the last 10% of RL steps (>= 5)


@dataclasses.dataclass(frozen=True)
class Run:
    """One trainer run.

    Attributes:
      method: the method's name (a key of the script's method table).
      seed: ``config.seed`` (model init, data order, sampling).
      lr: ``config.optim.learning_rate``.
      phase: ``"sweep"`` (seed 0, one of the sweep's rates) or ``"seed"`` (another seed at the
        rate the sweep chose).
      overrides: ``config key -> value`` passed as ``--config.key=value``.
    """

    method: str
    seed: int
    lr: float
    phase: str
    overrides: tuple[tuple[str, Any], ...]

    @property
    def name(self) -> str:
        return f"{self.method}/lr{self.lr:g}/seed{self.seed}"

    def workdir(self, out: Path) -> Path:
        return out / "runs" / self.method / f"lr{self.lr:g}_seed{self.seed}"


def parser(
    doc: str,
    *,
    methods: Sequence[str],
    steps: int,
    lrs: Sequence[float],
    threshold: float,
    steps_help: str = "steps",
) -> argparse.ArgumentParser:
    """The options both benchmark scripts take (each adds its own)."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default benchmarks/results/; --quick: benchmarks/out/quick/)",
    )
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (each pinned to CPUs)")
    p.add_argument("--quick", action="store_true", help="1 seed, 1 rate, 20 steps")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3)")
    p.add_argument("--steps", type=int, default=None, help=f"{steps_help} (default {steps})")
    p.add_argument("--methods", nargs="+", default=list(methods), choices=list(methods))
    p.add_argument("--lrs", type=float, nargs="+", default=None, help=f"sweep (default {lrs})")
    p.add_argument("--threshold", type=float, default=threshold)
    return p


def fill_defaults(
    args: argparse.Namespace, *, steps: int, quick_steps: int, lrs: Sequence[float]
) -> None:
    """The defaults that depend on ``--quick``: output folder, seeds, steps, the rate sweep
    (the middle rate alone when quick) and the evaluation schedule."""
    args.out = args.out or (QUICK_OUT if args.quick else DEFAULT_OUT)
    args.seeds = args.seeds or (1 if args.quick else 3)
    args.steps = args.steps or (quick_steps if args.quick else steps)
    args.lrs = tuple(args.lrs or ((lrs[1],) if args.quick else lrs))
    args.eval_every = 0 if args.quick else 50
    args.eval_size = 16 if args.quick else 64


def _flag(key: str, value: Any) -> str:
    if isinstance(value, bool):
        value = "true" if value else "false"
    return f"--config.{key}={value}"


def common_overrides(args: Any, seed: int, lr: float) -> tuple[tuple[str, Any], ...]:
    """The overrides every run of a benchmark shares: seed, rate, length, evaluation, and
    quiet logging (no progress bar, TensorBoard or samples; one final checkpoint)."""
    return (
        ("seed", seed),
        ("optim.learning_rate", lr),
        ("train.steps", args.steps),
        ("train.warmup_sft_steps", args.warmup),
        ("eval.every", args.eval_every),
        ("data.eval_size", args.eval_size),
        ("checkpoint.every", args.steps + args.warmup),
        ("checkpoint.keep", 1),
        ("log.progress", False),
        ("log.tensorboard", False),
        ("log.samples", 0),
    )


def set_key(config: Any, key: str, value: Any) -> None:
    """``config.a.b.c = value`` for ``key = "a.b.c"`` (a ConfigDict)."""
    *path, field = key.split(".")
    node = config
    for part in path:
        node = node[part]
    node[field] = value


def child_env(threads: int) -> dict[str, str]:
    """The environment of a run: CPU only, one device (a parent's fake-device flag, e.g. the
    test suite's, is dropped), ``threads`` intra-op threads."""
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    env.setdefault("TPU_SKIP_MDS_QUERY", "1")
    flags = [
        f
        for f in env.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
    ]
    env["XLA_FLAGS"] = " ".join(flags)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def cpu_slots(jobs: int) -> list[list[int]]:
    """``jobs`` disjoint CPU sets splitting the CPUs this process may use (each >= 1 CPU;
    with more jobs than CPUs, sets are shared round-robin)."""
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}.")
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not cpus:
        return [[] for _ in range(jobs)]
    if jobs >= len(cpus):
        return [[cpus[i % len(cpus)]] for i in range(jobs)]
    share = len(cpus) // jobs
    return [cpus[i * share : (i + 1) * share] for i in range(jobs)]


def trainer_command(config: str, run: Run, workdir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "giftjax.main",
        f"--config={config}",
        f"--workdir={workdir}",
        *(_flag(k, v) for k, v in run.overrides),
    ]


def run_all(
    sweep: Sequence[Run],
    seeds_for: Callable[[str, float], list[Run]],
    *,
    config: str,
    out: Path,
    jobs: int,
    extra: Sequence[tuple[str, list[str], Path]] = (),
    summarise: Callable[[Path], dict[str, Any]],
    select: Callable[[list[dict[str, Any]]], float],
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Run the sweep, then each method's remaining seeds at its chosen learning rate.

    Args:
      sweep: the seed-0 runs, every method at every sweep rate.
      seeds_for: ``(method, chosen_lr) -> runs`` of the other seeds.
      config: the recipe passed as ``--config``.
      out: the output folder (runs go to ``out/runs/<method>/lr<lr>_seed<seed>``).
      jobs: runs at a time.
      extra: other jobs ``(name, argv, log_path)`` run in the same pool (e.g. a measurement).
      summarise: a finished run's workdir -> its numbers (:func:`summarise_run`).
      select: the sweep's seed-0 summaries of one method -> the chosen rate.

    Returns:
      ``(summaries, sweeps)``: one summary per trainer run (method, seed, lr, phase added),
      and per method the sweep's record ``{"lrs", "final_reward", "chosen"}``, both in the
      order of the methods in ``sweep``.

    Raises:
      RuntimeError: a run failed (its log's tail is printed); no seed is dropped silently.
    """
    slots = cpu_slots(jobs)
    free = list(range(jobs))
    pending: list[tuple[str, list[str], Path, Run | None]] = [
        (n, argv, log, None) for n, argv, log in extra
    ]
    pending += [
        (r.name, trainer_command(config, r, r.workdir(out)), r.workdir(out), r) for r in sweep
    ]
    methods = list(dict.fromkeys(r.method for r in sweep))
    n_sweep = {m: sum(r.method == m for r in sweep) for m in methods}
    expected = len(pending) + sum(len(seeds_for(m, 0.0)) for m in methods)
    print(
        f"{expected} runs in all ({len(sweep)} sweep runs on seed 0, "
        f"{expected - len(sweep) - len(extra)} runs of the other seeds, {len(extra)} "
        f"measurement job(s)); {jobs} at a time, CPUs per run: {len(slots[0]) or 'all'}",
        flush=True,
    )
    running: dict[int, tuple[subprocess.Popen, str, Path, Run | None, float, Any]] = {}
    done_sweep: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    summaries: list[dict[str, Any]] = []
    sweeps: dict[str, dict[str, Any]] = {}
    failures: list[str] = []
    finished = 0
    t_start = time.perf_counter()

    def start(slot: int, item) -> None:
        name, argv, path, run = item
        log_path = (path / "log.txt") if run is not None else path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = open(log_path, "w")  # closed when the run ends
        cpus = slots[slot]

        def pin() -> None:
            if cpus and hasattr(os, "sched_setaffinity"):
                os.sched_setaffinity(0, cpus)

        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=child_env(max(len(cpus), 1)),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=pin,
        )
        running[slot] = (proc, name, log_path, run, time.perf_counter(), log_file)

    while pending or running:
        while pending and free:
            start(free.pop(0), pending.pop(0))
        time.sleep(0.2)
        for slot in list(running):
            proc, name, log_path, run, t0, log_file = running[slot]
            if proc.poll() is None:
                continue
            log_file.close()
            del running[slot]
            free.append(slot)
            finished += 1
            seconds = time.perf_counter() - t0
            if proc.returncode != 0:
                tail = Path(log_path).read_text(errors="replace").splitlines()[-15:]
                print(
                    f"[{finished}/{expected}] FAILED {name} (exit {proc.returncode}):", flush=True
                )
                print("\n".join("    " + line for line in tail), flush=True)
                failures.append(name)
                continue
            if run is None:
                print(f"[{finished}/{expected}] {name}: done in {seconds:.0f} s", flush=True)
                continue
            s = summarise(run.workdir(out))
            s.update(method=run.method, seed=run.seed, lr=run.lr, phase=run.phase)
            summaries.append(s)
            print(
                f"[{finished}/{expected}] {name}: final reward {s['final_reward']:.3f}, "
                f"held-out pass@1 {s['heldout_pass1']:.3f}, {seconds:.0f} s",
                flush=True,
            )
            if run.phase == "sweep":
                done_sweep[run.method].append(s)
                if len(done_sweep[run.method]) == n_sweep[run.method]:
                    runs = sorted(done_sweep[run.method], key=lambda x: x["lr"])
                    chosen = select(runs)
                    sweeps[run.method] = {
                        "lrs": [x["lr"] for x in runs],
                        "final_reward": [x["final_reward"] for x in runs],
                        "chosen": chosen,
                    }
                    for r in seeds_for(run.method, chosen):
                        pending.append(
                            (r.name, trainer_command(config, r, r.workdir(out)), r.workdir(out), r)
                        )
    total = time.perf_counter() - t_start
    print(f"all runs finished in {total:.0f} s", flush=True)
    if failures:
        raise RuntimeError(f"{len(failures)} run(s) failed: {failures}; see their log.txt.")
    # Tables list the methods in the order given, not in the order their runs finished.
    order = {m: i for i, m in enumerate(methods)}
    summaries.sort(key=lambda s: (order[s["method"]], s["seed"], s["lr"]))
    return summaries, {m: sweeps[m] for m in methods}


def choose_lr(sweep_runs: list[dict[str, Any]]) -> float:
    """The sweep rate with the highest final *training* reward (never a held-out number);
    ties go to the smaller rate."""
    best = max(sweep_runs, key=lambda s: (round(s["final_reward"], 12), -s["lr"]))
    return float(best["lr"])


# --------------------------------------------------------------------------------------
# One run's numbers.
# --------------------------------------------------------------------------------------


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def first_crossing(values: np.ndarray, threshold: float) -> int | None:
    """Index of the first value >= threshold, or None."""
    hits = np.nonzero(values >= threshold)[0]
    return int(hits[0]) if hits.size else None


def summarise_run(workdir: Path, *, threshold: float, extra_keys: Iterable[str] = ()) -> dict:
    """The numbers of one finished run, from ``workdir/metrics.jsonl``.

    RL steps only (the SFT warm-up rows, ``phase/sft_warmup``, are the same for every method
    and left out); step 1 is the first RL step. ``wall`` is the cumulative ``time/step`` of the
    RL steps after the first (whose time is mostly compilation; ``first_step_s``).
    ``reward_smooth`` is the trailing ``SMOOTH``-step moving average of ``reward/mean``; the
    threshold is read on it.

    Returns a dict: ``steps``, ``reward``, ``reward_smooth``, ``wall`` (lists over RL steps),
    ``eval`` (``{key: [[step, value], ...]}``), ``final_reward`` (mean reward over the last
    ``FINAL_FRACTION`` of RL steps, at least 5), ``train_pass1``, ``heldout_pass1``,
    ``gap_pass1`` (train minus held-out, final evaluation), ``heldout_reward`` (mean greedy
    reward), ``steps_to_threshold`` / ``wall_to_threshold`` (None when never reached),
    ``time_step`` / ``time_update`` (medians, s), ``total_wall``, ``first_step_s`` (s), and
    the series of ``extra_keys``.
    """
    metrics = str(workdir / workdir_lib.METRICS)
    rows = [r for r in workdir_lib.read_jsonl(metrics, missing_ok=False) if "step" in r]
    rl = [r for r in rows if not r.get("phase/sft_warmup")]
    if not rl:
        raise ValueError(f"{workdir}: no RL step in metrics.jsonl.")
    first = rl[0]["step"] - 1
    steps = [r["step"] - first for r in rl]
    reward = np.array([r.get("reward/mean", float("nan")) for r in rl], np.float64)
    # The first RL step's time is mostly compilation (tens of seconds on a loaded CPU): it is
    # left out, so wall time measures the steps themselves.
    wall = np.cumsum([0.0] + [r.get("time/step", 0.0) for r in rl[1:]])
    smooth = moving_average(np.nan_to_num(reward), SMOOTH)
    k = max(5, round(FINAL_FRACTION * len(rl)))
    last = rows[-1]
    hit = first_crossing(smooth, threshold)
    evals: dict[str, list[list[float]]] = {}
    for r in rows:
        for key, v in r.items():
            if key.startswith("eval/") and _finite(v):
                evals.setdefault(key, []).append([r["step"] - first, float(v)])
    out = {
        "steps": steps,
        "reward": reward.tolist(),
        "reward_smooth": smooth.tolist(),
        "wall": wall.tolist(),
        "eval": evals,
        "final_reward": float(np.nanmean(reward[-k:])),
        "train_pass1": float(last.get("eval/train/pass@1", float("nan"))),
        "heldout_pass1": float(last.get("eval/heldout/pass@1", float("nan"))),
        "heldout_reward": float(last.get("eval/heldout/reward_mean", float("nan"))),
        "steps_to_threshold": None if hit is None else steps[hit],
        "wall_to_threshold": None if hit is None else float(wall[hit]),
        "time_step": float(np.median([r.get("time/step", np.nan) for r in rl])),
        "time_update": float(np.median([r.get("time/update", np.nan) for r in rl])),
        "total_wall": float(wall[-1]),
        "first_step_s": float(rl[0].get("time/step", float("nan"))),
    }
    out["gap_pass1"] = out["train_pass1"] - out["heldout_pass1"]
    for key in extra_keys:
        out[key] = [float(r.get(key, float("nan"))) for r in rl]
    return out


# --------------------------------------------------------------------------------------
# Over seeds.
# --------------------------------------------------------------------------------------


def stats(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (ddof=1; nan for one value), min, max and n."""
    x = np.asarray([v for v in values if _finite(v)], np.float64)
    if not x.size:
        return {
            "mean": float("nan"),
            "sd": float("nan"),
            "min": float("nan"),
            "max": float("nan"),
            "n": 0,
        }
    return {
        "mean": float(x.mean()),
        "sd": float(x.std(ddof=1)) if x.size > 1 else float("nan"),
        "min": float(x.min()),
        "max": float(x.max()),
        "n": int(x.size),
    }


def censored_steps(s: dict[str, Any], budget: int) -> float:
    """Steps to the threshold, or the budget when it was never reached (a lower bound)."""
    return float(budget if s["steps_to_threshold"] is None else s["steps_to_threshold"])


def aggregate(runs: list[dict[str, Any]], metrics: Mapping[str, Callable[[dict], float]]) -> dict:
    """Per method, :func:`stats` of each metric over the method's seed runs (the sweep's
    seed-0 run at the chosen rate and the other seeds)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == method]
        out[method] = {name: stats([fn(r) for r in mine]) for name, fn in metrics.items()}
    return out


def compare(a: dict[str, float], b: dict[str, float], *, higher_is_better: bool) -> str:
    """The plain reading of ``a`` against ``b`` (each a :func:`stats` dict).

    A difference counts only when ``|mean_a - mean_b|`` exceeds the seed spread, the larger
    of the two standard deviations over seeds; otherwise it is "no difference". With one
    seed there is no spread and no claim.
    """
    if a["n"] < 2 or b["n"] < 2:
        return "one seed: no spread, no claim"
    diff = a["mean"] - b["mean"]
    spread = max(a["sd"], b["sd"])
    if not math.isfinite(diff):
        return "not measured"
    if abs(diff) <= spread:
        return f"no difference (|diff| {abs(diff):.3g} <= spread {spread:.3g})"
    better = (diff > 0) == higher_is_better
    word = "better" if better else "worse"
    return f"{word} (diff {diff:+.3g}, spread {spread:.3g})"


def fmt(s: dict[str, float], digits: int = 3) -> str:
    """``mean ± sd`` (or the single value), for tables."""
    if s["n"] == 0:
        return "n/a"
    if s["n"] == 1 or not math.isfinite(s["sd"]):
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table; the first column is left-aligned, the others right-aligned."""
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Plots.
# --------------------------------------------------------------------------------------


def _new_figure(panels: int, width: float = 7.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, 2.8 * panels), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(panels, 1, squeeze=False)[:, 0]


def _band(ax, xs: list[np.ndarray], ys: list[np.ndarray], label: str) -> None:
    """Mean over seeds as a line, min-max over seeds as a band (runs cut to the shortest)."""
    n = min(len(y) for y in ys)
    x = np.mean([np.asarray(v[:n]) for v in xs], axis=0)
    y = np.asarray([np.asarray(v[:n]) for v in ys])
    marker = "o" if n <= 10 else None  # evaluation series have few points
    (line,) = ax.plot(
        x, y.mean(axis=0), label=f"{label} (n={len(ys)})", linewidth=1.2, marker=marker
    )
    if len(ys) > 1:
        ax.fill_between(x, y.min(axis=0), y.max(axis=0), color=line.get_color(), alpha=0.18)


def plot_curves(
    runs: list[dict[str, Any]],
    path: Path,
    *,
    panels: Sequence[tuple[str, str, str]],
    title: str,
) -> Path:
    """One PNG with a panel per ``(x_key, y_key, y_label)``, one curve per method.

    ``x_key`` is ``"steps"`` or ``"wall"``; ``y_key`` a per-step series of the summaries, or
    ``"eval:<key>"`` for an evaluation series. Each curve is the mean over the method's seeds
    with a min-max band.
    """
    fig, axes = _new_figure(len(panels))
    methods = list(dict.fromkeys(r["method"] for r in runs))
    for ax, (x_key, y_key, y_label) in zip(axes, panels, strict=True):
        for m in methods:
            mine = [r for r in runs if r["method"] == m]
            if y_key.startswith("eval:"):
                key = y_key[5:]
                series = [np.asarray(r["eval"].get(key, []), np.float64) for r in mine]
                if not all(len(s) for s in series):
                    continue
                _band(ax, [s[:, 0] for s in series], [s[:, 1] for s in series], m)
            else:
                if any(y_key not in r for r in mine):
                    continue
                _band(
                    ax,
                    [np.asarray(r[x_key]) for r in mine],
                    [np.asarray(r[y_key]) for r in mine],
                    m,
                )
        ax.set_xlabel(
            "RL step" if x_key == "steps" else "wall time of the RL steps after the first (s)"
        )
        ax.set_ylabel(y_label)
        ax.grid(alpha=0.3)
    axes[0].set_title(title, fontsize=9)
    axes[0].legend(fontsize=7, ncol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def plot_mu(runs: list[dict[str, Any]], path: Path, *, keys: Mapping[str, Sequence[str]]) -> Path:
    """One panel per method: the series ``keys[method]`` (e.g. ``gac/mu``, ``gac/mu_raw``,
    ``gac/prior``) against steps, mean and min-max band over seeds."""
    methods = list(dict.fromkeys(r["method"] for r in runs))
    fig, axes = _new_figure(len(methods))
    for ax, m in zip(axes, methods, strict=True):
        mine = [r for r in runs if r["method"] == m]
        for key in keys[m]:
            if all(key in r for r in mine):
                _band(
                    ax,
                    [np.asarray(r["steps"]) for r in mine],
                    [np.asarray(r[key]) for r in mine],
                    key,
                )
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("step (each the mean of its 4 updates)")
        ax.set_ylabel("SFT weight")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, allow_nan=True))


def header_lines(script: str, argv: Sequence[str]) -> list[str]:
    """Provenance: the command, the date, the machine."""
    import platform

    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return [
        f"Written by `python benchmarks/{script} {' '.join(argv)}`".rstrip() + f" on {stamp} "
        f"({platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}).",
    ]
