r"""`dequantize_variational`: Flow++-style variational dequantization as DenseFlow uses it.

The dequantization noise u comes from a conditional flow q(u | x) instead of U(0, 1):

    n ~ N(0, I) (the op's noise, shape [4C, H/2, W/2])
    ε = μ_c + σ_c·n                    learned per-channel Gaussian
    h = conv1x1 ∘ [coupling(·| ctx) ∘ conv1x1]^steps (ε),  ctx = context_net(x)
    u = sigmoid(unsqueeze(h))          u ∈ (0, 1)^D
    y = (x + u) / 2^bits

and the op contributes ``−D·bits·ln 2 − log q(u | x)`` to the bound, with
``log q(u|x) = log N(ε; μ, σ) − log|det ∂u/∂ε|``. The inverse is ``floor(y·2^bits)``.

Layer facts (reference §7): the context net is DenseBlock(C→64) → 2×2 stride-2 conv →
DenseBlock(64→64); each coupling conditions on [first half, context] through a residual dense
conditioner (``dense_residual``); plain 1×1 convolutions; scale exp(2·tanh(s/2)). With 3-channel
8-bit input this op has 2,395,784 parameters, as the official model.

References:
    Ho et al., "Flow++", https://arxiv.org/abs/1902.00275 (variational dequantization);
    Grcić et al., "Densely connected normalizing flows", https://arxiv.org/abs/2106.04627.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import Tensor, nn

from flowgraph.core.op import Example
from flowgraph.core.registry import NetSpec, nets
from flowgraph.core.types import OpParams, Shape, TensorType
from flowgraph.nn.denseflow_net import DenseResidualNetParams
from flowgraph.nn.dequant_context import (
    DequantContextNet,
    check_dequant_context,
)
from flowgraph.ops.base import FlowModule, sum_per_sample
from flowgraph.ops.conv1x1 import PlainConv1x1
from flowgraph.ops.coupling import AffineCoupling
from flowgraph.ops.dequantize import Dequantizer, DequantizerOp, require_discrete
from flowgraph.ops.reshape import _unsqueeze
from flowgraph.ops.scales import ScaleName, resolve_scale

__all__ = ["DequantizeVariational", "DequantizeVariationalParams"]


class DequantizeVariationalParams(OpParams):
    steps: PositiveInt = 4
    context_width: PositiveInt = 64
    context_depth: PositiveInt = 4
    context_growth: PositiveInt = 16
    net: NetSpec = Field(default_factory=lambda: DenseResidualNetParams(kind="dense_residual"))
    scale: ScaleName = "exp_2tanh"
    # "margin": keep u in [ε, 1 − ε] (see `Dequantizer`); "none": use q(u|x)'s sample as is,
    # like the authors' code (bit-faithful evaluation of their weights; inverse less robust)
    clamp: Literal["margin", "none"] = "margin"


class _Step(nn.Module):
    """One step of q(u|x): 1×1 conv, then an affine coupling conditioned on the context."""

    def __init__(self, conv: FlowModule, coupling: FlowModule):
        super().__init__()
        self.conv = conv
        self.coupling = coupling

    def forward(self, h: Tensor, ctx: Tensor) -> tuple[Tensor, Tensor]:
        h, ld1 = self.conv(h, [], None)
        h, ld2 = self.coupling(h, [ctx], None)
        return h, ld1 + ld2


class DequantizeVariational(Dequantizer):
    """See the module docstring; `noise` is standard normal of shape [B, 4C, H/2, W/2]."""

    def __init__(self, channels: int, height: int, width: int, bits: int, p: Any):
        super().__init__(bits, channels * height * width)
        if p.clamp == "none":  # sigmoid output already lies in [0, 1]: the clamp is a no-op
            self.u_min, self.u_max = 0.0, 1.0
        c4, spatial = 4 * channels, (height // 2) * (width // 2)
        self.c, self.h, self.w = channels, height, width
        self.context = DequantContextNet(channels, bits, p.context_width, p.context_depth,
                                         p.context_growth)
        self.base_mean = nn.Parameter(torch.zeros(c4))
        self.base_log_std = nn.Parameter(torch.zeros(c4))
        net_def = nets().get(p.net.kind)
        half = c4 - c4 // 2
        scale = int(resolve_scale(p.scale))
        self.steps = nn.ModuleList([
            _Step(PlainConv1x1(c4, True, spatial),
                  AffineCoupling(net_def.build(p.net, half + p.context_width, 2 * (c4 // 2),
                                               True),
                                 half, c4 // 2, scale, True, True))
            for _ in range(p.steps)])
        self.final = PlainConv1x1(c4, True, spatial)

    def log_q_and_u(self, x: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """u ~ q(u|x) driven by `noise`, and log q(u|x) per sample."""
        ctx = self.context(x)
        mean = self.base_mean.view(1, -1, 1, 1)
        log_std = self.base_log_std.view(1, -1, 1, 1)
        eps = mean + torch.exp(log_std) * noise
        log_q = (-0.5 * (noise * noise + math.log(2 * math.pi)) - log_std).flatten(1).sum(1)
        h = eps
        for step in self.steps:
            h, ld = step(h, ctx)
            log_q = log_q - ld
        h, ld = self.final(h, [], None)
        log_q = log_q - ld
        h = _unsqueeze(h, self.c, self.h, self.w)
        log_q = log_q - sum_per_sample(F.logsigmoid(h) + F.logsigmoid(-h))
        return torch.sigmoid(h), log_q

    def forward(self, x: Tensor, cond: list[Tensor], noise: Tensor | None
                ) -> tuple[Tensor, Tensor]:
        if noise is None:
            raise RuntimeError("dequantize_variational needs noise of shape [B, 4C, H/2, W/2]")
        u, log_q = self.log_q_and_u(x, noise)
        return self.place(x, u), self.logdet_bins - log_q

    def freeze(self) -> None:
        for m in self.modules():
            if m is not self and isinstance(m, FlowModule):
                m.freeze()


class _DequantizeVariationalOp(DequantizerOp):
    name = "dequantize_variational"
    Params = DequantizeVariationalParams
    summary = "variational dequantization: u ~ q(u|x), a conditional flow (Flow++ / DenseFlow)"
    examples = (
        Example({"steps": 2, "context_width": 8, "context_depth": 1, "context_growth": 4,
                 "net": {"kind": "dense_residual", "width": 8, "depth": 1, "growth": 2}}, (TensorType((1, 4, 4), 8),)),
    )

    def infer(self, p: Any, inputs: list[TensorType], conds: list[TensorType]
              ) -> dict[str, TensorType]:
        (x,) = inputs
        require_discrete(x, self.name)
        check_dequant_context(x.shape)
        nets().get(p.net.kind).check(p.net, TensorType((2 * x.shape[0] + p.context_width,
                                                              x.shape[1] // 2, x.shape[2] // 2)))
        return {"out": TensorType(x.shape)}

    def noise_shape(self, p: Any, inputs: list[TensorType]) -> Shape:
        c, h, w = inputs[0].shape
        return (4 * c, h // 2, w // 2)

    def build(self, p: Any, inputs: list[TensorType], conds: list[TensorType]
              ) -> DequantizeVariational:
        x = inputs[0]
        c, h, w = x.shape
        return DequantizeVariational(c, h, w, int(x.bits or 8), p)
