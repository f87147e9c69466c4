r"""Learning-curve PNGs from the rows of ``metrics.jsonl`` (see `flowgraph.train.progress`).

`plot_learning_curves` draws one run: train bits/dim per logging interval, validation and test
bits/dim at epoch ends (markers), and the learning rate on a second y axis. `plot_ablation`
draws several runs of one metric on one axes, as mean ± std bands over the seeds of a label.
The ``*_figure`` functions return the matplotlib `Figure` instead, to adjust or inspect. The
bits/dim axis leaves out values from the first 10% of steps when they are higher than the
rest, so that the early drop does not flatten the differences that matter later.

Missing columns (``val_bpd`` in older runs), ``None`` and non-finite values are skipped, not
plotted. Both functions write nothing and return ``None`` when there is nothing to draw, and
write atomically (a temporary file in the target folder, then `os.replace`), so a reader never
sees half a PNG. matplotlib is imported inside them and drawn through its Agg canvas directly:
no pyplot, no backend switch and no rcParams change in the caller's process.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ablation_figure", "learning_curves_figure", "plot_ablation", "plot_learning_curves",
           "read_metrics"]

Row = Mapping[str, Any]
EVAL_COLUMNS = ("val_bpd", "test_bpd")
LABELS = {"bpd": "train", "val_bpd": "validation", "test_bpd": "test"}
WARMUP_FRACTION = 0.1  # of the steps whose maxima the bits/dim axis may cut off


def read_metrics(out_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``out_dir/metrics.jsonl`` ([] when it is missing); a half-written or
    malformed line (a run killed mid-write) is skipped."""
    path = Path(out_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and _value(row, "step") is not None:
            rows.append(row)
    return rows


def _value(row: Row, key: str) -> float | None:
    v = row.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _series(rows: Sequence[Row], key: str,
            keep: Callable[[Row], bool] = lambda r: True) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the rows with a finite `key` and a step, sorted by step."""
    pts = sorted((s, v) for r in rows if keep(r)
                 for s, v in [(_value(r, "step"), _value(r, key))]
                 if s is not None and v is not None)
    return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])


def _is_interval(row: Row) -> bool:
    """A logging-interval row (epoch-end rows carry no throughput or gradient norm)."""
    return _value(row, "images_per_s") is not None or _value(row, "grad_norm") is not None


def _ylim(series: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """Bits/dim range of the non-empty `series`, ignoring the first steps' maxima."""
    steps = np.concatenate([s for s, _ in series])
    values = np.concatenate([v for _, v in series])
    late = values[steps >= WARMUP_FRACTION * steps.max()]  # steps count from 0
    # A diverged seed's ±std band must not flatten the rest: the top is the 98th percentile
    # of the later values, and bits/dim of discrete data is never below 0.
    lo = max(float(values.min()), 0.0)
    hi = float(np.percentile(late, 98) if late.size else values.max())
    pad = 0.05 * (hi - lo) if hi > lo else max(0.01, 0.01 * abs(hi))
    return lo - pad, hi + pad


def _figure() -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png")
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; this is a picture to share
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def learning_curves_figure(rows: Sequence[Row], title: str | None = None) -> Any | None:
    """The matplotlib `Figure` that `plot_learning_curves` writes (None: nothing to draw)."""
    train = _series(rows, "bpd", _is_interval)
    if train[0].size == 0:
        train = _series(rows, "bpd")
    evals = {k: _series(rows, k) for k in EVAL_COLUMNS}
    drawn = [(k, s) for k, s in [("bpd", train), *evals.items()] if s[0].size]
    if not drawn:
        return None
    fig, ax = _figure()
    colors = {"bpd": "tab:blue", "val_bpd": "tab:orange", "test_bpd": "tab:green"}
    for key, (steps, values) in drawn:
        last = f" (last {values[-1]:.4f})" if key != "bpd" else ""
        style = {"marker": "o", "markersize": 4} if key != "bpd" or steps.size == 1 else {}
        ax.plot(steps, values, color=colors[key], label=LABELS[key] + last,
                lw=1.0 if key == "bpd" else 1.5, **style)
    ax.set_ylim(*_ylim([s for _, s in drawn]))
    ax.set_xlabel("step")
    ax.set_ylabel("bits/dim")
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    lr_steps, lr = _series(rows, "lr")
    if lr.size:
        ax2 = ax.twinx()
        positive = lr > 0
        if positive.any() and lr[positive].max() > 10 * lr[positive].min():
            ax2.set_yscale("log")  # warmup and decay span decades
            lr_steps, lr = lr_steps[positive], lr[positive]
        ax2.plot(lr_steps, lr, color="tab:gray", lw=1.0, ls="--", label="learning rate")
        ax2.set_ylabel("learning rate")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="upper right", fontsize="small")
    if title:
        ax.set_title(title)
    return fig


def plot_learning_curves(rows: Sequence[Row], path: str | Path,
                         title: str | None = None) -> Path | None:
    """Write a PNG of one run's bits/dim and learning rate against step.

    Arguments:
        rows: metric dicts as in ``metrics.jsonl`` (`read_metrics`). Train bits/dim comes
            from the logging-interval rows (from the epoch-end rows if a run logged none);
            ``val_bpd`` and ``test_bpd`` from the rows that have them. The learning rate
            is on a log axis when it spans more than 10×.
        path: the PNG to write (folders are created).
        title: figure title; none by default.

    Returns:
        `path`, or ``None`` (and nothing written) when no row has a finite bits/dim.
    """
    fig = learning_curves_figure(rows, title)
    return None if fig is None else _save(fig, path)


def _band(runs: Sequence[tuple[np.ndarray, np.ndarray]]
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std across runs, on the union of their steps within the range all cover."""
    if len(runs) == 1:
        steps, values = runs[0]
        return steps, values, np.zeros_like(values)
    lo = max(s.min() for s, _ in runs)
    hi = min(s.max() for s, _ in runs)
    grid = np.unique(np.concatenate([s[(s >= lo) & (s <= hi)] for s, _ in runs]))
    if grid.size == 0:  # the runs' step ranges do not overlap
        return grid, grid, grid
    stacked = np.stack([np.interp(grid, s, v) for s, v in runs])
    return grid, stacked.mean(axis=0), stacked.std(axis=0, ddof=1)


def ablation_figure(curves: Mapping[str, Sequence[Sequence[Row]]], metric: str = "val_bpd",
                    title: str | None = None) -> Any | None:
    """The matplotlib `Figure` that `plot_ablation` writes (None: nothing to draw)."""
    if metric not in LABELS:
        raise ValueError(f"plot_ablation: metric must be one of {sorted(LABELS)}. "
                         f"Got {metric!r}.")
    keep = _is_interval if metric == "bpd" else (lambda r: True)
    lines = []
    for label, runs in curves.items():
        series = [s for run in runs for s in [_series(run, metric, keep)] if s[0].size]
        band = _band(series) if series else None
        if band is not None and band[0].size:
            lines.append((label, len(series), band))
    if not lines:
        return None
    fig, ax = _figure()
    for i, (label, n, (steps, mean, std)) in enumerate(lines):
        color = f"C{i % 10}"
        end = f"{mean[-1]:.4f}" + (f" ± {std[-1]:.4f}" if n > 1 else "")
        marker = {} if metric == "bpd" and steps.size > 1 else {"marker": "o", "markersize": 3}
        ax.plot(steps, mean, color=color, lw=1.2, label=f"{label} (n={n}): {end}", **marker)
        if n > 1:
            ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2, lw=0)
    ax.set_ylim(*_ylim([(s, m + sd) for _, _, (s, m, sd) in lines]
                       + [(s, m - sd) for _, _, (s, m, sd) in lines]))
    ax.set_xlabel("step")
    ax.set_ylabel(f"{LABELS[metric]} bits/dim")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")
    if title:
        ax.set_title(title)
    return fig


def plot_ablation(curves: Mapping[str, Sequence[Sequence[Row]]], path: str | Path,
                  metric: str = "val_bpd", title: str | None = None) -> Path | None:
    """Write a PNG comparing runs: one line per label, its mean ± std band over seeds.

    Arguments:
        curves: label -> list of runs, each run a list of metric rows (`read_metrics`). Runs
            of one label are averaged on their shared step range (linear interpolation
            between logged steps); a label with one run is drawn without a band. The legend
            gives each label's run count and last mean ± std.
        path: the PNG to write.
        metric: ``"val_bpd"`` or ``"test_bpd"`` (epoch-end rows, markers) or ``"bpd"``
            (train bits/dim per logging interval).
        title: figure title; none by default.

    Returns:
        `path`, or ``None`` (nothing written) when no run has a finite value of `metric`.
    """
    fig = ablation_figure(curves, metric, title)
    return None if fig is None else _save(fig, path)
