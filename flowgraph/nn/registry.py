r"""`NetDef` and `NetRegistry`: the closed set of conditioner networks a coupling can use.

A conditioner is a plain, non-invertible `nn.Module` mapping ``in_ch`` features to ``out_ch``
features (channels of an image, or the last dimension of a vector). Its last layer is
zero-initialised so that the coupling using it starts at its scale function's value at zero.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any, ClassVar

from torch import nn

from flowgraph.errors import ShapeError
from flowgraph.ops.registry import OpParams, TensorType

__all__ = ["NetDef", "NetParams", "NetRegistry"]


class NetParams(OpParams):
    """Base of conditioner parameter models; subclasses add ``kind: Literal["..."]``."""


class NetDef:
    """A kind of conditioner network. Subclass requirements:

    - `kind` and `Params` (a `NetParams` subclass whose `kind` field is ``Literal[kind]``);
    - `param_count(p, in_ch, out_ch, image)` equal to the built module's parameter count;
    - `build(p, in_ch, out_ch, image)` returning a module with ``forward(h: Tensor) -> Tensor``
      whose last layer is zero-initialised;
    - `check(p, x)` raising `ShapeError` when the net cannot run on tensors of type `x`
      (e.g. an image net given a vector). `x` is the conditioner's input type.
    """

    kind: ClassVar[str]
    Params: ClassVar[type[NetParams]]
    image: ClassVar[bool | None] = None  # True: images only, False: vectors only, None: both

    def check(self, p: Any, x: TensorType) -> None:
        if self.image is True and len(x.shape) != 3:
            raise ShapeError(f"conditioner {self.kind!r} needs image features [C, H, W]",
                             found=f"shape {list(x.shape)}")
        if self.image is False and len(x.shape) != 1:
            raise ShapeError(f"conditioner {self.kind!r} needs vector features [D]",
                             found=f"shape {list(x.shape)}",
                             hint="use an image conditioner such as 'glow' for [C, H, W] data")

    def param_count(self, p: Any, in_ch: int, out_ch: int, image: bool) -> int:
        raise NotImplementedError

    def build(self, p: Any, in_ch: int, out_ch: int, image: bool) -> nn.Module:
        raise NotImplementedError


class NetRegistry:
    """kind -> NetDef, built from an explicit list."""

    def __init__(self, nets: Iterable[NetDef]):
        self._nets = {n.kind: n for n in nets}

    def get(self, kind: str) -> NetDef:
        if kind not in self._nets:
            close = difflib.get_close_matches(kind, list(self._nets), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"unknown conditioner kind {kind!r}; known: "
                             f"{', '.join(sorted(self._nets))}.{hint}")
        return self._nets[kind]

    def kinds(self) -> list[str]:
        return sorted(self._nets)

    def __iter__(self):
        return iter(self._nets.values())
