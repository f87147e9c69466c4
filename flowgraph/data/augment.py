r"""Training-time augmentations of uint8 images, as in the official DenseFlow code, in torch.

Each augmentation is a picklable callable ``aug(x, generator=None, *, total=None, offset=0)
-> Tensor`` taking one image ``[C, H, W]`` or a batch ``[N, C, H, W]`` (each image drawn
independently) of any dtype on any device; all randomness comes from `generator` and is drawn
on its device (``None``: the global CPU generator), so a seeded generator reproduces the output
exactly, and a CUDA generator keeps a CUDA batch free of host transfers. With `total`, the
random parameters are drawn for `total` images and images ``offset .. offset + N - 1`` of them
are used: each DDP rank draws the global batch's parameters and takes its own slice, so the
augmentation of an image does not depend on the number of processes.

- ``none``: identity.
- ``horizontal_flip``: flip left-right with probability 1/2.
- ``eta``: horizontal flip (p = 1/2), edge-pad p = ceil(0.04 H) pixels (2 at 32, 3 at 64),
  translate by (tx, ty) = (round(U(-m_x, m_x)), round(U(-m_y, m_y))) with m = 0.04 x the padded
  width / height (torchvision ``RandomAffine(translate=(0.04, 0.04))`` on the padded image),
  filling with 0, then center-crop back to H x W. So tx, ty are in {-1, 0, 1} at 32 and in
  {-3..3} at 64, and every pixel moves by at most p (the fill never shows at these sizes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from flowgraph.data.errors import DatasetOptionError

__all__ = ["AUGMENTATIONS", "Eta", "HorizontalFlip", "NoAugment", "eta_padding",
           "make_augment"]

AUGMENTATIONS = ("none", "horizontal_flip", "eta")

ETA_FRACTION = 0.04


def eta_padding(size: int, fraction: float = ETA_FRACTION) -> int:
    """Edge padding of `eta` for an image side of `size` pixels: ``ceil(fraction * size)``."""
    return math.ceil(fraction * size)


def _draw_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _rows(n: int, total: int | None, offset: int) -> tuple[int, slice]:
    """How many parameter rows to draw, and which of them belong to this batch of `n`."""
    total = n if total is None else total
    if not 0 <= offset <= total - n:
        raise ValueError(f"augmentation rows {offset}..{offset + n - 1} must lie in the "
                         f"{total} drawn. Got offset {offset}, batch {n}, total {total}.")
    return total, slice(offset, offset + n)


def _as_batch(x: Tensor) -> tuple[Tensor, bool]:
    if x.ndim == 3:
        return x.unsqueeze(0), True
    if x.ndim == 4:
        return x, False
    raise ValueError(f"augmentations take an image [C, H, W] or a batch [N, C, H, W]. Got shape "
                     f"{tuple(x.shape)}.")


@dataclass(frozen=True)
class NoAugment:
    """Identity (the test split, or ``augment: none``)."""

    def __call__(self, x: Tensor, generator: torch.Generator | None = None, *,
                 total: int | None = None, offset: int = 0) -> Tensor:
        _as_batch(x)
        return x


@dataclass(frozen=True)
class HorizontalFlip:
    """Flip each image left-right with probability `p`."""

    p: float = 0.5

    def __call__(self, x: Tensor, generator: torch.Generator | None = None, *,
                 total: int | None = None, offset: int = 0) -> Tensor:
        batch, single = _as_batch(x)
        total, mine = _rows(len(batch), total, offset)
        draw = torch.rand(total, generator=generator, device=_draw_device(generator))
        flip = (draw[mine] < self.p).to(x.device)
        out = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
        return out[0] if single else out


@dataclass(frozen=True)
class Eta:
    """Flip + edge pad + random integer translation + center crop (see the module docstring)."""

    fraction: float = ETA_FRACTION

    def _axis(self, size: int, shift: Tensor) -> tuple[Tensor, Tensor]:
        """Source index (clamped = edge padding) and in-padded-image mask for each output."""
        pad = eta_padding(size, self.fraction)
        source = torch.arange(size, device=shift.device)[None, :] - shift[:, None]
        inside = (source >= -pad) & (source < size + pad)
        return source.clamp(0, size - 1), inside

    def __call__(self, x: Tensor, generator: torch.Generator | None = None, *,
                 total: int | None = None, offset: int = 0) -> Tensor:
        batch, single = _as_batch(x)
        n, c, h, w = batch.shape
        total, mine = _rows(n, total, offset)
        device = _draw_device(generator)
        flip = (torch.rand(total, generator=generator, device=device) < 0.5)[mine]
        reach_x = self.fraction * (w + 2 * eta_padding(w, self.fraction))
        reach_y = self.fraction * (h + 2 * eta_padding(h, self.fraction))
        draw = torch.rand(total, 2, generator=generator, device=device)[mine] * 2 - 1
        shift_x = torch.round(draw[:, 0] * reach_x).long()  # python scalars: no host copy
        shift_y = torch.round(draw[:, 1] * reach_y).long()
        rows, rows_in = self._axis(h, shift_y)
        cols, cols_in = self._axis(w, shift_x)
        cols = torch.where(flip[:, None], w - 1 - cols, cols)  # flip happens before the shift
        index = (torch.arange(n, device=device)[:, None, None, None],
                 torch.arange(c, device=device)[None, :, None, None],
                 rows[:, None, :, None], cols[:, None, None, :])
        out = batch[tuple(i.to(batch.device) for i in index)]
        keep = (rows_in[:, None, :, None] & cols_in[:, None, None, :]).to(batch.device)
        out = torch.where(keep, out, torch.zeros((), dtype=out.dtype, device=out.device))
        return out[0] if single else out


_MAKERS = {"none": NoAugment, "horizontal_flip": HorizontalFlip, "eta": Eta}


def make_augment(name: str) -> NoAugment | HorizontalFlip | Eta:
    """The augmentation called `name`: one of `AUGMENTATIONS`."""
    if name not in _MAKERS:
        raise DatasetOptionError(f"unknown augmentation; choose one of {list(AUGMENTATIONS)}. "
                                 f"Got {name!r}.")
    return _MAKERS[name]()
