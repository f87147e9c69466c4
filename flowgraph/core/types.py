r"""Static tensor types and the base of every parameters model."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

__all__ = ["OpParams", "Shape", "TensorType", "numel"]

Shape = tuple[int, ...]


def numel(shape: Iterable[int]) -> int:
    return math.prod(shape)


@dataclass(frozen=True)
class TensorType:
    """Static type of a tensor edge, without the batch dimension.

    `bits` is set for discrete data (n-bit integers in [0, 2**bits)); continuous tensors have None.
    """

    shape: Shape
    bits: int | None = None

    @property
    def numel(self) -> int:
        return numel(self.shape)

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    def __str__(self) -> str:
        s = "×".join(str(d) for d in self.shape)
        return f"{s} ({self.bits}-bit)" if self.bits else s


class OpParams(BaseModel):
    """Base of every op's (and conditioner's) parameters: unknown keys are errors, values are
    immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
