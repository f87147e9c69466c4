"""Op `additive_coupling` (NICE, Dinh et al. 2014): z2 = x2 + t(x1, conditions), log|det| = 0."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from flowgraph.core.op import Example, OpDef
from flowgraph.core.registry import NetSpec, nets
from flowgraph.core.types import OpParams, TensorType
from flowgraph.errors import ShapeError
from flowgraph.ops.base import FlowModule


class AdditiveCouplingParams(OpParams):
    net: NetSpec


class AdditiveCoupling(FlowModule):
    def __init__(self, net: torch.nn.Module, split: int):
        super().__init__()
        self.net = net
        self.split = split

    def forward(self, x: Tensor, cond: list[Tensor], noise: Tensor | None
                ) -> tuple[Tensor, Tensor]:
        x1, x2 = x[:, :self.split], x[:, self.split:]
        t = self.net(torch.cat([x1] + cond, 1))
        return torch.cat([x1, x2 + t], 1), x.new_zeros(x.shape[0])

    @torch.jit.export
    def inverse(self, y: Tensor, cond: list[Tensor]) -> tuple[Tensor, Tensor]:
        y1, y2 = y[:, :self.split], y[:, self.split:]
        t = self.net(torch.cat([y1] + cond, 1))
        return torch.cat([y1, y2 - t], 1), y.new_zeros(y.shape[0])


class AdditiveCouplingOp(OpDef):
    name = "additive_coupling"
    Params = AdditiveCouplingParams
    summary = "additive coupling x2 -> x2 + t(x1, conditions) (NICE); volume preserving"
    conditions = "optional"
    examples = (
        Example({"net": {"kind": "zero_linear"}}, (TensorType((4,)),)),
        Example({"net": {"kind": "glow", "hidden": 4}}, (TensorType((3, 4, 4)),),
                (TensorType((2, 4, 4)),)),
    )

    def infer(self, p: Any, inputs: list[TensorType], conds: list[TensorType]
              ) -> dict[str, TensorType]:
        (x,) = inputs
        self.require_continuous(x, self.name)
        if x.shape[0] < 2 or any(c.shape[1:] != x.shape[1:] for c in conds):
            raise ShapeError("additive_coupling needs 2+ channels and conditions of the "
                             "input's other dimensions", found=f"{x} with {len(conds)} conds")
        nets().get(p.net.kind).check(p.net, x)
        return {"out": TensorType(x.shape)}

    def build(self, p: Any, inputs: list[TensorType], conds: list[TensorType]
              ) -> AdditiveCoupling:
        x = inputs[0]
        c = x.shape[0]
        split = c - c // 2
        in_ch = split + sum(t.shape[0] for t in conds)
        return AdditiveCoupling(nets().get(p.net.kind).build(p.net, in_ch, c // 2, x.is_image),
                                split)
