r"""CelebA, aligned-and-cropped JPEGs (178 wide x 218 high) with the official splits from
``list_eval_partition.txt`` (``<file> <0|1|2>``: 0 train, 1 valid, 2 test), decoded lazily.

Two preprocessings, both ending in a bilinear resize to ``size`` x ``size`` (default 64):

- ``crop="none"`` (default, what the DenseFlow code actually feeds the model, inherited from
  survae): resize the *uncropped* 178x218 image, which squashes the faces vertically.
- ``crop="realnvp"``: first take the RealNVP 148x148 box, rows 40:188 and columns 15:163 (top 40,
  left 15; ``crop_to_bounding_box(image, 40, 15, 148, 148)`` in RealNVP's
  ``real_nvp_multiscale_dataset.py``; survae's ``crop(img, 40, 15, 148, 148)`` uses the same
  (top, left) order), i.e. the Pillow box (15, 40, 163, 188).
"""

from __future__ import annotations

from pathlib import Path

from flowgraph.data.dataset import FileImageDataset, ImageDecoder
from flowgraph.data.errors import DatasetError, DatasetOptionError, missing

__all__ = ["CELEBA_CROPS", "CELEBA_HOWTO", "REALNVP_BOX", "load_celeba"]

REALNVP_BOX = (15, 40, 163, 188)
"""(left, top, right, bottom): rows 40:188, columns 15:163 of the 178x218 aligned image."""
CELEBA_CROPS = ("none", "realnvp")
CELEBA_PARTITIONS = {"train": 0, "valid": 1, "test": 2}
CELEBA_HOWTO = (
    "download img_align_celeba.zip ('Align&Cropped Images', folder Img) and "
    "list_eval_partition.txt (folder Eval) from the official CelebA site "
    "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html, unzip the images so that the folder "
    "holds img_align_celeba/ and list_eval_partition.txt, and pass it as data_dir (--data-dir)")


def _locate(root: Path) -> tuple[Path, Path]:
    """(partition file, image folder): in `root`, `root`/celeba, or the official Eval/ + Img/."""
    for base in (root, root / "celeba"):
        lists = [base / "list_eval_partition.txt", base / "Eval" / "list_eval_partition.txt"]
        images = [base / "img_align_celeba", base / "Img" / "img_align_celeba"]
        found_list = next((p for p in lists if p.is_file()), None)
        found_images = next((p for p in images if p.is_dir()), None)
        if found_list and found_images:
            return found_list, found_images
        if found_list:
            zipped = " (img_align_celeba.zip is there: unzip it)" if (
                base / "img_align_celeba.zip").is_file() else ""
            raise missing(images[0], f"CelebA image folder img_align_celeba/{zipped}",
                          CELEBA_HOWTO)
    raise missing(root / "list_eval_partition.txt", "CelebA split file list_eval_partition.txt",
                  CELEBA_HOWTO)


def read_partition(path: Path) -> list[tuple[str, int]]:
    """Parse ``list_eval_partition.txt`` into (file name, partition) pairs."""
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read {path}: {e}. Got an unreadable file.", path=path,
                           howto=CELEBA_HOWTO) from e
    entries = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in {"0", "1", "2"} or "/" in fields[0]:
            raise DatasetError(
                f"{path}:{number}: each line must be '<image file> <0|1|2>'. Got {line!r}.",
                path=path, howto=CELEBA_HOWTO)
        entries.append((fields[0], int(fields[1])))
    if not entries:
        raise DatasetError(f"{path} lists no images. Got an empty file.", path=path,
                           howto=CELEBA_HOWTO)
    return entries


def load_celeba(root: Path, split: str, crop: str = "none", size: int = 64) -> FileImageDataset:
    """CelebA `split` (train: partition 0, test: partition 2) as lazily decoded uint8
    ``[3, size, size]`` images; `crop` is "none" (official DenseFlow) or "realnvp"."""
    if crop not in CELEBA_CROPS:
        raise DatasetOptionError(f"celeba option crop must be one of {list(CELEBA_CROPS)}. "
                                 f"Got {crop!r}.")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise DatasetOptionError(f"celeba option size must be a positive int. Got {size!r}.")
    list_file, image_dir = _locate(root)
    wanted = CELEBA_PARTITIONS[split]
    files = [image_dir / name for name, part in read_partition(list_file) if part == wanted]
    if not files:
        raise DatasetError(f"{list_file} has no image in partition {wanted} ({split}). Got "
                           "none.", path=list_file, howto=CELEBA_HOWTO)
    if not files[0].is_file():
        raise missing(files[0], f"CelebA image {files[0].name} listed in {list_file.name}",
                      CELEBA_HOWTO)
    decoder = ImageDecoder(mode="RGB", size=(size, size),
                           box=REALNVP_BOX if crop == "realnvp" else None, howto=CELEBA_HOWTO)
    return FileImageDataset("celeba", split, root, files, decoder, (3, size, size))
