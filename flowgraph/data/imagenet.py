r"""ImageNet32 / ImageNet64 from image-net.org's downsampled release.

``Imagenet{32,64}_train*.zip`` unpack to ``train_data_batch_1`` ... ``train_data_batch_10`` and
``Imagenet{32,64}_val.zip`` to ``val_data``: pickled dicts with ``data`` (uint8 N x 3*H*W, the R,
G and B planes of each image stacked), ``labels`` (1..1000, kept as given) and, for train,
``mean``. The ``*_npz.zip`` variants hold the same keys as ``.npz`` files; both are read, the
pickles with the restricted unpickler. Files are looked for in `data_dir` and in its immediate
subfolders (``Imagenet64_train_part1/`` etc.), so the zips can be unpacked side by side.

Memory: the batches stay separate arrays (never joined), so a process holds the images once
(ImageNet64 train: 15.7 GB). An uncompressed ``.npz`` is memory-mapped in place (no private
memory at all; the page cache is shared by every process on the machine). Option ``cache``
(``"auto"`` or a folder; see `flowgraph.data.mapped`) converts pickles and compressed ``.npz``
once into one ``.npy`` that is memory-mapped the same way: the choice for several DDP ranks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flowgraph.data.batches import read_batch, rows_to_images
from flowgraph.data.dataset import ArrayImageDataset
from flowgraph.data.errors import missing
from flowgraph.data.mapped import cache_dir_for, cached_array

__all__ = ["IMAGENET_FILES", "imagenet_howto", "load_imagenet"]

IMAGENET_FILES = {
    "train": tuple(f"train_data_batch_{i}" for i in range(1, 11)),
    "test": ("val_data",),
}
"""split -> batch file names (each may also end in ``.npz``); test is the 50k validation set."""


def imagenet_howto(resolution: int) -> str:
    """How to obtain ImageNet32 / ImageNet64."""
    zips = ("Imagenet32_train.zip and Imagenet32_val.zip" if resolution == 32 else
            "Imagenet64_train_part1.zip, Imagenet64_train_part2.zip and Imagenet64_val.zip")
    return (f"download {zips} (or the *_npz.zip variants) from the downsampled ImageNet release "
            "on https://image-net.org/download-images.php (needs an image-net.org account), "
            "unzip them into one folder and pass it as data_dir (--data-dir)")


def _find_batch(root: Path, name: str) -> Path | None:
    folders = [root] + (sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else [])
    for folder in folders:
        for candidate in (folder / name, folder / f"{name}.npz"):
            if candidate.is_file():
                return candidate
    return None


def load_imagenet(root: Path, split: str, resolution: int, cache: str | None = None
                  ) -> ArrayImageDataset:
    """Load ImageNet{32,64} train (10 batch files) or test (``val_data``) as uint8
    ``[N, 3, R, R]``: batches kept apart, uncompressed ``.npz`` memory-mapped, or (`cache`)
    everything converted once into a memory-mapped ``.npy``."""
    howto = imagenet_howto(resolution)
    paths = []
    for name in IMAGENET_FILES[split]:
        path = _find_batch(root, name)
        if path is None:
            raise missing(root / name, f"ImageNet{resolution} batch file {name} (or "
                          f"{name}.npz, here or in a subfolder)", howto)
        paths.append(path)
    columns, what = 3 * resolution * resolution, f"ImageNet{resolution} batch"
    folder = cache_dir_for(cache, root)

    def read(path: Path, mmap: bool) -> tuple[np.ndarray, np.ndarray]:
        return read_batch(path, what=what, columns=columns, howto=howto, mmap=mmap)

    if folder is not None:
        tag = f"imagenet{resolution}-{split}"
        data, all_labels = cached_array(folder, tag, paths, (columns,),
                                        lambda: (read(path, True) for path in paths))
        return ArrayImageDataset(f"imagenet{resolution}", split, root,
                                 [rows_to_images(data, 3, resolution, resolution)], all_labels)
    chunks, labels = [], []
    for path in paths:
        data, batch_labels = read(path, True)
        chunks.append(rows_to_images(data, 3, resolution, resolution))
        labels.append(batch_labels)
    return ArrayImageDataset(f"imagenet{resolution}", split, root, chunks,
                             np.concatenate(labels))
