r"""SIGTERM / SIGINT during training: finish the step, save a checkpoint, stop.

The first signal only sets `StopSignals.signum`; the loop notices it at the next step
boundary (all processes agree through the step's all-reduce), saves ``checkpoint.pt`` and
raises `TrainingInterrupted`, whose `exit_code` is ``128 + signum`` (130 for SIGINT, 143 for
SIGTERM, what a shell reports for a process the signal killed). The handler also restores
the default action, so a second signal kills the process at once, even inside a long C call
(a checkpoint being written then stays the previous one; its temporary file is removed at the
next start).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any, Self

from flowgraph.errors import FlowgraphError

__all__ = ["StopSignals", "TrainingInterrupted"]

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(FlowgraphError):
    """Training stopped on a signal after saving a checkpoint; resume from `checkpoint`."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum
        saved = f"checkpoint saved to {str(checkpoint)!r}" if checkpoint else "checkpoint saved"
        super().__init__(f"training stopped by {signal.Signals(signum).name} after step {step}; "
                         f"{saved} (continue with --resume)")


class StopSignals:
    """Context manager: catch SIGTERM/SIGINT as a stop request (main thread only)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        for s in SIGNALS:  # a second signal takes the default action: immediate death
            signal.signal(s, signal.SIG_DFL)

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._old.items():
            if handler is not None:  # None: installed outside Python, cannot be restored
                signal.signal(s, handler)
        self._old = {}
