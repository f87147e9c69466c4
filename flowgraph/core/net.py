r"""The conditioner contract: `NetDef`, a kind of non-invertible network a coupling uses (the
field type of a ``net:`` parameter, `NetSpec`, lives with the registry it validates against).

A conditioner maps ``in_ch`` features to ``out_ch`` features (channels of an image, or the last
dimension of a vector). Its last layer is zero-initialised so that the coupling using it starts
at its scale function's value at zero.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from flowgraph.core.types import OpParams, TensorType
from flowgraph.errors import ShapeError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["NetDef", "NetParams"]


class NetParams(OpParams):
    """Base of conditioner parameter models; subclasses add ``kind: Literal["..."]``."""


class NetDef:
    """A kind of conditioner network. A subclass in any module of `flowgraph.nn` (or of a
    plugin's ``flowgraph.nets`` entry point) that sets `kind` is registered; it declares:

    - `kind` and `Params` (a `NetParams` subclass whose `kind` field is ``Literal[kind]``);
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

    def build(self, p: Any, in_ch: int, out_ch: int, image: bool) -> nn.Module:
        raise NotImplementedError
