r"""Training output: a plain-text progress bar on stderr and the metrics files.

`ProgressBar` redraws one line in place on a TTY (at most ~8 times a second) and otherwise
prints a line every `every` steps. `MetricsLog` appends one row per logging interval (and one
per evaluation) to ``metrics.jsonl`` and ``metrics.csv`` with the columns `COLUMNS`:

- ``step``: optimizer steps attempted so far (skipped ones included); ``epoch`` (0-based);
- ``lr``: the scheduled lr of the row's last step (on an epoch-end row: the epoch's last step);
- ``bpd``: mean training bits/dim over the interval (finite steps only; the running sums are
  checkpointed, so an interval cut by a resume still averages all its steps);
- ``images_per_s`` (all processes together); ``grad_norm``: mean total gradient norm
  before clipping; ``skipped``: non-finite steps skipped so far; ``wall_time``: seconds of
  training (resumes continue the count);
- ``val_bpd``: validation single-sample bits/dim (after precise BN), on the rows written at
  epoch ends and on the final row (empty elsewhere);
- ``test_bpd``: test-split single-sample bits/dim, only on the final row written when the run
  ends (the test split is read for nothing else).

A resumed run's files equal an uninterrupted run's except in the wall-clock columns
``images_per_s`` and ``wall_time``.

Rows are also sent to TensorBoard when ``torch.utils.tensorboard`` imports (else skipped);
after a resume, events past the checkpoint's step are purged (``purge_step``).
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

__all__ = ["COLUMNS", "MetricsLog", "ProgressBar"]

COLUMNS = ("step", "epoch", "lr", "bpd", "images_per_s", "grad_norm", "skipped", "wall_time",
           "val_bpd", "test_bpd")


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressBar:
    """``epoch 2/3 [#####.....]  450/937  bpd 3.412  410 img/s  lr 1.0e-03  eta 1:12``."""

    def __init__(self, total_steps: int, every: int = 50, stream: IO[str] | None = None,
                 enabled: bool = True):
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.total, self.every, self.enabled = total_steps, every, enabled
        self._last_draw = 0.0
        self._width = 0

    def update(self, step: int, epoch: int, epochs: int, done: int, per_epoch: int,
               bpd: float, images_per_s: float, lr: float, eta: float | None) -> None:
        if not self.enabled:
            return
        filled = int(20 * done / max(per_epoch, 1))
        line = (f"epoch {epoch + 1}/{epochs} [{'#' * filled}{'.' * (20 - filled)}] "
                f"{done:>{len(str(per_epoch))}}/{per_epoch}  bpd {bpd:.4f}  "
                f"{images_per_s:,.0f} img/s  lr {lr:.1e}")
        if eta is not None:
            line += f"  eta {_duration(eta)}"
        if self.tty:
            now = time.monotonic()
            if now - self._last_draw < 0.125 and done < per_epoch:
                return
            self._last_draw = now
            pad = max(0, self._width - len(line))
            self.stream.write("\r" + line + " " * pad)
            self._width = len(line)
        elif step % self.every == 0 or done == per_epoch:
            self.stream.write(f"step {step}  " + line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line of its own (ends the in-place line first)."""
        if not self.enabled:
            return
        if self.tty and self._width:
            self.stream.write("\n")
            self._width = 0
        self.stream.write(text + "\n")
        self.stream.flush()


class MetricsLog:
    """Append-only ``metrics.jsonl`` + ``metrics.csv`` (+ TensorBoard) in `out_dir`.

    Each checkpoint stores `position()` (the files' byte sizes); resuming from it with
    ``resume=`` that dict cuts both files back to those sizes, so the rows a killed run wrote
    after its last checkpoint (or half a row) are rewritten once, never duplicated. A
    `resume` dict without sizes (older checkpoints), or files shorter than recorded, fall back
    to dropping rows after ``resume["step"]``; `note` then says so.
    """

    def __init__(self, out_dir: Path, resume: dict[str, int] | None = None,
                 tensorboard: bool = True):
        self.jsonl, self.csv = out_dir / "metrics.jsonl", out_dir / "metrics.csv"
        self.note: str | None = None
        out_dir.mkdir(parents=True, exist_ok=True)
        if resume is None:
            for path in (self.jsonl, self.csv):
                path.unlink(missing_ok=True)
        elif not self._truncate_to(resume):
            self._truncate_after(resume["step"])
        if not self.csv.exists() or self.csv.stat().st_size == 0:
            with open(self.csv, "w", newline="") as f:
                csv.writer(f).writerow(COLUMNS)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                SummaryWriter = None
            if SummaryWriter is not None:
                # purge_step hides events a killed run logged after the checkpoint.
                purge = None if resume is None else resume["step"] + 1
                self.tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=purge)

    def position(self, step: int) -> dict[str, int]:
        """``{"step", "jsonl", "csv"}``: the files' sizes now, flushed to disk first (a
        checkpoint that outlives a power cut should not point past the end of its log)."""
        pos = {"step": step}
        for key, path in (("jsonl", self.jsonl), ("csv", self.csv)):
            with open(path, "ab") as f:  # "ab" creates the jsonl before its first row
                os.fsync(f.fileno())
                pos[key] = os.fstat(f.fileno()).st_size
        return pos

    def _truncate_to(self, pos: dict[str, int]) -> bool:
        """Cut both files back to the sizes in `pos`; False when that cannot be exact."""
        if "jsonl" not in pos:
            return False
        paths = ((self.jsonl, pos["jsonl"]), (self.csv, pos["csv"]))
        if any(not p.exists() or p.stat().st_size < size for p, size in paths):
            self.note = (f"warning: {self.jsonl.name}/{self.csv.name} are shorter than when the "
                         "checkpoint was written; kept their rows up to its step")
            return False
        for path, size in paths:
            os.truncate(path, size)
        return True

    def _truncate_after(self, step: int) -> None:
        """Drop rows after `step` (for checkpoints that do not record the files' sizes)."""
        if self.jsonl.exists():
            rows = []
            for line in self.jsonl.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= step:
                        rows.append(line)
                except (ValueError, KeyError, TypeError):  # a half-written last row
                    continue
            self.jsonl.write_text("".join(r + "\n" for r in rows))
        if self.csv.exists():
            with open(self.csv, newline="") as f:
                table = list(csv.reader(f))
            keep = table[:1] + [r for r in table[1:]
                                if r and r[0].isdigit() and int(r[0]) <= step]
            with open(self.csv, "w", newline="") as f:
                csv.writer(f).writerows(keep)

    def write(self, **row: Any) -> None:
        full = {k: row.get(k) for k in COLUMNS}
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(full) + "\n")
        with open(self.csv, "a", newline="") as f:
            csv.writer(f).writerow(["" if full[k] is None else full[k] for k in COLUMNS])
        if self.tb is not None:
            for k in COLUMNS[2:]:
                if full[k] is not None:
                    tag = {"val_bpd": "val/bpd", "test_bpd": "test/bpd"}.get(k, f"train/{k}")
                    self.tb.add_scalar(tag, full[k], full["step"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
