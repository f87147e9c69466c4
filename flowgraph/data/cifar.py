r"""CIFAR-10, python version: ``cifar-10-batches-py/{data_batch_1..5,test_batch}``, each a
pickled dict with ``b'data'`` (uint8 N x 3072: 1024 R, then 1024 G, then 1024 B values, rows in
raster order) and ``b'labels'``; read with the restricted unpickler. The five training batches
stay separate arrays (held once); option ``cache`` (``"auto"`` or a folder) converts a split
once into a memory-mapped ``.npy`` shared by all processes (`flowgraph.data.mapped`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flowgraph.data.batches import read_batch, rows_to_images
from flowgraph.data.dataset import ArrayImageDataset
from flowgraph.data.errors import missing
from flowgraph.data.mapped import cache_dir_for, cached_array

__all__ = ["CIFAR10_FILES", "CIFAR10_HOWTO", "load_cifar10"]

CIFAR10_FILES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
CIFAR10_HOWTO = (
    "download the CIFAR-10 python version from "
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, extract it "
    "(tar xzf cifar-10-python.tar.gz) and pass the folder that contains cifar-10-batches-py/ "
    "(or that folder itself) as data_dir (--data-dir)")


def cifar10_folder(root: Path) -> Path:
    """``root/cifar-10-batches-py`` when it exists, else `root` itself."""
    nested = root / "cifar-10-batches-py"
    return root if root.name == nested.name or not nested.is_dir() else nested


def load_cifar10(root: Path, split: str, cache: str | None = None) -> ArrayImageDataset:
    """Load one split (train: 50,000 images, test: 10,000) as ``[N, 3, 32, 32]`` uint8."""
    folder = cifar10_folder(root)
    paths = []
    for name in CIFAR10_FILES[split]:
        path = folder / name
        if not path.is_file():
            batches_here = folder != root or root.name == "cifar-10-batches-py" or any(
                (root / n).is_file() for names in CIFAR10_FILES.values() for n in names)
            where = path if batches_here else root / "cifar-10-batches-py" / name
            raise missing(where, f"CIFAR-10 batch file {name}", CIFAR10_HOWTO)
        paths.append(path)

    def read(path: Path) -> tuple[np.ndarray, np.ndarray]:
        return read_batch(path, what="CIFAR-10 python batch", columns=3072, howto=CIFAR10_HOWTO)

    cache_dir = cache_dir_for(cache, root)
    if cache_dir is not None:
        data, labels = cached_array(cache_dir, f"cifar10-{split}", paths, (3072,),
                                    lambda: (read(path) for path in paths))
        return ArrayImageDataset("cifar10", split, root, [rows_to_images(data, 3, 32, 32)],
                                 labels)
    chunks, labels = [], []
    for path in paths:
        data, batch_labels = read(path)
        chunks.append(rows_to_images(data, 3, 32, 32))
        labels.append(batch_labels)
    return ArrayImageDataset("cifar10", split, root, chunks, np.concatenate(labels))
