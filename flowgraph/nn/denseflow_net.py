r"""DenseFlow's coupling conditioners as `NetDef`\ s: ``dense_attention`` (intra-unit coupling)
and ``dense_residual`` (the variational dequantisation's couplings).

References:
    Grcić, Grubišić and Šegvić, "Densely connected normalizing flows", NeurIPS 2021
    (https://arxiv.org/abs/2106.04627), §2.2 and Fig. 2; ``denseflow-official.md`` §2, §4, §7.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from flowgraph.core.net import NetDef, NetParams
from flowgraph.core.types import OpParams, TensorType
from flowgraph.errors import ShapeError
from flowgraph.nn.attention import NystromAttention, check_landmarks
from flowgraph.nn.dense import DenseBlock, ResidualDenseBlock

__all__ = ["AttentionParams", "DenseAttentionNet", "DenseAttentionNetDef", "DenseAttentionNetParams", "DenseResidualNetDef", "DenseResidualNetParams"]


class AttentionParams(OpParams):
    """The Nyström branch (`NystromAttention`); ``embed: null`` means ``width // 2``."""

    landmarks: int = Field(4, ge=1)
    embed: int | None = Field(None, ge=1)
    layout: Literal["official", "pixel"] = "official"
    softmax: Literal["official", "standard"] = "official"
    pinv_iters: int = Field(6, ge=0)


class DenseAttentionNetParams(NetParams):
    """DenseFlow intra-unit coupling net. ``attention: null`` is the dense-only ablation,
    ``dense: false`` the attention-only one; at least one branch must stay on."""

    kind: Literal["dense_attention"]
    width: int = Field(48, ge=1)
    depth: int = Field(7, ge=0)
    growth: int = Field(64, ge=1)
    gated: bool = True
    attention: AttentionParams | None = Field(default_factory=AttentionParams)
    dense: bool = True

    @model_validator(mode="after")
    def _one_branch(self) -> DenseAttentionNetParams:
        if self.attention is None and not self.dense:
            raise ValueError("dense_attention needs at least one branch: got attention: null "
                             "and dense: false")
        if self.attention is not None and self.attention.embed is None and self.width < 2:
            raise ValueError("dense_attention with attention.embed: null uses width // 2, "
                             f"which must be >= 1: got width={self.width}")
        return self


class DenseResidualNetParams(NetParams):
    """Dequantisation coupling net: 1×1 conv, ``x + DenseBlock(x)``, zero-init 1×1 conv."""

    kind: Literal["dense_residual"]
    width: int = Field(64, ge=1)
    depth: int = Field(4, ge=0)
    growth: int = Field(64, ge=1)
    gated: bool = True


def _zero_conv(in_ch: int, out_ch: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_ch, out_ch, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def _embed(width: int, a: AttentionParams) -> int:
    return width // 2 if a.embed is None else a.embed


class DenseAttentionNet(nn.Module):
    r"""``in_proj`` (1×1 in_ch → width) → [attention ‖ dense] (attention first) →
    BatchNorm2d → ReLU → 1×1 conv (k·width → width, no bias) → zero-init 1×1 conv → out_ch.

    Follows the official code (``denseflow-official.md`` §2): the paper's "BN-ReLU-Conv" fusion
    is followed by one more 1×1 output conv, there is no residual, and the dense branch is
    `DenseBlock(width → width, depth, growth, gated)`. k is the number of enabled branches.

    Shapes: ``[N, in_ch, H, W] -> [N, out_ch, H, W]``.
    """

    def __init__(self, in_ch: int, out_ch: int, width: int, branches: list[nn.Module]):
        super().__init__()
        self.in_proj = nn.Conv2d(in_ch, width, kernel_size=1)
        self.branches = nn.ModuleList(branches)
        fused = width * len(branches)
        self.norm = nn.BatchNorm2d(fused)
        self.fuse = nn.Conv2d(fused, width, kernel_size=1, bias=False)
        self.out = _zero_conv(width, out_ch)

    def forward(self, h: Tensor) -> Tensor:
        h = self.in_proj(h)
        parts: list[Tensor] = []
        for branch in self.branches:
            parts.append(branch(h))
        h = self.fuse(torch.relu(self.norm(torch.cat(parts, dim=1))))
        return self.out(h)


class DenseAttentionNetDef(NetDef):
    """``kind: dense_attention`` — DenseFlow's intra-unit coupling conditioner.

    With the defaults on ⌈C/2⌉ = 154 inputs and 308 outputs: 7,440 (projection) + 1,559,264
    (dense) + 4,728 (attention) + 4,800 (BN + fusion) + 15,092 (output) = 1,591,324 parameters.
    """

    kind = "dense_attention"
    Params = DenseAttentionNetParams
    image = True

    def check(self, p: Any, x: TensorType) -> None:
        super().check(p, x)
        if p.attention is not None:
            _, height, width = x.shape
            check_landmarks(height, width, p.attention.landmarks)

    def build(self, p: Any, in_ch: int, out_ch: int, image: bool) -> nn.Module:
        _require_image(self.kind, image)
        branches: list[nn.Module] = []
        if p.attention is not None:
            a = p.attention
            branches.append(NystromAttention(
                p.width, _embed(p.width, a), a.landmarks, pixel_tokens=a.layout == "pixel",
                standard_softmax=a.softmax == "standard", pinv_iters=a.pinv_iters))
        if p.dense:
            branches.append(DenseBlock(p.width, p.width, p.depth, p.growth, gated=p.gated))
        return DenseAttentionNet(in_ch, out_ch, p.width, branches)


class DenseResidualNetDef(NetDef):
    """``kind: dense_residual`` — the variational dequantisation's coupling conditioner
    (``denseflow-official.md`` §7): 1×1 conv in_ch → width, `ResidualDenseBlock`, zero-init
    1×1 conv width → out_ch. 559,372 parameters for in_ch = 70, out_ch = 12 with the defaults.
    """

    kind = "dense_residual"
    Params = DenseResidualNetParams
    image = True

    def build(self, p: Any, in_ch: int, out_ch: int, image: bool) -> nn.Module:
        _require_image(self.kind, image)
        return nn.Sequential(
            nn.Conv2d(in_ch, p.width, kernel_size=1),
            ResidualDenseBlock(p.width, p.depth, p.growth, gated=p.gated),
            _zero_conv(p.width, out_ch),
        )


def _require_image(kind: str, image: bool) -> None:
    if not image:
        raise ShapeError(f"conditioner {kind!r} needs image features [C, H, W]",
                         found="vector features")
