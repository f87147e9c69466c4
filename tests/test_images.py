"""PNG grids: the nearest-neighbour upscaling that makes small images visible, and raw size."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from flowgraph.images import make_grid, save_grid, upscale


def read_png(path: Path) -> np.ndarray:
    """Decode the 8-bit, filter-0 PNGs that `write_png` writes (gray or RGB)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h, depth, color = struct.unpack(">IIBB", data[16:26])
    assert depth == 8 and color in (0, 2)
    idat, pos = b"", 8
    while pos < len(data):
        (n,), tag = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        if tag == b"IDAT":
            idat += data[pos + 8:pos + 8 + n]
        pos += 12 + n
    c = 1 if color == 0 else 3
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + w * c)
    assert (raw[:, 0] == 0).all()  # filter type 0 on every row
    return raw[:, 1:].reshape(h, w, c)


def images(n: int = 16, c: int = 1, side: int = 28) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, c, side, side), generator=g)


@pytest.mark.parametrize("c", [1, 3])
def test_default_grid_is_upscaled_nearest_neighbour(tmp_path, c):
    x = images(16, c)
    raw = make_grid(x)  # 4×4 tiles of 28 px, 2 px padding: 122 px
    assert raw.shape == (122, 122, c)
    big = read_png(save_grid(x, tmp_path / "g.png"))
    f = 5  # ceil(512 / 122)
    assert big.shape == (122 * f, 122 * f, c) and min(big.shape[:2]) >= 512
    blocks = big.reshape(122, f, 122, f, c)
    assert (blocks == blocks[:, :1, :, :1]).all()  # every f×f block is one colour
    assert np.array_equal(blocks[:, 0, :, 0], raw)  # ... the raw grid's pixel


def test_raw_size_is_kept_on_request(tmp_path):
    x = images(6, 1, 4)
    for raw_option in (None, 0):
        grid = read_png(save_grid(x, tmp_path / "g.png", nrow=3, min_side=raw_option))
        assert np.array_equal(grid, make_grid(x, 3))
    assert grid.shape == (14, 20, 1)


def test_factor_follows_the_longer_side_and_is_never_below_one():
    wide = np.zeros((14, 200, 1), np.uint8)
    assert upscale(wide, 512).shape == (42, 600, 1)  # ceil(512 / 200) = 3
    big = np.zeros((600, 300, 3), np.uint8)
    assert upscale(big, 512) is big
    with pytest.raises(ValueError, match="min_side"):
        upscale(wide, -1)
