r"""Fixed element-wise maps: `scalar_affine` and `logit` (plus the continuity check others use)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor

from flowgraph.core.op import Example, OpDef
from flowgraph.core.types import OpParams, TensorType
from flowgraph.ops.base import FlowModule, sum_per_sample

__all__ = ["Logit", "LogitParams", "ScalarAffine", "ScalarAffineParams"]



class ScalarAffineParams(OpParams):
    scale: float = 1.0
    shift: float = 0.0

    @field_validator("scale", "shift")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"must be finite, got {v}")
        return v

    @field_validator("scale")
    @classmethod
    def _nonzero(cls, v: float) -> float:
        if v == 0.0:
            raise ValueError("scale must be nonzero (the map must be invertible)")
        return v


class ScalarAffine(FlowModule):
    r"""y = scale·x + shift, the same constants for every element.

    log|det ∂y/∂x| = D·log|scale| with D the number of elements per sample (constant).
    DenseFlow uses ``shift: -0.5`` after dequantisation.
    """

    def __init__(self, scale: float, shift: float, dim: int):
        super().__init__()
        self.scale = scale
        self.shift = shift
        self.logdet = dim * math.log(abs(scale))

    def forward(self, x: Tensor, cond: list[Tensor], noise: Tensor | None
                ) -> tuple[Tensor, Tensor]:
        return x * self.scale + self.shift, x.new_full((x.shape[0],), self.logdet)

    @torch.jit.export
    def inverse(self, y: Tensor, cond: list[Tensor]) -> tuple[Tensor, Tensor]:
        return (y - self.shift) / self.scale, y.new_full((y.shape[0],), -self.logdet)


class _ScalarAffineOp(OpDef):
    name = "scalar_affine"
    Params = ScalarAffineParams
    summary = "y = scale·x + shift (constant log-det D·log|scale|)"
    examples = (
        Example({"scale": -1.5, "shift": 0.3}, (TensorType((3, 4, 4)),)),
        Example({}, (TensorType((5,)),)),
    )

    def infer(self, p: Any, inputs: list[TensorType], conds: list[TensorType]
              ) -> dict[str, TensorType]:
        (x,) = inputs
        self.require_continuous(x, self.name)
        return {"out": TensorType(x.shape)}

    def build(self, p: Any, inputs: list[TensorType], conds: list[TensorType]) -> ScalarAffine:
        return ScalarAffine(p.scale, p.shift, inputs[0].numel)


class LogitParams(OpParams):
    """`alpha` squeezes (0, 1) into (alpha, 1 - alpha) first, keeping the logit finite at the
    ends: default 1e-6 (RealNVP used 0.05 on CIFAR-10; 0 is allowed for data that provably
    never touches 0 or 1)."""

    alpha: float = Field(default=1e-6, ge=0.0, lt=0.5)


class Logit(FlowModule):
    r"""y = logit(p) with p = α + (1 − 2α)·x, for x in (0, 1).

    log|det ∂y/∂x| = Σ [log(1 − 2α) − log p − log(1 − p)]. Inverse: x = (sigmoid(y) − α)/(1 − 2α),
    whose log-det Σ [log sigmoid(y) + log sigmoid(−y) − log(1 − 2α)] is computed from y with
    logsigmoid, so it stays finite where p is close to 0 or 1.
    """

    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha
        self.log_range = math.log1p(-2.0 * alpha)

    def forward(self, x: Tensor, cond: list[Tensor], noise: Tensor | None
                ) -> tuple[Tensor, Tensor]:
        p = self.alpha + (1.0 - 2.0 * self.alpha) * x
        y = torch.log(p) - torch.log1p(-p)
        ld = self.log_range - torch.log(p) - torch.log1p(-p)
        return y, sum_per_sample(ld)

    @torch.jit.export
    def inverse(self, y: Tensor, cond: list[Tensor]) -> tuple[Tensor, Tensor]:
        x = (torch.sigmoid(y) - self.alpha) / (1.0 - 2.0 * self.alpha)
        ld = F.logsigmoid(y) + F.logsigmoid(-y) - self.log_range
        return x, sum_per_sample(ld)


class _LogitOp(OpDef):
    name = "logit"
    Params = LogitParams
    summary = "y = logit(alpha + (1 - 2 alpha) x), for data in (0, 1)"
    examples = (
        Example({}, (TensorType((3, 4, 4)),), (), (0.05, 0.95)),
        Example({"alpha": 0.05}, (TensorType((5,)),), (), (0.05, 0.95)),
    )

    def infer(self, p: Any, inputs: list[TensorType], conds: list[TensorType]
              ) -> dict[str, TensorType]:
        (x,) = inputs
        self.require_continuous(x, self.name)
        return {"out": TensorType(x.shape)}

    def build(self, p: Any, inputs: list[TensorType], conds: list[TensorType]) -> Logit:
        return Logit(p.alpha)
