r"""Datasets (real on-disk formats, local files only) and training augmentations.

``load_dataset(name, split, data_dir=None, **options)`` returns an `ImageDataset` of uint8
``[C, H, W]`` tensors. `DATASETS` describes every name: its shape, default folder, options,
the official augmentation, and how to obtain the files. Only Fashion-MNIST has a default folder
(Debian's ``dataset-fashion-mnist`` package); the others need `data_dir`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from flowgraph.data.augment import AUGMENTATIONS, make_augment
from flowgraph.data.celeba import CELEBA_HOWTO, load_celeba
from flowgraph.data.cifar import CIFAR10_HOWTO, load_cifar10
from flowgraph.data.dataset import ArrayImageDataset, FileImageDataset, ImageDataset
from flowgraph.data.errors import DatasetError, DatasetOptionError, UnsafePickleError, missing
from flowgraph.data.folder import FOLDER_HOWTO, load_folder
from flowgraph.data.idx import FASHION_MNIST_HOWTO, MNIST_HOWTO, load_idx_dataset
from flowgraph.data.imagenet import imagenet_howto, load_imagenet

__all__ = [
    "AUGMENTATIONS", "DATASETS", "FASHION_MNIST_DIR", "ArrayImageDataset", "DatasetError",
    "DatasetInfo", "DatasetOptionError", "FileImageDataset", "ImageDataset", "Split",
    "UnsafePickleError", "load_dataset", "make_augment",
]

Split = Literal["train", "test"]
SPLITS: tuple[str, ...] = ("train", "test")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` installs the IDX files (``dpkg -L`` shows it)."""


@dataclass(frozen=True)
class DatasetInfo:
    """What `load_dataset` knows about one dataset name."""

    name: str
    loader: Callable[..., ImageDataset]  # (root, split, **options)
    howto: str
    shape: tuple[int, int, int] | None  # None: depends on the files / options
    default_dir: Path | None = None
    options: tuple[str, ...] = ()
    augment: str = "none"  # the augmentation the official DenseFlow code trains with


_INFOS = (
    DatasetInfo("fashion-mnist", partial(load_idx_dataset, "fashion-mnist",
                                         howto=FASHION_MNIST_HOWTO),
                FASHION_MNIST_HOWTO, (1, 28, 28), default_dir=FASHION_MNIST_DIR),
    DatasetInfo("mnist", partial(load_idx_dataset, "mnist", howto=MNIST_HOWTO), MNIST_HOWTO,
                (1, 28, 28)),
    DatasetInfo("cifar10", load_cifar10, CIFAR10_HOWTO, (3, 32, 32), options=("cache",),
                augment="eta"),
    DatasetInfo("imagenet32", partial(load_imagenet, resolution=32), imagenet_howto(32),
                (3, 32, 32), options=("cache",), augment="eta"),
    DatasetInfo("imagenet64", partial(load_imagenet, resolution=64), imagenet_howto(64),
                (3, 64, 64), options=("cache",), augment="eta"),
    DatasetInfo("celeba", load_celeba, CELEBA_HOWTO, None, options=("crop", "size"),
                augment="horizontal_flip"),
    DatasetInfo("folder", load_folder, FOLDER_HOWTO, None, options=("size", "channels")),
)

DATASETS: MappingProxyType[str, DatasetInfo] = MappingProxyType({i.name: i for i in _INFOS})
"""name -> `DatasetInfo`; ``list(DATASETS)`` gives the accepted names."""


def load_dataset(name: str, split: Split, data_dir: str | Path | None = None,
                 **options: Any) -> ImageDataset:
    """Load `split` ("train" or "test") of dataset `name` from local files.

    `data_dir` overrides the default folder (only "fashion-mnist" has one). Options:
    celeba ``crop="none"|"realnvp"`` (default "none", the official code's uncropped resize)
    and ``size=64``; folder ``size=None|int`` and ``channels=3|1``; cifar10, imagenet32 and
    imagenet64 ``cache="none"|"auto"|folder`` (a one-time memory-mapped ``.npy`` copy, shared
    by every process; `flowgraph.data.mapped`).
    Raises `DatasetOptionError` for an unknown name, split or option, and `DatasetError`
    (naming the path and how to get the data) for missing or corrupt files.
    """
    info = DATASETS.get(name)
    if info is None:
        raise DatasetOptionError(f"unknown dataset; choose one of {list(DATASETS)}. "
                                 f"Got {name!r}.")
    if split not in SPLITS:
        raise DatasetOptionError(f"{name}: split must be one of {list(SPLITS)}. Got {split!r}.")
    unknown = sorted(set(options) - set(info.options))
    if unknown:
        allowed = ", ".join(info.options) or "none"
        raise DatasetOptionError(f"{name}: unknown option(s) {unknown}; allowed: {allowed}. "
                                 f"Got {sorted(options)}.")
    root = Path(data_dir).expanduser() if data_dir is not None else info.default_dir
    if root is None:
        raise DatasetError(f"{name} has no default location, so data_dir (--data-dir) is "
                           "required. Got data_dir=None.", howto=info.howto)
    if not root.is_dir():
        raise missing(root, f"{name} data folder", info.howto)
    return info.loader(root, split, **options)
