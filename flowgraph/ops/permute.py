r"""`permute`: a fixed channel permutation (swap halves, reverse, or a seeded random one)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from flowgraph.core.op import Example, OpDef
from flowgraph.core.types import OpParams, TensorType
from flowgraph.errors import ShapeError
from flowgraph.ops.base import FlowModule

__all__ = ["Permute", "PermuteParams", "permutation"]


class PermuteParams(OpParams):
    kind: Literal["swap_halves", "reverse", "random"] = "swap_halves"
    seed: int = Field(default=0, ge=0)


def permutation(kind: str, channels: int, seed: int = 0) -> Tensor:
    """The channel order as an index vector: output channel i is input channel perm[i].

    ``swap_halves`` is DenseFlow's SwitchChannels, cat(x[:, h:], x[:, :h]) with h = ⌈C/2⌉: the
    ⌊C/2⌋ channels a coupling just transformed (its last ⌊C/2⌋) come first and so condition
    the next coupling. For odd C the next coupling's x1 (its first ⌈C/2⌉) is those ⌊C/2⌋
    channels plus the first of the untouched ones. ``random`` uses a local generator seeded
    with `seed`, so the global RNG is untouched and the order depends only on (C, seed).
    """
    cpu = torch.device("cpu")  # a fixed index, even while a module is built on `meta`
    if kind == "swap_halves":
        h = channels - channels // 2
        return torch.cat([torch.arange(h, channels, device=cpu), torch.arange(0, h, device=cpu)])
    if kind == "reverse":
        return torch.arange(channels - 1, -1, -1, device=cpu)
    if kind == "random":
        g = torch.Generator().manual_seed(seed)
        return torch.randperm(channels, generator=g, device=cpu)
    raise ValueError(f"unknown permutation kind {kind!r}")


class Permute(FlowModule):
    r"""z = x[:, perm] along dim 1; log|det| = 0 (a permutation matrix has |det| = 1).

    `perm` and its inverse are persistent buffers, so a checkpoint keeps the exact order even
    if torch's ``randperm`` ever changes.
    """

    def __init__(self, perm: Tensor):
        super().__init__()
        self.register_buffer("perm", perm.clone())
        self.register_buffer("inv_perm", torch.argsort(perm))

    def forward(self, x: Tensor, cond: list[Tensor], noise: Tensor | None
                ) -> tuple[Tensor, Tensor]:
        return x.index_select(1, self.perm), x.new_zeros(x.shape[0])

    @torch.jit.export
    def inverse(self, y: Tensor, cond: list[Tensor]) -> tuple[Tensor, Tensor]:
        return y.index_select(1, self.inv_perm), y.new_zeros(y.shape[0])


class _PermuteOp(OpDef):
    name = "permute"
    Params = PermuteParams
    summary = "fixed channel permutation: swap_halves (DenseFlow), reverse, random(seed)"
    examples = (
        Example({"kind": "swap_halves", "seed": 3}, (TensorType((3, 4, 4)),)),
        Example({"kind": "swap_halves", "seed": 3}, (TensorType((5,)),)),
        Example({"kind": "reverse", "seed": 3}, (TensorType((3, 4, 4)),)),
        Example({"kind": "reverse", "seed": 3}, (TensorType((5,)),)),
        Example({"kind": "random", "seed": 3}, (TensorType((3, 4, 4)),)),
        Example({"kind": "random", "seed": 3}, (TensorType((5,)),)),
    )

    def infer(self, p: Any, inputs: list[TensorType], conds: list[TensorType]
              ) -> dict[str, TensorType]:
        (x,) = inputs
        if len(x.shape) == 0:
            raise ShapeError("permute needs a channel dimension", found="a scalar")
        # A permutation keeps integer values integer, so discrete data stays discrete.
        return {"out": TensorType(x.shape, x.bits)}

    def build(self, p: Any, inputs: list[TensorType], conds: list[TensorType]) -> Permute:
        return Permute(permutation(p.kind, inputs[0].shape[0], p.seed))
