r"""IDX files (MNIST, Fashion-MNIST): ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.

An IDX file is a 4-byte magic number (two zero bytes, the element type, 0x08 = uint8, and the
number of dimensions), one big-endian int32 per dimension, then the row-major data.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from flowgraph.data.dataset import ArrayImageDataset
from flowgraph.data.errors import DatasetError, corrupt, missing

__all__ = ["FASHION_MNIST_HOWTO", "IDX_FILES", "MNIST_HOWTO", "load_idx_dataset", "read_idx"]

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
"""split -> (images file, labels file), without the optional ``.gz``."""

FASHION_MNIST_HOWTO = (
    "install Debian's package (apt-get install dataset-fashion-mnist; it puts the four "
    "*-ubyte.gz files in /usr/share/datasets/fashion-mnist), or download them from "
    "https://github.com/zalandoresearch/fashion-mnist into a folder and pass it as data_dir "
    "(--data-dir)")
MNIST_HOWTO = (
    "download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz from "
    "http://yann.lecun.com/exdb/mnist/ into a folder and pass it as data_dir (--data-dir)")


def _find(root: Path, stem: str, howto: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise missing(root / f"{stem}.gz", f"IDX file {stem}.gz (or uncompressed {stem})", howto)


def _read_exact(file: BinaryIO, out: bytearray | memoryview) -> int:
    view, done = memoryview(out), 0
    while done < len(view):
        n = file.readinto(view[done:])  # type: ignore[attr-defined]
        if not n:
            break
        done += n
    return done


def read_idx(path: Path, ndim: int, howto: str) -> np.ndarray:
    """Read a uint8 IDX file with `ndim` dimensions; any defect raises `DatasetError`."""
    what = f"IDX file (uint8, {ndim}-D, magic 0x{0x800 | ndim:08x})"
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            head = file.read(4)
            expected_magic = bytes([0, 0, 0x08, ndim])
            if head != expected_magic:
                raise corrupt(path, what, f"the magic number must be 0x{expected_magic.hex()}",
                              f"0x{head.hex()}" if head else "an empty file", howto)
            raw_dims = file.read(4 * ndim)
            if len(raw_dims) != 4 * ndim:
                raise corrupt(path, what, "the header ends early",
                              f"{len(raw_dims)} of {4 * ndim} dimension bytes", howto)
            dims = tuple(int(d) for d in np.frombuffer(raw_dims, dtype=">i4"))
            size = int(np.prod(dims, dtype=np.int64))
            if min(dims) < 0 or size > 1 << 36:
                raise corrupt(path, what, "the dimensions are implausible", str(dims), howto)
            data = np.empty(size, dtype=np.uint8)
            got = _read_exact(file, data.data)
            extra = file.read(1)
    except DatasetError:
        raise
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise corrupt(path, what, "it cannot be read (truncated or damaged gzip?)",
                      f"{type(e).__name__}: {e}", howto) from e
    if got != size or extra:
        raise corrupt(path, what, f"the header {dims} needs exactly {size} data bytes",
                      f"{got}{'+' if extra else ''} bytes", howto)
    return data.reshape(dims)


def load_idx_dataset(name: str, root: Path, split: str, howto: str) -> ArrayImageDataset:
    """Load one split of an MNIST-style IDX dataset as ``[N, 1, H, W]`` uint8 plus labels."""
    images_stem, labels_stem = IDX_FILES[split]
    images_path, labels_path = _find(root, images_stem, howto), _find(root, labels_stem, howto)
    images = read_idx(images_path, 3, howto)
    labels = read_idx(labels_path, 1, howto)
    if len(images) != len(labels):
        raise corrupt(labels_path, f"labels file for {images_path.name}",
                      f"it must hold one label per image ({len(images)} images)",
                      f"{len(labels)} labels", howto)
    return ArrayImageDataset(name, split, root, [images[:, None]], labels.astype(np.int64))
