"""Conditioner `zero_linear`: one zero-initialised linear map (a 1×1 conv on images)."""

from __future__ import annotations

from typing import Any, Literal

from torch import nn

from flowgraph.core.net import NetDef, NetParams


class ZeroLinearParams(NetParams):
    kind: Literal["zero_linear"] = "zero_linear"


class ZeroLinearNet(NetDef):
    kind = "zero_linear"
    Params = ZeroLinearParams

    def build(self, p: Any, in_ch: int, out_ch: int, image: bool) -> nn.Module:
        layer = nn.Conv2d(in_ch, out_ch, 1) if image else nn.Linear(in_ch, out_ch)
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
        return layer
