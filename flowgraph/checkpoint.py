r"""Checkpoints: atomic writes, safe loads, and rebuilding a model from the spec they carry.

A checkpoint is a dict saved with `torch.save` and read back with ``weights_only=True`` (a
checkpoint file is untrusted input). It always holds ``format``, ``spec_text`` (the normalised
spec, arguments applied), ``spec_hash`` and ``model`` (the state dict); training adds
``optimizer``, ``scheduler``, ``step``, ``epoch``, ``rng`` and ``config``. Files are written to a
temporary name in the same folder (``.NAME.XXXXXXXX.tmp``), fsynced, then renamed over the
target, so a crash leaves either the old file or the new one, never a truncated one; a write
that fails (disk full, read-only folder) removes its temporary file and raises a
`CheckpointError` naming the path and the OS error. A process killed mid-write leaves its
temporary file behind: `remove_stale_temporaries` deletes those (training does at start-up).
"""

from __future__ import annotations

import errno
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from flowgraph.errors import FlowgraphError

__all__ = ["CHECKPOINT_FORMAT", "MAX_SPEC_TEXT", "CheckpointError", "load_checkpoint",
           "load_flow", "remove_stale_temporaries", "save_checkpoint"]

CHECKPOINT_FORMAT = 1
# The embedded spec is untrusted; real specs are a few KB once normalised.
MAX_SPEC_TEXT = 1_000_000


class CheckpointError(FlowgraphError):
    """A checkpoint is missing, unreadable, unwritable, or does not match its spec."""


def _write_error(path: Path, e: OSError) -> CheckpointError:
    code = errno.errorcode.get(e.errno or 0, "")
    why = f"{e.strerror or e}" + (f" [{code}]" if code else "")
    kept = (f"the previous {path.name} is unchanged" if path.exists()
            else "no checkpoint was written")
    return CheckpointError(f"cannot write checkpoint {str(path)!r}: {why}; {kept}")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` atomically to `path` (parent folders are created)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _write_error(path, e) from e
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": CHECKPOINT_FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        os_error = e if isinstance(e, OSError) else (
            _os_cause(e) if isinstance(e, Exception) else None)
        if os_error is not None:
            raise _write_error(path, os_error) from e
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    return path


def _os_cause(e: BaseException) -> OSError | None:
    """The OSError behind `e`: torch's zip writer may re-raise a failed write as another type."""
    seen = e.__cause__ or e.__context__
    while seen is not None and not isinstance(seen, OSError):
        seen = seen.__cause__ or seen.__context__
    return seen


def remove_stale_temporaries(folder: str | Path, names: tuple[str, ...] = (
        "checkpoint.pt", "final.pt")) -> list[tuple[Path, int]]:
    """Delete ``.NAME.*.tmp`` files that killed `save_checkpoint` calls left in `folder`.

    Only call this when no other process writes checkpoints into `folder`. Returns the removed
    paths with their sizes in bytes.
    """
    removed = []
    for name in names:
        for tmp in Path(folder).glob(f".{name}.*.tmp"):
            try:
                size = tmp.stat().st_size
                tmp.unlink()
            except FileNotFoundError:
                continue
            removed.append((tmp, size))
    return removed


def _read_error(path: Path, e: Exception) -> CheckpointError:
    # torch's weights_only refusal advises loading with weights_only=False, i.e. running the
    # file's pickled code; never pass that advice on for an untrusted file.
    if isinstance(e, pickle.UnpicklingError) or "weights_only" in str(e):
        return CheckpointError(
            f"checkpoint {str(path)!r} holds pickled Python objects other than tensors and plain "
            "values; flowgraph will not load it, because unpickling arbitrary objects can run "
            "code. Only load checkpoints that flowgraph wrote.")
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return CheckpointError(f"checkpoint {str(path)!r} cannot be read ({type(e).__name__}: "
                           f"{first}); it is corrupt or not a flowgraph checkpoint")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"
                    ) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise _read_error(path, e) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a flowgraph checkpoint (format "
                              f"{CHECKPOINT_FORMAT}). Got {type(state).__name__}.")
    for key in ("spec_text", "spec_hash", "model"):
        if key not in state:
            raise CheckpointError(f"checkpoint {str(path)!r} lacks {key!r}")
    text = state["spec_text"]
    if not isinstance(text, str) or not isinstance(state["spec_hash"], str):
        raise CheckpointError(f"checkpoint {str(path)!r}: spec_text and spec_hash must be text")
    if len(text) > MAX_SPEC_TEXT:
        raise CheckpointError(f"checkpoint {str(path)!r}: its embedded spec is {len(text):,} "
                              f"characters, over the limit of {MAX_SPEC_TEXT:,}; refusing it")
    return state


def parse_embedded_spec(state: dict[str, Any], path: str | Path) -> tuple[Any, Any]:
    """Parse a loaded checkpoint's ``spec_text`` (untrusted): the one place that does."""
    from flowgraph.spec.io import parse_spec

    return parse_spec(state["spec_text"], f"{path} (embedded spec)")


def load_flow(path: str | Path, map_location: str | torch.device = "cpu"):
    """Rebuild the model a checkpoint was trained with and load its weights.

    Returns ``(flow, checkpoint_dict)``. The spec is recompiled from the text stored in the
    checkpoint, and its hash must match, so weights never load into another architecture.
    """
    from flowgraph.compile import compile_spec, spec_hash

    state = load_checkpoint(path, map_location)
    spec, smap = parse_embedded_spec(state, path)
    if spec_hash(spec) != state["spec_hash"]:
        raise CheckpointError(f"checkpoint {str(path)!r}: its spec does not match its hash")
    flow = compile_spec(spec, smap=smap)
    try:
        flow.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {str(path)!r}: weights do not fit the spec: {e}"
                              ) from None
    return flow.to(map_location), state
