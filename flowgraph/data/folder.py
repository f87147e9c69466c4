r"""Any folder of PNG / JPEG images (searched recursively, sorted by path), decoded lazily.

If the folder has ``train/`` and ``test/`` subfolders those are the splits; otherwise the whole
folder is the train split and asking for "test" is an error (no silent reuse of train images).
"""

from __future__ import annotations

from pathlib import Path

from flowgraph.data.dataset import FileImageDataset, ImageDecoder, import_pil
from flowgraph.data.errors import DatasetError, DatasetOptionError, missing

__all__ = ["FOLDER_HOWTO", "IMAGE_SUFFIXES", "load_folder"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
FOLDER_HOWTO = ("pass a folder of .png/.jpg/.jpeg images as data_dir (--data-dir); put held-out "
                "images in its test/ subfolder and training images in train/")
_MODES = {1: "L", 3: "RGB"}


def list_images(folder: Path) -> list[Path]:
    """Every image file under `folder`, recursively, sorted by path."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                  and p.is_file())


def load_folder(root: Path, split: str, size: int | None = None,
                channels: int = 3) -> FileImageDataset:
    """Images under `root` (or ``root/<split>``) as uint8 ``[channels, H, W]``.

    `size`: center-crop each image to a square and resize it to `size` x `size` (bilinear);
    ``None`` keeps the native size, which then must be the same for every image.
    `channels`: 3 (RGB) or 1 (grayscale).
    """
    if channels not in _MODES:
        raise DatasetOptionError(f"folder option channels must be 1 or 3. Got {channels!r}.")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise DatasetOptionError(f"folder option size must be a positive int or None. "
                                 f"Got {size!r}.")
    if not root.is_dir():
        raise missing(root, "image folder", FOLDER_HOWTO)
    if (root / "train").is_dir() and (root / "test").is_dir():
        folder = root / split
    elif split == "train":
        folder = root
    else:
        raise missing(root / "test", "test/ subfolder of held-out images (the folder has no "
                      "train/ + test/ pair, so it is all training data)", FOLDER_HOWTO)
    files = list_images(folder)
    if not files:
        raise DatasetError(f"no images found in {folder} (searched recursively for "
                           f"{', '.join(IMAGE_SUFFIXES)}). Got none.", path=folder,
                           howto=FOLDER_HOWTO)
    if size is None:
        image_module = import_pil()
        try:
            with image_module.open(files[0]) as img:
                width, height = img.size
        except (OSError, ValueError) as e:
            raise DatasetError(f"cannot read image {files[0]}: {e}. Got a corrupt or "
                               "unreadable image file.", path=files[0], howto=FOLDER_HOWTO) from e
        decoder = ImageDecoder(mode=_MODES[channels], expect=(height, width), howto=FOLDER_HOWTO)
        shape = (channels, height, width)
    else:
        decoder = ImageDecoder(mode=_MODES[channels], size=(size, size), square=True,
                               howto=FOLDER_HOWTO)
        shape = (channels, size, size)
    return FileImageDataset("folder", split, root, files, decoder, shape)
