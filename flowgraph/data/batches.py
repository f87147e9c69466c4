r"""Batch files shared by CIFAR-10 and downsampled ImageNet: a dict with ``data`` (uint8
``N x 3*H*W``, the R, G and B planes of each image one after another) and ``labels``, stored
as a pickle (read with the restricted unpickler) or as an ``.npz`` (read without pickle; its
``data`` member is memory-mapped when it is stored uncompressed and `read_batch` is asked to)."""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from flowgraph.data.errors import DatasetError, corrupt
from flowgraph.data.mapped import map_npz_member
from flowgraph.data.safe_pickle import load_pickle

__all__ = ["read_batch", "rows_to_images"]


def _load_npz(path: Path, what: str, howto: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            loaded = np.load(file, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise corrupt(path, what, "it must be an .npz archive with 'data' and 'labels'",
                              f"a single .npy array of shape {loaded.shape}", howto)
            with loaded:
                return {key: loaded[key] for key in loaded.files if key not in skip}
    except DatasetError:
        raise
    except (OSError, ValueError, TypeError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise corrupt(path, what, "it does not load as an .npz archive without pickle",
                      f"{type(e).__name__}: {e}", howto) from e


def _text_keys(batch: Mapping[Any, Any]) -> dict[str, Any]:
    """Keys as ``str``: batches written by Python 2 or as protocol-2 bytes use ``b'data'``."""
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in batch.items()}


def read_batch(path: Path, *, what: str, columns: int, howto: str, mmap: bool = False,
               ) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file and check it; returns (data ``[N, columns]`` uint8, labels int64).
    With `mmap`, an uncompressed ``.npz``'s data is a read-only memory map."""
    is_npz = path.suffix == ".npz"
    mapped = map_npz_member(path, "data") if is_npz and mmap else None
    if is_npz:
        raw = _load_npz(path, what, howto, skip=("data",) if mapped is not None else ())
        if mapped is not None:
            raw["data"] = mapped
    else:
        raw = load_pickle(path, what, howto)
    if not isinstance(raw, Mapping):
        raise corrupt(path, what, "it must hold a dict with keys 'data' and 'labels'",
                      f"a {type(raw).__name__}", howto)
    batch = _text_keys(raw)
    absent = [key for key in ("data", "labels") if key not in batch]
    if absent:
        raise corrupt(path, what, f"the dict must have keys 'data' and 'labels'; missing "
                      f"{absent}", f"keys {sorted(map(str, batch))}", howto)
    data = batch["data"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == columns):
        got = (f"{data.dtype.name} array of shape {data.shape}" if isinstance(data, np.ndarray)
               else f"a {type(data).__name__}")
        raise corrupt(path, what, f"'data' must be a uint8 array of shape [N, {columns}]", got,
                      howto)
    try:
        labels = np.asarray(batch["labels"])
        ok = labels.ndim == 1 and (labels.dtype.kind in "iu" or labels.size == 0)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise corrupt(path, what, "'labels' must be a 1-D sequence of integers",
                      f"{type(batch['labels']).__name__}", howto)
    if len(labels) != len(data):
        raise corrupt(path, what, "'labels' must have one entry per row of 'data' "
                      f"({len(data)} rows)", f"{len(labels)} labels", howto)
    return data, labels.astype(np.int64)


def rows_to_images(data: np.ndarray, channels: int, height: int, width: int) -> np.ndarray:
    """``[N, C*H*W]`` rows whose channel planes are stacked -> ``[N, C, H, W]`` (a view)."""
    if data.shape[1] != channels * height * width:
        raise DatasetError(f"rows of {data.shape[1]} values cannot be {channels}x{height}x"
                           f"{width} images. Got shape {data.shape}.")
    return data.reshape(len(data), channels, height, width)
