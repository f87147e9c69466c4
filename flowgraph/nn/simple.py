r"""Small conditioner networks: `mlp` (vectors), `glow` and `resnet` (images), and `cross_unit`.

Every net maps ``in_ch`` features to ``out_ch`` features and ends with a layer whose weight and
bias are zero, so the affine map that reads it starts at s = t = 0 (the identity for scales with
σ(0) = 1). `param_count` is exact: the contract tests compare it with the built module.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PositiveInt
from torch import Tensor, nn

from flowgraph.core.net import NetDef, NetParams
from flowgraph.core.types import TensorType
from flowgraph.errors import ShapeError

__all__ = ["CrossUnitNetParams", "GlowNetParams", "MLPNetParams", "ResNetNetParams"]

Norm = Literal["none", "batch"]


def _zero(layer: nn.Conv2d | nn.Linear) -> nn.Conv2d | nn.Linear:
    """Zero the last layer so the coupling starts at s = t = 0."""
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def _conv(i: int, o: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(i, o, k, padding=k // 2)


def _bn(c: int, image: bool) -> nn.Module:
    return nn.BatchNorm2d(c) if image else nn.BatchNorm1d(c)


# -- mlp -------------------------------------------------------------------------------------
class MLPNetParams(NetParams):
    """``Linear → ReLU`` per hidden width, then a zero Linear to the output."""

    kind: Literal["mlp"] = "mlp"
    hidden: tuple[PositiveInt, ...] = (64, 64)


class _MLPNet(NetDef):
    kind = "mlp"
    Params = MLPNetParams
    image = False

    def build(self, p: Any, in_ch: int, out_ch: int, image: bool) -> nn.Module:
        layers: list[nn.Module] = []
        prev = in_ch
        for h in p.hidden:
            layers += [nn.Linear(prev, h), nn.ReLU()]
            prev = h
        layers.append(_zero(nn.Linear(prev, out_ch)))
        return nn.Sequential(*layers)


# -- glow ------------------------------------------------------------------------------------
class GlowNetParams(NetParams):
    """Glow's coupling net: conv3x3 → ReLU → conv1x1 → ReLU → zero conv3x3."""

    kind: Literal["glow"] = "glow"
    hidden: PositiveInt = 512


class _GlowNet(NetDef):
    kind = "glow"
    Params = GlowNetParams
    image = True

    def build(self, p: Any, in_ch: int, out_ch: int, image: bool) -> nn.Module:
        h = p.hidden
        return nn.Sequential(_conv(in_ch, h, 3), nn.ReLU(), _conv(h, h, 1), nn.ReLU(),
                             _zero(_conv(h, out_ch, 3)))


# -- resnet ----------------------------------------------------------------------------------
class ResNetNetParams(NetParams):
    """conv3x3 in→hidden, `blocks` residual blocks, ReLU, zero conv3x3 hidden→out."""

    kind: Literal["resnet"] = "resnet"
    hidden: PositiveInt = 64
    blocks: int = Field(default=2, ge=0)
    norm: Norm = "none"


class _ResBlock(nn.Module):
    """h + conv3x3(ReLU(conv3x3(h))), with BatchNorm after each conv when asked."""

    def __init__(self, c: int, norm: bool):
        super().__init__()
        layers: list[nn.Module] = [_conv(c, c, 3)]
        layers += [nn.BatchNorm2d(c)] if norm else []
        layers += [nn.ReLU(), _conv(c, c, 3)]
        layers += [nn.BatchNorm2d(c)] if norm else []
        self.body = nn.Sequential(*layers)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.body(h)


class _ResNetNet(NetDef):
    kind = "resnet"
    Params = ResNetNetParams
    image = True

    def build(self, p: Any, in_ch: int, out_ch: int, image: bool) -> nn.Module:
        h = p.hidden
        blocks = [_ResBlock(h, p.norm == "batch") for _ in range(p.blocks)]
        return nn.Sequential(_conv(in_ch, h, 3), *blocks, nn.ReLU(), _zero(_conv(h, out_ch, 3)))


# -- cross_unit ------------------------------------------------------------------------------
class CrossUnitNetParams(NetParams):
    """DenseFlow's g-network: k×k conv ×`expansion` → [BN] → ReLU → zero 1×1 conv."""

    kind: Literal["cross_unit"] = "cross_unit"
    expansion: PositiveInt = 4
    kernel: PositiveInt = 3
    norm: Norm = "none"


class _CrossUnitNet(NetDef):
    """Images: k×k conv C→e·C (pad k//2) → [BN] → ReLU → 1×1 conv e·C→out (zero).

    Vectors: Linear C→e·C → [BN] → ReLU → Linear e·C→out (zero). The official g has no BN
    (the class is named `_BNReLUConv` but holds none), hence ``norm: none`` by default.
    """

    kind = "cross_unit"
    Params = CrossUnitNetParams
    image = None

    def check(self, p: Any, x: TensorType) -> None:
        super().check(p, x)
        if p.kernel % 2 == 0:
            raise ShapeError("cross_unit kernel must be odd so that padding keeps H×W",
                             found=f"kernel {p.kernel}")

    def build(self, p: Any, in_ch: int, out_ch: int, image: bool) -> nn.Module:
        mid = p.expansion * in_ch
        first: nn.Module = _conv(in_ch, mid, p.kernel) if image else nn.Linear(in_ch, mid)
        last = _conv(mid, out_ch, 1) if image else nn.Linear(mid, out_ch)
        norm = [_bn(mid, image)] if p.norm == "batch" else []
        return nn.Sequential(first, *norm, nn.ReLU(), _zero(last))
