"""Reward, loss, eval and GAC curves of a run, drawn from WORKDIR/metrics.jsonl to a PNG.

Command:

    ```
    python -m giftjax.plot WORKDIR [--out PATH] [--smooth N]
    ```

writes ``WORKDIR/reward.png`` (or PATH) and prints the path. Panels, x axis = step, each with
its legend to the right of the curves:

- ``reward``: the sampled responses' ``reward/mean``;
- ``loss``: one curve per objective: the SFT warm-up steps (rows with ``phase/sft_warmup``),
  the run's algorithm (``algo.name`` from ``WORKDIR/config.json``), and in hybrid runs the
  branches' ``loss/sft`` and ``loss/rl`` beside the mixed ``loss``;
- ``eval``: every ``eval/...`` metric, one point per eval step;
- ``gac``: ``gac/mu`` with ``gac/mu_raw`` and ``gac/prior``, only when the run logged them
  (hybrid runs).

Exit code 2 when metrics.jsonl is missing or holds no rows.

This module imports neither jax nor the trainer, and draws through matplotlib's Agg canvas
without pyplot, so it runs on a machine with no display and leaves an interactive session's
backend alone.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from giftjax import workdir as workdir_lib

__all__ = ["load_metrics", "main", "moving_average", "plot_metrics"]

METRICS_FILE = workdir_lib.METRICS
CONFIG_FILE = workdir_lib.CONFIG_JSON
DEFAULT_OUT = "reward.png"
WARMUP_KEY = "phase/sft_warmup"  # set on the rows of SFT warm-up steps
PANEL_HEIGHT = 2.6  # inches per panel


def load_metrics(path: str) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl file, without a partial last line (a writer killed mid-line).

    Args:
      path: the file (``WORKDIR/metrics.jsonl``).

    Returns:
      The rows in file order.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: the file holds no complete row, or a line before the last is not JSON.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"no metrics file at {path} (has the run logged a step yet?)")
    rows = workdir_lib.read_jsonl(path)
    if not rows:
        raise ValueError(f"{path} holds no complete row yet.")
    return rows


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average: ``out[i] = mean(values[max(0, i - window + 1) : i + 1])``.

    Args:
      values: ``[N]`` finite values.
      window: points per average, >= 1 (1 returns the values).

    Returns:
      ``[N]`` float64.
    """
    if window < 1:
        raise ValueError(f"smoothing window must be >= 1, got {window}.")
    x = np.asarray(values, dtype=np.float64)
    csum = np.concatenate([[0.0], np.cumsum(x)])
    i = np.arange(len(x))
    lo = np.maximum(0, i - window + 1)
    return (csum[i + 1] - csum[lo]) / (i + 1 - lo)


def _series(
    rows: Sequence[dict[str, Any]], key: str, keep: Callable[[dict[str, Any]], bool] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the rows (those ``keep`` accepts) holding a finite number at ``key``."""
    pairs = [
        (r["step"], float(r[key]))
        for r in rows
        if isinstance(r.get(key), (int, float))
        and math.isfinite(r[key])
        and "step" in r
        and (keep is None or keep(r))
    ]
    steps, values = zip(*pairs, strict=True) if pairs else ((), ())
    return np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)


def _draw_line(
    ax: Any,
    rows: Sequence[dict[str, Any]],
    key: str,
    window: int,
    *,
    label: str | None = None,
    keep: Callable[[dict[str, Any]], bool] | None = None,
) -> bool:
    """One curve of ``key`` (faint raw values under their moving average when window > 1)."""
    steps, values = _series(rows, key, keep)
    if not len(steps):
        return False
    label = label or key
    if window > 1:
        (raw,) = ax.plot(steps, values, alpha=0.3, linewidth=0.8)
        smoothed = moving_average(values, window)
        ax.plot(steps, smoothed, color=raw.get_color(), label=f"{label} (avg {window})")
    else:
        ax.plot(steps, values, label=label)
    return True


def _loss_curves(
    ax: Any, rows: Sequence[dict[str, Any]], window: int, objective: str | None
) -> bool:
    """The loss panel: one curve per objective (SFT warm-up, the run's algorithm, branches)."""
    warmup = lambda r: WARMUP_KEY in r
    drawn = _draw_line(ax, rows, "loss", window, label="loss: sft warm-up", keep=warmup)
    name = f"loss: {objective}" if objective else "loss"
    drawn |= _draw_line(ax, rows, "loss", window, label=name, keep=lambda r: not warmup(r))
    for key in ("loss/sft", "loss/rl"):  # the branches of a hybrid step
        drawn |= _draw_line(ax, rows, key, window, label=f"{key} (branch)")
    return drawn


def _eval_points(ax: Any, rows: Sequence[dict[str, Any]], keys: set[str]) -> bool:
    """The eval panel: every ``eval/<split>/<metric>``, a marker per eval step; one colour per
    metric, one line style per split (solid for the first, dashed, dotted, ...)."""
    names = sorted(k[len("eval/") :] for k in keys if k.startswith("eval/"))
    splits = sorted({n.split("/", 1)[0] for n in names if "/" in n})
    metrics = sorted({n.split("/", 1)[-1] for n in names})
    styles = ("-", "--", ":", "-.")
    drawn = False
    for name in names:
        steps, values = _series(rows, f"eval/{name}")
        if not len(steps):
            continue
        split, metric = name.split("/", 1) if "/" in name else ("", name)
        style = styles[splits.index(split) % len(styles)] if split in splits else "-"
        color = f"C{metrics.index(metric) % 10}"
        ax.plot(steps, values, marker="o", linestyle=style, color=color, markersize=3,
                linewidth=1, label=name)  # fmt: skip
        drawn = True
    return drawn


def plot_metrics(
    rows: Sequence[dict[str, Any]], out: str, *, smooth: int = 1, objective: str | None = None
) -> str:
    """Draw the reward, loss, eval and (if logged) GAC panels of metrics rows to an image file.

    Args:
      rows: dicts with ``step`` and metric keys, as in metrics.jsonl. Non-finite values are
        left out of the curves.
      out: the image path (format from its extension, e.g. ``.png``); folders are created.
      smooth: trailing moving-average window over logged points for the training curves
        (drawn over the faint raw curve); 1 draws the raw values only. Eval points are never
        smoothed.
      objective: the name of the run's objective (``algo.name``), for the loss legend.

    Returns:
      ``out``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    window = smooth
    if window < 1:
        raise ValueError(f"smooth must be >= 1, got {window}.")
    keys = {k for r in rows for k in r}
    panels = ["reward", "loss", "eval"] + (["gac"] if "gac/mu" in keys else [])
    fig = Figure(figsize=(9, PANEL_HEIGHT * len(panels)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, panel in zip(axes, panels, strict=True):
        if panel == "reward":
            drawn = _draw_line(ax, rows, "reward/mean", window)
            ax.set_ylabel("reward (samples)")
        elif panel == "loss":
            drawn = _loss_curves(ax, rows, window, objective)
            ax.set_ylabel("loss")
        elif panel == "eval":
            drawn = _eval_points(ax, rows, keys)
            ax.set_ylabel("eval")
        else:
            drawn = False
            for key in ("gac/mu", "gac/mu_raw", "gac/prior"):
                drawn |= _draw_line(ax, rows, key, 1)
            ax.set_ylabel("SFT weight mu")
        if drawn:  # outside the axes, on the right: the curves stay uncovered
            ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    directory = os.path.dirname(os.path.abspath(out))
    os.makedirs(directory, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out


def _objective(workdir: str) -> str | None:
    """``algo.name`` from the run's config.json, or None when it cannot be read."""
    try:
        with open(os.path.join(workdir, CONFIG_FILE), encoding="utf-8") as f:
            name = json.load(f).get("algo", {}).get("name")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def _define_flags(values: Any) -> dict[str, Any]:
    from absl import flags

    return {
        "out": flags.DEFINE_string(
            "out", None, f"image path (default: WORKDIR/{DEFAULT_OUT})", flag_values=values
        ),
        "smooth": flags.DEFINE_integer(
            "smooth", 1, "moving-average window in logged points (>= 1)", lower_bound=1,
            flag_values=values,
        ),
    }  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m giftjax.plot WORKDIR [--out PATH] [--smooth N]``; returns the exit code."""
    from giftjax import runtime

    flags, (workdir,) = runtime.parse_flags(
        argv, _define_flags, prog="python -m giftjax.plot", usage="WORKDIR [--out PATH] "
        "[--smooth N]", num_args=1,
    )  # fmt: skip
    try:
        rows = load_metrics(os.path.join(workdir, METRICS_FILE))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = flags["out"].value or os.path.join(workdir, DEFAULT_OUT)
    smooth = flags["smooth"].value
    print(plot_metrics(rows, out, smooth=smooth, objective=_objective(workdir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
