"""Reward, loss and GAC curves of a run, drawn from WORKDIR/metrics.jsonl to a PNG.

Command::

    python -m giftjax.plot WORKDIR [--out PATH] [--smooth N]

writes ``WORKDIR/reward.png`` (or PATH) and prints the path. Panels, x axis = step:
``reward/mean`` (with ``eval/*`` values as points), ``loss``, and ``gac/mu`` with ``gac/mu_raw``
and ``gac/prior`` when the run logged them (hybrid runs). Exit code 2 when metrics.jsonl is
missing or holds no rows.

This module imports neither jax nor the trainer, and draws through matplotlib's Agg canvas
without pyplot, so it runs on a machine with no display and leaves an interactive session's
backend alone.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from giftjax import workdir as workdir_lib

__all__ = ["load_metrics", "main", "moving_average", "plot_metrics"]

METRICS_FILE = workdir_lib.METRICS
DEFAULT_OUT = "reward.png"


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


def _series(rows: Sequence[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the rows holding a finite number under ``key``."""
    pairs = [
        (r["step"], float(r[key]))
        for r in rows
        if isinstance(r.get(key), (int, float)) and math.isfinite(r[key]) and "step" in r
    ]
    steps, values = zip(*pairs, strict=True) if pairs else ((), ())
    return np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)


def _draw_line(ax: Any, rows: Sequence[dict[str, Any]], key: str, window: int) -> bool:
    steps, values = _series(rows, key)
    if not len(steps):
        return False
    if window > 1:
        (raw,) = ax.plot(steps, values, alpha=0.3, linewidth=0.8)
        ax.plot(
            steps,
            moving_average(values, window),
            color=raw.get_color(),
            label=f"{key} (avg {window})",
        )
    else:
        ax.plot(steps, values, label=key)
    return True


def plot_metrics(rows: Sequence[dict[str, Any]], out: str, *, smooth: int = 1) -> str:
    """Draw reward, loss and (if logged) GAC panels from metrics rows to an image file.

    Args:
      rows: dicts with ``step`` and metric keys, as in metrics.jsonl. Non-finite values are
        left out of the curves.
      out: the image path (format from its extension, e.g. ``.png``); folders are created.
      smooth: trailing moving-average window over logged points for the training curves
        (drawn over the faint raw curve); 1 draws the raw values only. Eval points are never
        smoothed.

    Returns:
      ``out``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    window = smooth
    if window < 1:
        raise ValueError(f"smooth must be >= 1, got {window}.")
    keys = {k for r in rows for k in r}
    panels = ["reward", "loss"] + (["gac"] if "gac/mu" in keys else [])
    fig = Figure(figsize=(7, 2.6 * len(panels)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, panel in zip(axes, panels, strict=True):
        if panel == "reward":
            drawn = _draw_line(ax, rows, "reward/mean", window)
            for key in sorted(k for k in keys if k.startswith("eval/")):
                steps, values = _series(rows, key)
                if len(steps):
                    ax.plot(steps, values, "o", markersize=4, label=key)
                    drawn = True
            ax.set_ylabel("reward")
        elif panel == "loss":
            drawn = _draw_line(ax, rows, "loss", window)
            ax.set_ylabel("loss")
        else:
            drawn = False
            for key in ("gac/mu", "gac/mu_raw", "gac/prior"):
                drawn |= _draw_line(ax, rows, key, 1)
            ax.set_ylabel("SFT weight mu")
        if drawn:
            ax.legend(fontsize="small", loc="best")
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    directory = os.path.dirname(os.path.abspath(out))
    os.makedirs(directory, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m giftjax.plot WORKDIR [--out PATH] [--smooth N]``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m giftjax.plot",
        description="Plot reward, loss and GAC curves from WORKDIR/metrics.jsonl.",
    )
    parser.add_argument("workdir", help="the run's directory (holds metrics.jsonl)")
    parser.add_argument("--out", help=f"image path (default: WORKDIR/{DEFAULT_OUT})")
    parser.add_argument(
        "--smooth", type=int, default=1, help="moving-average window in logged points (>= 1)"
    )
    args = parser.parse_args(argv)
    if args.smooth < 1:
        parser.error(f"--smooth must be >= 1, got {args.smooth}")
    try:
        rows = load_metrics(os.path.join(args.workdir, METRICS_FILE))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or os.path.join(args.workdir, DEFAULT_OUT)
    print(plot_metrics(rows, out, smooth=args.smooth))
    return 0


if __name__ == "__main__":
    sys.exit(main())
