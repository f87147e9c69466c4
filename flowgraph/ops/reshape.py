r"""Shape ops: `squeeze` / `unsqueeze` (space ↔ channels) and the inline `split` / `concat`.

All are volume-preserving rearrangements (log|det| = 0) and keep discrete data discrete.
`split` and `concat` have no module: each states one torch call to the code generator.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import PositiveInt
from torch import Tensor

from flowgraph.core.op import Emitter, Example, OpDef, Site
from flowgraph.core.types import OpParams, TensorType
from flowgraph.errors import ShapeError
from flowgraph.ops.base import FlowModule

__all__ = ["ConcatParams", "SplitParams", "Squeeze", "SqueezeParams", "Unsqueeze", "split_sizes"]


class SqueezeParams(OpParams):
    """Factor 2 only (the official DenseFlow and Glow squeeze)."""


def _squeeze(x: Tensor, c: int, h: int, w: int) -> Tensor:
    # [B, C, H, W] -> [B, C, H/2, dy, W/2, dx] -> [B, C, dy, dx, H/2, W/2]: channel 4c+2dy+dx.
    x = x.reshape(-1, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(-1, 4 * c, h // 2, w // 2)


def _unsqueeze(y: Tensor, c: int, h: int, w: int) -> Tensor:
    y = y.reshape(-1, c, 2, 2, h // 2, w // 2).permute(0, 1, 4, 2, 5, 3)
    return y.reshape(-1, c, h, w)


class Squeeze(FlowModule):
    r"""Space-to-channel: [C, H, W] → [4C, H/2, W/2]; output channel 4c + 2·dy + dx holds input
    channel c at sub-pixel (dy, dx) (as DenseFlow's ``Squeeze2d``). log|det| = 0.

    `c`, `h`, `w` are the static data-side sizes; the batch stays dynamic.
    """

    def __init__(self, c: int, h: int, w: int):
        super().__init__()
        self.c, self.h, self.w = c, h, w

    def forward(self, x: Tensor, cond: list[Tensor], noise: Tensor | None
                ) -> tuple[Tensor, Tensor]:
        return _squeeze(x, self.c, self.h, self.w), x.new_zeros(x.shape[0])

    @torch.jit.export
    def inverse(self, y: Tensor, cond: list[Tensor]) -> tuple[Tensor, Tensor]:
        return _unsqueeze(y, self.c, self.h, self.w), y.new_zeros(y.shape[0])


class Unsqueeze(FlowModule):
    """Channel-to-space, the inverse of `Squeeze`: [4C, H/2, W/2] → [C, H, W].

    `c`, `h`, `w` are the sizes of the *output* (the unsqueezed side).
    """

    def __init__(self, c: int, h: int, w: int):
        super().__init__()
        self.c, self.h, self.w = c, h, w

    def forward(self, x: Tensor, cond: list[Tensor], noise: Tensor | None
                ) -> tuple[Tensor, Tensor]:
        return _unsqueeze(x, self.c, self.h, self.w), x.new_zeros(x.shape[0])

    @torch.jit.export
    def inverse(self, y: Tensor, cond: list[Tensor]) -> tuple[Tensor, Tensor]:
        return _squeeze(y, self.c, self.h, self.w), y.new_zeros(y.shape[0])


class _SqueezeOp(OpDef):
    name = "squeeze"
    Params = SqueezeParams
    summary = "space-to-channel by 2: [C, H, W] -> [4C, H/2, W/2] (channel 4c + 2dy + dx)"
    role = "reshape"
    examples = (
        Example({}, (TensorType((3, 4, 4)),)),
    )

    def infer(self, p: Any, inputs: list[TensorType], conds: list[TensorType]
              ) -> dict[str, TensorType]:
        c, h, w = self.require_image(inputs[0])
        if h % 2 or w % 2:
            raise ShapeError("squeeze needs even H and W", found=f"H×W = {h}×{w}",
                             hint="crop or pad the data to an even size")
        return {"out": TensorType((4 * c, h // 2, w // 2), inputs[0].bits)}

    def build(self, p: Any, inputs: list[TensorType], conds: list[TensorType]) -> Squeeze:
        return Squeeze(*inputs[0].shape)


class _UnsqueezeOp(OpDef):
    name = "unsqueeze"
    Params = SqueezeParams
    summary = "channel-to-space by 2: [4C, H, W] -> [C, 2H, 2W] (inverse of squeeze)"
    role = "reshape"
    examples = (
        Example({}, (TensorType((8, 2, 2)),)),
    )

    def infer(self, p: Any, inputs: list[TensorType], conds: list[TensorType]
              ) -> dict[str, TensorType]:
        c, h, w = self.require_image(inputs[0])
        if c % 4:
            raise ShapeError("unsqueeze needs a channel count divisible by 4", found=f"C = {c}")
        return {"out": TensorType((c // 4, 2 * h, 2 * w), inputs[0].bits)}

    def build(self, p: Any, inputs: list[TensorType], conds: list[TensorType]) -> Unsqueeze:
        c, h, w = inputs[0].shape
        return Unsqueeze(c // 4, 2 * h, 2 * w)


# -- inline ops ------------------------------------------------------------------------------
class SplitParams(OpParams):
    """`sizes`: channels of (first, second); default (C − C//2, C//2), i.e. ⌈C/2⌉ first."""

    sizes: tuple[PositiveInt, PositiveInt] | None = None


def split_sizes(p: Any, x: TensorType) -> tuple[int, int]:
    c = x.shape[0]
    if p.sizes is None:
        return c - c // 2, c // 2
    return p.sizes


class _SplitOp(OpDef):
    name = "split"
    Params = SplitParams
    summary = "split along channels into ports first/second (inline torch.split)"
    role = "reshape"
    examples = (
        Example({}, (TensorType((3, 4, 4)),)),
        Example({"sizes": [1, 4]}, (TensorType((5,)),)),
    )
    outputs = ("first", "second")

    def infer(self, p: Any, inputs: list[TensorType], conds: list[TensorType]
              ) -> dict[str, TensorType]:
        (x,) = inputs
        if not x.shape or x.shape[0] < 2:
            raise ShapeError("split needs at least 2 channels", found=f"shape {list(x.shape)}")
        s1, s2 = split_sizes(p, x)
        if s1 + s2 != x.shape[0]:
            raise ShapeError(f"split sizes must sum to the channel count {x.shape[0]}",
                             found=f"sizes [{s1}, {s2}] (sum {s1 + s2})")
        rest = x.shape[1:]
        return {"first": TensorType((s1, *rest), x.bits),
                "second": TensorType((s2, *rest), x.bits)}

    def emit_forward(self, e: Emitter, s: Site) -> None:
        e.call(torch.split, s.inputs[0], list(split_sizes(s.params, s.in_types[0])), dim=1,
               out=s.outputs)

    def emit_inverse(self, e: Emitter, s: Site) -> None:
        e.call(torch.cat, list(s.inputs), dim=1, out=s.outputs)


class ConcatParams(OpParams):
    """Concatenation along channels (dim 1) has no parameters."""


class _ConcatOp(OpDef):
    name = "concat"
    Params = ConcatParams
    summary = "concatenate 2+ inputs along channels (inline torch.cat)"
    role = "reshape"
    examples = (
        Example({}, (TensorType((3, 4, 4)), TensorType((2, 4, 4)),)),
        Example({}, (TensorType((5,)), TensorType((1,)), TensorType((2,)),)),
    )
    n_inputs = None

    def infer(self, p: Any, inputs: list[TensorType], conds: list[TensorType]
              ) -> dict[str, TensorType]:
        if len(inputs) < 2:
            raise ShapeError("concat needs at least 2 inputs", found=f"{len(inputs)}")
        first = inputs[0]
        for i, x in enumerate(inputs[1:], 1):
            if len(x.shape) != len(first.shape) or x.shape[1:] != first.shape[1:]:
                raise ShapeError("concat inputs must agree on every dimension but channels",
                                 found=f"input 0 {list(first.shape)} vs input {i} "
                                       f"{list(x.shape)}")
            if x.bits != first.bits:
                raise ShapeError("concat inputs must all be continuous or all have the same "
                                 "bits", found=f"input 0: {first}, input {i}: {x}")
        c = sum(x.shape[0] for x in inputs)
        return {"out": TensorType((c, *first.shape[1:]), first.bits)}

    def emit_forward(self, e: Emitter, s: Site) -> None:
        e.call(torch.cat, list(s.inputs), dim=1, out=s.outputs)

    def emit_inverse(self, e: Emitter, s: Site) -> None:
        e.call(torch.split, s.inputs[0], [t.shape[0] for t in s.in_types], dim=1,
               out=s.outputs)
