r"""Training-time augmentations of uint8 images, as in the official DenseFlow code, in torch.

Each augmentation is a picklable callable ``aug(x, generator=None) -> Tensor`` taking one image
``[C, H, W]`` or a batch ``[N, C, H, W]`` (each image drawn independently) of any dtype on any
device; all randomness comes from `generator` (a CPU ``torch.Generator``; ``None`` uses the
global one), so a seeded generator reproduces the output exactly.

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

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _as_batch(x)
        return x


@dataclass(frozen=True)
class HorizontalFlip:
    """Flip each image left-right with probability `p`."""

    p: float = 0.5

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        batch, single = _as_batch(x)
        flip = (torch.rand(len(batch), generator=generator) < self.p).to(x.device)
        out = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
        return out[0] if single else out


@dataclass(frozen=True)
class Eta:
    """Flip + edge pad + random integer translation + center crop (see the module docstring)."""

    fraction: float = ETA_FRACTION

    def _axis(self, size: int, shift: Tensor) -> tuple[Tensor, Tensor]:
        """Source index (clamped = edge padding) and in-padded-image mask for each output."""
        pad = eta_padding(size, self.fraction)
        source = torch.arange(size)[None, :] - shift[:, None]
        inside = (source >= -pad) & (source < size + pad)
        return source.clamp(0, size - 1), inside

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        batch, single = _as_batch(x)
        n, c, h, w = batch.shape
        flip = torch.rand(n, generator=generator) < 0.5
        reach = torch.tensor([self.fraction * (w + 2 * eta_padding(w, self.fraction)),
                              self.fraction * (h + 2 * eta_padding(h, self.fraction))])
        shift = torch.round((torch.rand(n, 2, generator=generator) * 2 - 1) * reach).long()
        rows, rows_in = self._axis(h, shift[:, 1])
        cols, cols_in = self._axis(w, shift[:, 0])
        cols = torch.where(flip[:, None], w - 1 - cols, cols)  # flip happens before the shift
        index = (torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None],
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
