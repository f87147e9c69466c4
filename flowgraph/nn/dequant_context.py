r"""The context network of DenseFlow's variational dequantisation q(u | x).

References:
    Ho et al., "Flow++", ICML 2019 (https://arxiv.org/abs/1902.00275), §3.1 (variational
    dequantisation); Grcić et al., "Densely connected normalizing flows", NeurIPS 2021
    (https://arxiv.org/abs/2106.04627), §2.2. The architecture is not in the paper; it follows
    the official code as summarised in ``denseflow-official.md`` §7.
"""

from typing import Final

from torch import Tensor, nn

from flowgraph.errors import ShapeError
from flowgraph.nn.dense import DenseBlock

__all__ = ["DequantContextNet", "check_dequant_context"]


def check_dequant_context(shape: tuple[int, ...]) -> None:
    """Raise `ShapeError` unless `shape` is an image [C, H, W] with even H and W."""
    if len(shape) != 3 or shape[1] % 2 or shape[2] % 2:
        raise ShapeError("the dequantisation context net needs an image [C, H, W] with even "
                         "H and W (it downsamples by 2)", found=f"shape {list(shape)}")


class DequantContextNet(nn.Module):
    r"""x ↦ 2x/(2^bits − 1) − 1 → DenseBlock(C → w) → 2×2 conv, stride 2 (w → w) →
    DenseBlock(w → w), with w = `context_width`; every dense block is gated, `depth` layers of
    `growth` channels, not zero-initialised.

    Arguments:
        in_ch: data channels C (3 for RGB).
        bits: bit depth of the integer data (8).
        context_width: context channels w (64).
        depth, growth: dense block depth and growth (4, 16).
        gated: gated dense block outputs (official: True).

    Shapes: ``[N, C, H, W]`` integers in [0, 2^bits) (any dtype) ``-> [N, w, H/2, W/2]``,
    in the dtype of the parameters.

    Example:
        >>> import torch
        >>> net = DequantContextNet(3, context_width=8, depth=1, growth=4)
        >>> net(torch.randint(0, 256, (2, 3, 8, 8))).shape
        torch.Size([2, 8, 4, 4])
    """

    scale: Final[float]

    def __init__(self, in_ch: int, bits: int = 8, context_width: int = 64, depth: int = 4,
                 growth: int = 16, gated: bool = True):
        super().__init__()
        if bits < 1:
            raise ValueError(f"DequantContextNet needs bits >= 1. Got bits={bits}.")
        self.scale = 2.0 / (2 ** bits - 1)
        w = context_width
        self.block1 = DenseBlock(in_ch, w, depth, growth, gated=gated)
        self.down = nn.Conv2d(w, w, kernel_size=2, stride=2)
        self.block2 = DenseBlock(w, w, depth, growth, gated=gated)

    def forward(self, x: Tensor) -> Tensor:
        h = x.to(self.down.weight.dtype) * self.scale - 1.0
        return self.block2(self.down(self.block1(h)))
