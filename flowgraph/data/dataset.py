r"""`ImageDataset`: uint8 [C, H, W] images, held in memory or memory-mapped
(`ArrayImageDataset`) or decoded lazily from image files (`FileImageDataset` with an
`ImageDecoder`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from flowgraph.data.errors import DatasetError

__all__ = ["ArrayImageDataset", "FileImageDataset", "ImageDataset", "ImageDecoder", "import_pil"]


class ImageDataset(Dataset[Tensor]):
    """Abstract dataset of images: ``ds[i]`` is a ``uint8`` tensor of shape `shape` (C, H, W).

    Subclass requirements: set `name`, `split`, `root`, `shape`, `labels` (an int64 array of
    length ``len(ds)``, or ``None`` when the format has no labels) and implement `_get`.
    """

    name: str
    split: str
    root: Path
    shape: tuple[int, int, int]
    labels: np.ndarray | None

    def __len__(self) -> int:
        raise NotImplementedError

    def _get(self, index: int) -> Tensor:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Tensor:
        n = len(self)
        i = int(index)
        if not -n <= i < n:
            raise IndexError(f"{self.name} {self.split}: index out of range [0, {n}). Got {i}.")
        return self._get(i % n)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, "
                f"len={len(self)}, shape={self.shape}, root='{self.root}')")


class ArrayImageDataset(ImageDataset):
    """Images as uint8 arrays ``[n_k, C, H, W]``, in memory or memory-mapped (read-only arrays
    are kept as they are). The chunks are never joined: `gather` indexes across them, so a
    multi-file dataset (ImageNet's ten batch files) is held once."""

    def __init__(self, name: str, split: str, root: Path, chunks: Sequence[np.ndarray],
                 labels: np.ndarray | None = None):
        if not chunks:
            raise ValueError(f"{name} {split}: at least one chunk of images is needed. Got 0.")
        shapes = {tuple(c.shape[1:]) for c in chunks}
        if len(shapes) != 1 or any(c.ndim != 4 or c.dtype != np.uint8 for c in chunks):
            raise ValueError(f"{name} {split}: chunks must be uint8 [n, C, H, W] of one shape. "
                             f"Got {[(c.dtype.name, c.shape) for c in chunks]}.")
        self.name, self.split, self.root = name, split, root
        self._chunks = [np.require(c, requirements=["C"]) for c in chunks]  # views: no copy
        self._ends = np.cumsum([len(c) for c in chunks])
        self.shape = tuple(int(d) for d in chunks[0].shape[1:])  # type: ignore[assignment]
        if labels is not None and len(labels) != self._ends[-1]:
            raise ValueError(f"{name} {split}: one label per image is needed. "
                             f"Got {len(labels)} labels for {self._ends[-1]} images.")
        self.labels = labels

    def __len__(self) -> int:
        return int(self._ends[-1])

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self._chunks)

    def chunks(self) -> list[np.ndarray]:
        """The image arrays, in order (read-only when memory-mapped; do not write to them)."""
        return list(self._chunks)

    def _get(self, index: int) -> Tensor:
        k = int(np.searchsorted(self._ends, index, side="right"))
        start = int(self._ends[k - 1]) if k else 0
        return torch.from_numpy(np.array(self._chunks[k][index - start]))  # a writable copy

    def gather(self, indices: Tensor | np.ndarray | Sequence[int], out: Tensor | None = None
               ) -> Tensor:
        """Images ``indices`` as uint8 ``[len(indices), C, H, W]``, read straight from the
        chunks (a memory-mapped chunk reads only these images); written into `out` (a CPU
        uint8 tensor of that shape, pinned for instance) when given."""
        idx = np.asarray(indices.cpu() if isinstance(indices, Tensor) else indices,
                         dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            bad = int(idx[(idx < 0) | (idx >= n)][0])
            raise IndexError(f"{self.name} {self.split}: index out of range [0, {n}). Got {bad}.")
        shape = (len(idx), *self.shape)
        if out is None:
            out = torch.empty(shape, dtype=torch.uint8)
        elif tuple(out.shape) != shape or out.dtype != torch.uint8 or out.device.type != "cpu":
            raise ValueError(f"{self.name} {self.split}: gather needs a CPU uint8 `out` of shape "
                             f"{list(shape)}. Got {out.dtype} {list(out.shape)} on {out.device}.")
        dst = out.numpy()
        if len(self._chunks) == 1:
            np.take(self._chunks[0], idx, axis=0, out=dst, mode="clip")  # bounds checked above
            return out
        which = np.searchsorted(self._ends, idx, side="right")
        for k in np.unique(which):
            rows = np.nonzero(which == k)[0]
            start = int(self._ends[k - 1]) if k else 0
            dst[rows] = self._chunks[k][idx[rows] - start]
        return out

    def images(self) -> Tensor:
        """All images as one uint8 tensor ``[N, C, H, W]``: a view of a single writable chunk,
        else a joined copy (a second copy of the data; training reads through `gather`)."""
        if len(self._chunks) == 1 and self._chunks[0].flags.writeable:
            return torch.from_numpy(self._chunks[0])
        return torch.from_numpy(np.concatenate(self._chunks))


@dataclass(frozen=True)
class ImageDecoder:
    """Decode one image file to uint8 ``[C, H, W]`` with Pillow.

    Steps: convert to `mode` ("RGB" or "L"); crop to `box` (left, top, right, bottom) if given;
    else center-crop to a square if `square`; resize to `size` (H, W) with bilinear filtering
    if given (Pillow's resize, as torchvision's ``Resize`` on PIL images); otherwise the image
    must already be `expect` (H, W).
    """

    mode: str
    size: tuple[int, int] | None = None
    box: tuple[int, int, int, int] | None = None
    square: bool = False
    expect: tuple[int, int] | None = None
    howto: str = ""

    def __call__(self, path: Path) -> np.ndarray:
        image_module = import_pil()
        try:
            with image_module.open(path) as img:
                img = img.convert(self.mode)
                if self.box is not None:
                    img = img.crop(self.box)
                elif self.square and img.width != img.height:
                    side = min(img.width, img.height)
                    left, top = (img.width - side) // 2, (img.height - side) // 2
                    img = img.crop((left, top, left + side, top + side))
                if self.size is not None:
                    img = img.resize((self.size[1], self.size[0]),
                                     image_module.Resampling.BILINEAR)
                array = np.array(img, dtype=np.uint8)  # a writable copy
        except (OSError, ValueError, image_module.DecompressionBombError) as e:
            raise DatasetError(f"cannot decode image {path}: {e}. Got a corrupt or unreadable "
                               "image file.", path=path, howto=self.howto) from e
        array = array[:, :, None] if array.ndim == 2 else array
        if self.expect is not None and array.shape[:2] != self.expect:
            raise DatasetError(
                f"image {path} has size {array.shape[0]}x{array.shape[1]} (HxW), but all images "
                f"must share the first image's size {self.expect[0]}x{self.expect[1]} unless a "
                f"`size` option resizes them. Got {array.shape[0]}x{array.shape[1]}.", path=path)
        return np.ascontiguousarray(array.transpose(2, 0, 1))


def import_pil() -> ModuleType:
    """Import ``PIL.Image`` lazily, with an actionable message when Pillow is missing."""
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError("decoding image files needs Pillow: pip install 'flowgraph[images]' "
                          "(or pip install pillow)") from e
    return Image


class FileImageDataset(ImageDataset):
    """Images decoded lazily, one file per item, by a picklable `ImageDecoder`."""

    def __init__(self, name: str, split: str, root: Path, files: Sequence[Path],
                 decoder: ImageDecoder, shape: tuple[int, int, int],
                 labels: np.ndarray | None = None):
        self.name, self.split, self.root = name, split, root
        self.files = list(files)
        self.decoder, self.shape, self.labels = decoder, shape, labels

    def __len__(self) -> int:
        return len(self.files)

    def _get(self, index: int) -> Tensor:
        path = self.files[index]
        if not path.is_file():
            raise DatasetError(f"image file not found: expected {path} (item {index} of "
                               f"{self.name} {self.split}). Got no such file.", path=path,
                               howto=self.decoder.howto)
        return torch.from_numpy(self.decoder(path))
