r"""`dequantize_uniform`: n-bit integers → continuous values in [0, 1) by adding uniform noise."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from flowgraph.core.op import Example, OpDef
from flowgraph.core.types import OpParams, Shape, TensorType
from flowgraph.errors import ShapeError
from flowgraph.ops.base import FlowModule

__all__ = ["DequantizeUniform", "DequantizeUniformParams", "Dequantizer", "DequantizerOp", "require_discrete"]


def require_discrete(x: TensorType, op: str) -> None:
    """Dequantization needs n-bit integer data (at most 16 bits, for float32 exactness)."""
    if x.bits is None:
        raise ShapeError(f"{op} needs discrete input (n-bit integers)",
                         found=f"continuous tensor of shape {list(x.shape)}",
                         hint="declare `bits` (e.g. bits: 8) on the data input")
    if x.bits > 16:
        raise ShapeError(f"{op} supports at most 16 bits (beyond that float32 cannot hold "
                         "x + u exactly)", found=f"bits = {x.bits}")


class Dequantizer(FlowModule):
    r"""What every dequantizer shares: y = (x + u)/2^bits, the −D·bits·ln 2 term, the inverse.

    u is clamped to [ε, 1 − ε] with ε = 2^max(−10, bits − 23): then x + u stays inside
    (x, x + 1) in float32 (a 24-bit significand) with a margin of ε, so the inverse
    x = clamp(floor(y·2^bits), 0, 2^bits − 1) stays exact after the rounding errors of a deep
    flow's inverse (without the lower margin, u ≈ 1e-5 was seen to come back as x − 1). The
    clamp moves a probability mass of about ε per element to the interval ends.
    The inverse returns integer values in the float dtype of `y` and a zero log-det.
    """

    def __init__(self, bits: int, dim: int):
        super().__init__()
        self.levels = float(2**bits)
        self.u_min = 2.0 ** max(-10, bits - 23)
        self.u_max = 1.0 - self.u_min
        self.logdet_bins = -dim * bits * math.log(2.0)

    def place(self, x: Tensor, u: Tensor) -> Tensor:
        """y = (x + u)/2^bits with u kept inside [ε, 1 − ε]."""
        return (x.to(u.dtype) + u.clamp(self.u_min, self.u_max)) / self.levels

    @torch.jit.export
    def inverse(self, y: Tensor, cond: list[Tensor]) -> tuple[Tensor, Tensor]:
        x = torch.floor(y * self.levels).clamp(0.0, self.levels - 1.0)
        return x, y.new_zeros(y.shape[0])


class DequantizeUniformParams(OpParams):
    """The number of bits comes from the input's type (``bits`` on the data declaration)."""


class DequantizeUniform(Dequantizer):
    r"""y = (x + u)/2^bits with u = Φ(n), n ~ N(0, I) given as `noise` (so u ~ U(0, 1)).

    The returned log-det is −D·bits·ln 2: the bound's term log 2^{−bits·D} − log q(u|x) with
    q = 1 (Theriault; Ho et al., Flow++). Taking the noise as standard normal keeps one noise
    convention for every stochastic op; Φ(n) = ½(1 + erf(n/√2)).
    """

    def forward(self, x: Tensor, cond: list[Tensor], noise: Tensor | None
                ) -> tuple[Tensor, Tensor]:
        if noise is None:
            raise RuntimeError("dequantize_uniform needs noise: standard normal of x's shape")
        u = 0.5 * (1.0 + torch.erf(noise * (0.5**0.5)))
        return self.place(x, u), noise.new_full([noise.shape[0]], self.logdet_bins)


class DequantizerOp(OpDef):
    """Flags every dequantization op shares: stochastic, not bijective, needs no condition
    to invert (floor), and the only op allowed to read discrete data."""

    role = "dequantize"
    bijective = False
    stochastic = True
    inverse_needs_conditions = False
    dequantizes = True


class _DequantizeUniformOp(DequantizerOp):
    name = "dequantize_uniform"
    Params = DequantizeUniformParams
    summary = "uniform dequantization y = (x + u)/2^bits, u = Phi(noise)"
    examples = (
        Example({}, (TensorType((3, 4, 4), 8),)),
        Example({}, (TensorType((5,), 3),)),
    )

    def infer(self, p: Any, inputs: list[TensorType], conds: list[TensorType]
              ) -> dict[str, TensorType]:
        (x,) = inputs
        require_discrete(x, self.name)
        return {"out": TensorType(x.shape)}

    def noise_shape(self, p: Any, inputs: list[TensorType]) -> Shape | None:
        return inputs[0].shape

    def build(self, p: Any, inputs: list[TensorType], conds: list[TensorType]
              ) -> DequantizeUniform:
        self.infer(p, inputs, conds)  # raises on continuous input, so bits is set below
        x = inputs[0]
        return DequantizeUniform(int(x.bits or 0), x.numel)
