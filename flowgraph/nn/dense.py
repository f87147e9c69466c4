r"""Densely connected convolutional blocks of DenseFlow's coupling and dequantisation networks.

References:
    Grcić, Grubišić and Šegvić, "Densely connected normalizing flows", NeurIPS 2021
    (https://arxiv.org/abs/2106.04627), §2.2; Huang et al., "Densely connected convolutional
    networks", CVPR 2017 (https://arxiv.org/abs/1608.06993).

The paper only says "a dense block with 7 densely connected layers". The layer structure below
(1×1 conv c→c, ReLU, 3×3 conv c→growth, ReLU, no BatchNorm, no dropout, no bottleneck, and a
gated 1×1 output conv) follows the official code as summarised in
``denseflow-official.md`` §2 and §7.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["DenseBlock", "DenseLayer", "GatedConv2d", "ResidualDenseBlock"]


class DenseLayer(nn.Module):
    r"""One densely connected layer: ``h -> cat([h, relu(conv3x3(relu(conv1x1(h))))])``.

    Arguments:
        in_ch: input channels c_i; the 1×1 conv keeps them (c_i → c_i, no bottleneck).
        growth: channels appended by the 3×3 conv (padding 1).

    Shapes: ``[N, in_ch, H, W] -> [N, in_ch + growth, H, W]``.
    """

    def __init__(self, in_ch: int, growth: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, in_ch, kernel_size=1)
        self.conv3 = nn.Conv2d(in_ch, growth, kernel_size=3, padding=1)

    def forward(self, h: Tensor) -> Tensor:
        new = torch.relu(self.conv3(torch.relu(self.conv1(h))))
        return torch.cat([h, new], dim=1)


class GatedConv2d(nn.Module):
    r"""Gated 1×1 convolution: a 1×1 conv to 3·out_ch channels read as chunks (a, b, c),
    returning :math:`a + b \odot \sigma(c)`.

    Shapes: ``[N, in_ch, H, W] -> [N, out_ch, H, W]``.
    """

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, 3 * out_ch, kernel_size=1)

    def forward(self, h: Tensor) -> Tensor:
        a, b, c = torch.chunk(self.conv(h), 3, dim=1)
        return a + b * torch.sigmoid(c)


class DenseBlock(nn.Module):
    r"""DenseFlow's dense block: `depth` `DenseLayer`\ s, then a 1×1 output conv.

    Layer i sees c_i = in_ch + growth·i channels; after the last layer the
    in_ch + growth·depth channels go through a `GatedConv2d` (``gated=True``) or a plain 1×1
    conv with bias. No BatchNorm, no dropout (official code, ``denseflow-official.md`` §2).

    Arguments:
        in_ch, out_ch: input and output channels.
        depth: number of dense layers (7 in the coupling net, 4 in the dequantisation nets).
        growth: channels added per layer (64 in the coupling net).
        gated: gated output conv (official) or a plain one.
        zero_init: zero the output conv's weight and bias, so the block starts at 0.

    Example:
        >>> block = DenseBlock(8, 4, depth=2, growth=5)
        >>> block(torch.randn(2, 8, 6, 6)).shape
        torch.Size([2, 4, 6, 6])
        >>> sum(p.numel() for p in block.parameters())  # (72 + 365) + (182 + 590) + 228
        1437
    """

    def __init__(self, in_ch: int, out_ch: int, depth: int, growth: int, gated: bool = True,
                 zero_init: bool = False):
        super().__init__()
        if min(in_ch, out_ch, growth) < 1 or depth < 0:
            raise ValueError("DenseBlock needs in_ch, out_ch, growth >= 1 and depth >= 0. "
                             f"Got in_ch={in_ch}, out_ch={out_ch}, depth={depth}, "
                             f"growth={growth}.")
        self.layers = nn.ModuleList(DenseLayer(in_ch + growth * i, growth) for i in range(depth))
        final = in_ch + growth * depth
        self.out: nn.Module = GatedConv2d(final, out_ch) if gated else nn.Conv2d(final, out_ch, 1)
        if zero_init:
            conv = self.out.conv if isinstance(self.out, GatedConv2d) else self.out
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, h: Tensor) -> Tensor:
        for layer in self.layers:
            h = layer(h)
        return self.out(h)


class ResidualDenseBlock(nn.Module):
    r"""``x + DenseBlock(x)`` with equal input and output channels.

    Used by the variational dequantisation's coupling conditioner (``denseflow-official.md`` §7,
    inherited from SurVAE's DenseNet); the intra-unit coupling net has no residual.
    """

    def __init__(self, ch: int, depth: int, growth: int, gated: bool = True,
                 zero_init: bool = False):
        super().__init__()
        self.block = DenseBlock(ch, ch, depth, growth, gated=gated, zero_init=zero_init)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.block(h)
