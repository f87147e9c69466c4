r"""Single-head Nyström self-attention over an image, as DenseFlow's coupling network uses it.

References:
    Xiong et al., "Nyströmformer: a Nyström-based algorithm for approximating self-attention",
    AAAI 2021 (https://arxiv.org/abs/2102.03902); Grcić et al., "Densely connected normalizing
    flows", NeurIPS 2021 (https://arxiv.org/abs/2106.04627), §2.2.

The paper says only "Nyström self-attention with a single head". The official code differs from
Nyströmformer in two ways, both reproduced by default (``denseflow-official.md`` §4, §12.4):

* token layout: the 3E×H×W projection is *reshaped* to T×3E (T = H·W) without a permute, so a
  token is a run of 3E consecutive values of the channel-major buffer, not a pixel; the T×E
  result is read back as E×H×W the same way. ``pixel_tokens=True`` uses real pixel tokens.
* softmax: all three softmaxes run over dim −2 (A1 is normalised over the T rows, A3 over the
  landmarks) and only the landmarks are scaled, by 1/√T; queries and keys are not scaled.
  ``standard_softmax=True`` is Nyströmformer instead: queries scaled by 1/√E before the
  landmarks are taken (so every product Q·Kᵀ, Q·K̃ᵀ, Q̃·K̃ᵀ, Q̃·Kᵀ carries exactly one 1/√E),
  all softmaxes over the last axis, no 1/√T.

Both variants keep the ``+ V`` skip and the output 1×1 conv E → C. The pseudo-inverse initial
value uses each sample's own norms (max column sum × max row sum of that sample's 4×4 matrix);
§4 does not say whether the official code takes those maxima over the whole batch instead.

Under bf16 autocast (the flow's conditioner precision) the pseudo-inverse still runs in
float32 with autocast off (`pinv_fp32`): its 6 iterations multiply A by its approximate inverse
and cancel 13I − AZ(…), which bf16's 8-bit significand cannot resolve.
"""

from typing import Final

import torch
from torch import Tensor, nn

from flowgraph.errors import ShapeError

__all__ = ["NystromAttention", "check_landmarks", "newton_pinv", "pinv_fp32"]


def check_landmarks(height: int, width: int, landmarks: int) -> None:
    """Raise `ShapeError` unless T = H·W splits into `landmarks` equal contiguous segments."""
    if landmarks < 1 or (height * width) % landmarks != 0:
        raise ShapeError("Nyström attention needs H·W divisible by the number of landmarks",
                         found=f"H·W = {height}·{width} = {height * width} and "
                               f"{landmarks} landmarks",
                         hint="change `landmarks` or the spatial size at this coupling")


def newton_pinv(a: Tensor, iters: int = 6) -> Tensor:
    r"""Moore–Penrose pseudo-inverse of a batch of square matrices ``[..., L, L]`` by the
    iteration of Razavi et al. (2014) used by Nyströmformer:

    .. math:: Z_0 = A^\top / (\|A\|_1 \|A\|_\infty), \quad
              Z \leftarrow \tfrac14 Z\,(13I - AZ(15I - AZ(7I - AZ))).

    :math:`\|A\|_1` (max column sum) and :math:`\|A\|_\infty` (max row sum of |A|) are taken per
    matrix. Matrix products only: no `torch.linalg`, so it scripts, compiles and exports.

    Example:
        >>> a = torch.softmax(torch.randn(3, 4, 4, dtype=torch.float64) + 4 * torch.eye(4), -1)
        >>> torch.allclose(newton_pinv(a) @ a, torch.eye(4, dtype=torch.float64), atol=1e-6)
        True
    """
    abs_a = a.abs()
    col = abs_a.sum(dim=-2).amax(dim=-1)
    row = abs_a.sum(dim=-1).amax(dim=-1)
    z = a.transpose(-1, -2) / (col * row).unsqueeze(-1).unsqueeze(-1)
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    for _ in range(iters):
        az = a @ z
        z = 0.25 * z @ (13.0 * eye - az @ (15.0 * eye - az @ (7.0 * eye - az)))
    return z


def pinv_fp32(a: Tensor, iters: int) -> Tensor:
    """`newton_pinv` in at least float32 with autocast off, returned in `a`'s dtype (under
    autocast the next matmul rounds it to bf16 again: once, not at every iteration)."""
    wide = a.float() if a.dtype == torch.float16 or a.dtype == torch.bfloat16 else a
    if torch.jit.is_scripting() or not _autocast_on(a):
        z = newton_pinv(wide, iters)
    else:
        z = _newton_pinv_no_autocast(wide, iters)
    return z if z.dtype == a.dtype else z.to(a.dtype)


@torch.jit.unused
def _autocast_on(t: Tensor) -> bool:
    return torch.is_autocast_enabled(t.device.type)


@torch.jit.unused
def _newton_pinv_no_autocast(a: Tensor, iters: int) -> Tensor:
    with torch.autocast(a.device.type, enabled=False):
        return newton_pinv(a, iters)


class NystromAttention(nn.Module):
    r"""Single-head Nyström self-attention on ``[N, C, H, W]`` with a ``+ V`` skip.

    With T = H·W tokens of Q, K, V ∈ R^{T×E} (from a 1×1 conv C → 3E with bias) and L landmark
    rows Q̃, K̃ (means over L contiguous segments of T/L tokens):

    .. math:: \mathrm{out} = A_1 A_2^+ (A_3 V) + V, \quad A_1 = \sigma(Q\tilde K^\top),
              A_2 = \sigma(\tilde Q \tilde K^\top), A_3 = \sigma(\tilde Q K^\top),

    then a 1×1 conv E → C with bias. See the module docstring for the two official quirks
    (token layout, softmax axes and scaling) and their ``pixel_tokens`` / ``standard_softmax``
    alternatives. A_2⁺ is `newton_pinv` with `pinv_iters` iterations, in float32 (`pinv_fp32`).

    Arguments:
        channels: C.
        embed: E (DenseFlow: C // 2 = 24).
        landmarks: L (DenseFlow: 4); H·W must be divisible by it (`check_landmarks`).
        pixel_tokens: False = official reshape-without-permute tokens; True = pixel tokens.
        standard_softmax: False = official dim −2 softmaxes and 1/√T landmarks; True =
            Nyströmformer (last-axis softmaxes, 1/√E).
        pinv_iters: Newton iterations for A_2⁺ (6).

    Shapes: ``[N, C, H, W] -> [N, C, H, W]``.

    Example:
        >>> attn = NystromAttention(8, embed=4, landmarks=4)
        >>> attn(torch.randn(2, 8, 4, 4)).shape
        torch.Size([2, 8, 4, 4])
    """

    embed: Final[int]
    landmarks: Final[int]
    pixel_tokens: Final[bool]
    softmax_dim: Final[int]
    landmark_exp: Final[float]
    query_scale: Final[float]
    pinv_iters: Final[int]

    def __init__(self, channels: int, embed: int | None = None, landmarks: int = 4,
                 pixel_tokens: bool = False, standard_softmax: bool = False,
                 pinv_iters: int = 6):
        super().__init__()
        embed = channels // 2 if embed is None else embed
        if min(channels, embed, landmarks) < 1 or pinv_iters < 0:
            raise ValueError("NystromAttention needs channels, embed, landmarks >= 1 and "
                             f"pinv_iters >= 0. Got channels={channels}, embed={embed}, "
                             f"landmarks={landmarks}, pinv_iters={pinv_iters}.")
        self.embed = embed
        self.landmarks = landmarks
        self.pixel_tokens = pixel_tokens
        self.pinv_iters = pinv_iters
        # Resolve the softmax option to numbers once: the softmax axis, the exponent of T in
        # the landmark scale (T^-1/2 officially, T^0 = 1 in Nyströmformer) and the query scale.
        self.softmax_dim = -1 if standard_softmax else -2
        self.landmark_exp = 0.0 if standard_softmax else -0.5
        self.query_scale = embed ** -0.5 if standard_softmax else 1.0
        self.qkv = nn.Conv2d(channels, 3 * embed, kernel_size=1)
        self.proj = nn.Conv2d(embed, channels, kernel_size=1)

    def forward(self, h: Tensor) -> Tensor:
        n, _, height, width = h.shape
        t = height * width
        e = self.embed
        p = self.qkv(h)
        if self.pixel_tokens:
            tokens = p.flatten(2).transpose(1, 2)      # [N, T, 3E], one token per pixel
        else:
            tokens = p.reshape(n, t, 3 * e)            # official: no permute
        q = tokens[:, :, :e] * self.query_scale
        k = tokens[:, :, e:2 * e]
        v = tokens[:, :, 2 * e:]
        seg = t // self.landmarks
        # T^-1/2 (official) or 1 as a tensor, so an exporter keeps it symbolic in H and W.
        scale = torch.full((), t, dtype=h.dtype, device=h.device).pow(self.landmark_exp)
        q_l = q.reshape(n, self.landmarks, seg, e).mean(dim=2) * scale
        k_l = k.reshape(n, self.landmarks, seg, e).mean(dim=2) * scale
        a1 = torch.softmax(q @ k_l.transpose(1, 2), dim=self.softmax_dim)    # [N, T, L]
        a2 = torch.softmax(q_l @ k_l.transpose(1, 2), dim=self.softmax_dim)  # [N, L, L]
        a3 = torch.softmax(q_l @ k.transpose(1, 2), dim=self.softmax_dim)    # [N, L, T]
        out = a1 @ (pinv_fp32(a2, self.pinv_iters) @ (a3 @ v)) + v           # [N, T, E]
        if self.pixel_tokens:
            out = out.transpose(1, 2).reshape(n, e, height, width)
        else:
            out = out.reshape(n, e, height, width)    # official: no permute
        return self.proj(out)
