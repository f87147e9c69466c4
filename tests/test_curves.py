"""Learning-curve and ablation PNGs from metrics rows: what is drawn, and how it is written."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest

from flowgraph.train.curves import (
    ablation_figure,
    learning_curves_figure,
    plot_ablation,
    plot_learning_curves,
    read_metrics,
)
from flowgraph.train.progress import COLUMNS


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def run_rows(epochs: int = 3, per_epoch: int = 4, every: int = 2, val: bool = True,
             offset: float = 0.0) -> list[dict]:
    """Rows shaped like MetricsLog's: interval rows, then an epoch-end row with evaluations."""
    rows, step = [], 0
    for e in range(epochs):
        for _ in range(per_epoch // every):
            step += every
            rows.append({**dict.fromkeys(COLUMNS), "step": step, "epoch": e,
                         "lr": 1e-3 * min(1.0, step / 4) * 0.5 ** e, "bpd": 6 / step + 3 + offset,
                         "images_per_s": 100.0, "grad_norm": 1.0, "skipped": 0,
                         "wall_time": float(step)})
        end = {**dict.fromkeys(COLUMNS), "step": step, "epoch": e, "lr": rows[-1]["lr"],
               "bpd": 3.5, "skipped": 0, "wall_time": float(step),
               "test_bpd": 3.4 - 0.1 * e + offset}
        if val:
            end["val_bpd"] = 3.45 - 0.1 * e + offset
        rows.append(end)
    return rows


def lines(ax) -> dict[str, tuple[list[float], list[float]]]:
    return {ln.get_label().split(" ")[0]: (list(ln.get_xdata()), list(ln.get_ydata()))
            for ln in ax.get_lines()}


def test_one_run_draws_train_validation_test_and_lr(tmp_path):
    import matplotlib

    backend, params = matplotlib.get_backend(), dict(matplotlib.rcParams)
    rows = run_rows()
    fig = learning_curves_figure(rows, title="run")
    ax, ax_lr = fig.axes
    drawn = lines(ax)
    # train: the interval rows only, not the epoch-end rows' epoch means
    assert drawn["train"] == ([2, 4, 6, 8, 10, 12], [6 / s + 3 for s in (2, 4, 6, 8, 10, 12)])
    assert drawn["validation"] == ([4, 8, 12], pytest.approx([3.45, 3.35, 3.25]))
    assert drawn["test"] == ([4, 8, 12], pytest.approx([3.4, 3.3, 3.2]))
    assert ax.get_lines()[1].get_marker() == "o"
    assert ax_lr.get_ylabel() == "learning rate" and ax_lr.get_yscale() == "linear"  # 4× span
    assert list(ax_lr.get_lines()[0].get_xdata()) == [2, 4, 4, 6, 8, 8, 10, 12, 12]
    path = plot_learning_curves(rows, tmp_path / "sub" / "curves.png")
    assert path == tmp_path / "sub" / "curves.png"
    assert png_size(path) == (800, 450)
    assert [p.name for p in path.parent.iterdir()] == ["curves.png"]  # no temp file left
    assert path.stat().st_mode & 0o777 == 0o644
    assert matplotlib.get_backend() == backend and dict(matplotlib.rcParams) == params


def test_the_early_drop_does_not_set_the_bits_per_dim_range():
    rows = [{"step": s, "bpd": 8.0 if s == 1 else 3.5 - s / 1000} for s in range(1, 101)]
    bottom, top = learning_curves_figure(rows).axes[0].get_ylim()
    assert bottom < 3.4 and 3.49 < top < 3.6  # step 1 (8.0) is in the first 10% of steps


def test_lr_axis_is_linear_within_ten_times_and_log_beyond():
    rows = [{"step": s, "bpd": 3.0, "lr": lr} for s, lr in [(1, 1e-3), (2, 5e-4), (3, 2e-4)]]
    assert learning_curves_figure(rows).axes[1].get_yscale() == "linear"
    rows.append({"step": 4, "bpd": 3.0, "lr": 1e-5})
    assert learning_curves_figure(rows).axes[1].get_yscale() == "log"


def test_missing_columns_nan_none_and_a_single_row(tmp_path):
    rows = run_rows(val=False)
    for r in rows:  # an older run: no val_bpd column at all
        r.pop("val_bpd", None)
    rows[0]["bpd"], rows[1]["bpd"], rows[2]["lr"] = math.nan, None, math.inf
    drawn = lines(learning_curves_figure(rows).axes[0])
    assert set(drawn) == {"train", "test"} and drawn["train"][0] == [6, 8, 10, 12]
    assert png_size(plot_learning_curves(rows, tmp_path / "a.png")) == (800, 450)
    one = [{"step": 5, "bpd": 3.2}]  # no lr, no evaluation
    fig = learning_curves_figure(one)
    assert len(fig.axes) == 1 and lines(fig.axes[0])["train"] == ([5], [3.2])
    assert png_size(plot_learning_curves(one, tmp_path / "b.png")) == (800, 450)


def test_nothing_to_draw_writes_nothing(tmp_path):
    path = tmp_path / "curves.png"
    assert plot_learning_curves([], path) is None
    assert plot_learning_curves([{"step": 1, "bpd": None, "lr": 1e-3, "test_bpd": math.nan}],
                                path) is None
    assert plot_ablation({"a": [[]]}, path) is None and not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "curves.png"
    path.write_bytes(b"old")
    import matplotlib.figure

    def broken(self, *args, **kwargs):
        raise RuntimeError("disk full")
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        plot_learning_curves(run_rows(), path)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["curves.png"]


def test_read_metrics_skips_a_half_written_last_line(tmp_path):
    rows = run_rows(epochs=1)
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 9, "bp'
    (tmp_path / "metrics.jsonl").write_text(text)
    assert read_metrics(tmp_path) == rows
    assert read_metrics(tmp_path / "missing") == []


def test_ablation_bands_are_mean_and_std_over_seeds(tmp_path):
    curves = {"baseline": [run_rows(), run_rows(offset=0.2)],
              "fusion": [run_rows(offset=-0.1), run_rows(offset=-0.3)]}
    ax = ablation_figure(curves).axes[0]
    means = {ln.get_label().split(" ")[0]: ln.get_ydata() for ln in ax.get_lines()}
    assert np.allclose(means["baseline"], [3.55, 3.45, 3.35])  # val 3.45 - 0.1 e, + 0.1
    assert np.allclose(means["fusion"], [3.25, 3.15, 3.05])
    assert "± 0.1414" in ax.get_lines()[0].get_label()  # std (ddof=1) of {0, 0.2}
    assert len(ax.collections) == 2  # one band per label
    path = plot_ablation(curves, tmp_path / "ablation.png", metric="bpd", title="Table 4")
    assert png_size(path) == (800, 450)
    train = ablation_figure(curves, metric="bpd").axes[0].get_lines()[0]
    assert list(train.get_xdata()) == [2, 4, 6, 8, 10, 12]  # interval rows only
    with pytest.raises(ValueError, match="metric must be one of"):
        ablation_figure(curves, metric="loss")


def test_ablation_runs_with_different_logged_steps_share_a_grid():
    a = [{"step": s, "val_bpd": 4.0 - s / 10} for s in (0, 10, 20)]
    b = [{"step": s, "val_bpd": 4.2 - s / 10} for s in (5, 15, 25)]
    ax = ablation_figure({"x": [a, b]}).axes[0]
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == [5, 10, 15, 20]  # the range both runs cover
    assert np.allclose(line.get_ydata(), [4.1 - s / 10 for s in (5, 10, 15, 20)])
