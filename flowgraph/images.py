r"""Image grids as PNG files, written with zlib alone (no imaging library needed).

`save_grid` upscales small grids by an integer factor, nearest neighbour, so that 28-pixel
images are big enough to look at (`min_side`, 512 by default); ``min_side=None`` keeps one
file pixel per image pixel.
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["DEFAULT_MIN_SIDE", "make_grid", "save_grid", "upscale", "write_png"]

DEFAULT_MIN_SIDE = 512


def make_grid(images: Tensor, nrow: int | None = None, padding: int = 2,
              pad_value: int = 255) -> np.ndarray:
    """[N, C, H, W] integers in 0..255 (C = 1 or 3) -> one uint8 [rows·H', cols·W', C] image."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, 1 or 3, H, W]. Got {list(images.shape)}.")
    x = images.detach().to("cpu", torch.float32).round().clamp(0, 255).to(torch.uint8).numpy()
    n, c, h, w = x.shape
    cols = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + padding) + padding, cols * (w + padding) + padding, c),
                   pad_value, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        grid[top:top + h, left:left + w] = x[i].transpose(1, 2, 0)
    return grid


def write_png(array: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 [H, W] or [H, W, 1|3] array as an 8-bit grayscale or RGB PNG."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        color = 0
    elif a.ndim == 3 and a.shape[2] == 3:
        color = 2
    else:
        raise ValueError(f"PNG needs [H, W] or [H, W, 3] uint8. Got shape {list(a.shape)}.")
    h, w = a.shape[:2]
    raw = b"".join(b"\x00" + a[y].tobytes() for y in range(h))  # filter type 0 per row

    def chunk(tag: bytes, data: bytes) -> bytes:
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    png = (b"\x89PNG\r\n\x1a\n"
           + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return path


def upscale(array: np.ndarray, min_side: int | None) -> np.ndarray:
    """Repeat every pixel f×f times, f the smallest integer making the longer side at least
    `min_side` pixels (f = 1 when it already is, or when `min_side` is None or 0)."""
    if not min_side:
        return array
    if min_side < 0:
        raise ValueError(f"min_side must be a positive number of pixels or None. "
                         f"Got {min_side}.")
    factor = max(1, math.ceil(min_side / max(array.shape[:2])))
    return array.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else array


def save_grid(images: Tensor, path: str | Path, nrow: int | None = None,
              min_side: int | None = DEFAULT_MIN_SIDE) -> Path:
    """Save [N, C, H, W] images (0..255) as one PNG grid, upscaled (nearest neighbour, an
    integer factor) until its longer side is at least `min_side` pixels; None or 0: raw size."""
    return write_png(upscale(make_grid(images, nrow), min_side), path)
