r"""Checkpoints: atomic writes, safe loads, and rebuilding a model from the spec they carry.

A checkpoint is a dict saved with `torch.save` and read back with ``weights_only=True`` (a
checkpoint file is untrusted input). It always holds ``format``, ``spec_text`` (the normalised
spec, arguments applied), ``spec_hash`` and ``model`` (the state dict); training adds
``optimizer``, ``scheduler``, ``step``, ``epoch``, ``rng`` and ``config``. Files are written to a
temporary name in the same folder, fsynced, then renamed over the target, so a crash leaves
either the old file or the new one, never a truncated one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from flowgraph.errors import FlowgraphError

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "load_checkpoint", "load_flow",
           "save_checkpoint"]

CHECKPOINT_FORMAT = 1


class CheckpointError(FlowgraphError):
    """A checkpoint is missing, unreadable, or does not match its spec."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` atomically to `path` (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": CHECKPOINT_FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"
                    ) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read ({type(e).__name__}: "
                              f"{e}); it is corrupt or not a flowgraph checkpoint") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a flowgraph checkpoint (format "
                              f"{CHECKPOINT_FORMAT}). Got {type(state).__name__}.")
    for key in ("spec_text", "spec_hash", "model"):
        if key not in state:
            raise CheckpointError(f"checkpoint {str(path)!r} lacks {key!r}")
    return state


def load_flow(path: str | Path, map_location: str | torch.device = "cpu"):
    """Rebuild the model a checkpoint was trained with and load its weights.

    Returns ``(flow, checkpoint_dict)``. The spec is recompiled from the text stored in the
    checkpoint, and its hash must match, so weights never load into another architecture.
    """
    from flowgraph.compile import compile_spec, spec_hash
    from flowgraph.spec.io import parse_spec

    state = load_checkpoint(path, map_location)
    spec, smap = parse_spec(state["spec_text"], f"{path} (embedded spec)")
    if spec_hash(spec) != state["spec_hash"]:
        raise CheckpointError(f"checkpoint {str(path)!r}: its spec does not match its hash")
    flow = compile_spec(spec, smap=smap)
    try:
        flow.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {str(path)!r}: weights do not fit the spec: {e}"
                              ) from None
    return flow.to(map_location), state
