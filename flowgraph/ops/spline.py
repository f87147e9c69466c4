r"""`spline_coupling`: rational-quadratic neural spline coupling (NSF) with linear tails.

Each transformed value goes through a monotone rational-quadratic spline on [-B, B] with K bins
whose widths, heights and inner knot derivatives come from a conditioner net of the other half
(and the conditions); outside [-B, B] the map is the identity (log-det 0). The boundary knot
derivatives are fixed to 1, so the map and its derivative are continuous at ±B.

Everything is tensor-only, branch-free and shape-static: bins are found by a sum of
comparisons, tails are selected with ``torch.where`` after clamping into [-B, B] (so the
unselected spline branch is evaluated at valid points and its gradient stays finite), and
the inverse solves its quadratic with the cancellation-free root ``2c / (-b - sqrt(b² - 4ac))``
with the discriminant clamped at 0. The module scripts, exports and compiles with fullgraph.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveFloat, model_validator
from torch import Tensor, nn

from flowgraph.core.op import Example
from flowgraph.core.registry import NetSpec
from flowgraph.core.types import OpParams, TensorType
from flowgraph.ops.base import sum_per_sample
from flowgraph.ops.coupling import Conditioned, CouplingOp, conditions_to_features

__all__ = ["SplineCoupling", "SplineCouplingParams",
           "rational_quadratic_spline", "spline_outputs_per_channel"]


def spline_outputs_per_channel(bins: int) -> int:
    """Unconstrained parameters per transformed value: K widths, K heights, K - 1 inner
    derivatives (the two boundary derivatives are 1, to match the linear tails)."""
    return 3 * bins - 1


def _knots(u: Tensor, bound: float, min_size: float) -> tuple[Tensor, Tensor]:
    """Knot positions [..., K+1] on [-B, B] (ends exact) and bin sizes [..., K] from logits."""
    k = u.shape[-1]
    sizes = min_size + (1.0 - min_size * k) * torch.softmax(u, -1)
    inner = torch.cumsum(sizes, -1)[..., :-1] * (2.0 * bound) - bound
    lo = torch.full_like(u[..., :1], -bound)
    knots = torch.cat([lo, inner, lo.neg()], -1)
    return knots, knots[..., 1:] - knots[..., :-1]


def _derivatives(u: Tensor, min_derivative: float) -> Tensor:
    """Knot derivatives [..., K+1]: 1 at both ends; inside, ``min + softplus(u + offset)`` with
    the offset that makes u = 0 give exactly 1 (so a zero conditioner output is the identity)."""
    offset = math.log(math.expm1(1.0 - min_derivative))
    inner = min_derivative + F.softplus(u + offset)
    one = torch.ones_like(u[..., :1])  # bins >= 2, so there is at least one inner knot
    return torch.cat([one, inner, one], -1)


def _at(t: Tensor, idx: Tensor) -> Tensor:
    return torch.gather(t, -1, idx).squeeze(-1)


def rational_quadratic_spline(x: Tensor, params: Tensor, bound: float, min_bin_width: float,
                              min_bin_height: float, min_derivative: float, inverse: bool
                              ) -> tuple[Tensor, Tensor]:
    r"""Elementwise rational-quadratic spline (Durkan et al. 2019) with identity tails.

    Arguments:
        x: values, any shape ``S``.
        params: unconstrained spline parameters of shape ``S + [3K - 1]``: K width logits,
            K height logits, K - 1 inner derivative pre-activations.
        inverse: evaluate the inverse map instead of the forward one.

    Returns:
        ``(y, log|dy/dx|)`` elementwise, both of shape ``S``; for the inverse the log-derivative
        is that of the inverse map (minus the forward one at the matching point).
    """
    k = (params.shape[-1] + 1) // 3
    widths_u, heights_u, derivs_u = params[..., :k], params[..., k:2 * k], params[..., 2 * k:]
    xk_all, w_all = _knots(widths_u, bound, min_bin_width)
    yk_all, h_all = _knots(heights_u, bound, min_bin_height)
    d_all = _derivatives(derivs_u, min_derivative)

    inside = (x >= -bound) & (x <= bound)
    v = x.clamp(-bound, bound)  # the spline branch is evaluated in-domain everywhere
    knots = yk_all if inverse else xk_all
    # Bin index: how many inner knots lie at or below v (0..K-1).
    idx = (v.unsqueeze(-1) >= knots[..., 1:-1]).sum(-1, keepdim=True)
    xk, w = _at(xk_all, idx), _at(w_all, idx)
    yk, h = _at(yk_all, idx), _at(h_all, idx)
    d0, d1 = _at(d_all, idx), _at(d_all[..., 1:], idx)
    s = h / w
    bend = d0 + d1 - 2.0 * s

    if inverse:
        dy = v - yk
        a = h * (s - d0) + dy * bend
        b = h * d0 - dy * bend
        c = -s * dy
        disc = (b * b - 4.0 * a * c).clamp(min=0.0)
        xi = (2.0 * c / (-b - torch.sqrt(disc))).clamp(0.0, 1.0)
        out = (xk + xi * w).clamp(-bound, bound)
    else:
        xi = ((v - xk) / w).clamp(0.0, 1.0)
        xi1 = xi * (1.0 - xi)
        out = (yk + h * (s * xi * xi + d0 * xi1) / (s + bend * xi1)).clamp(-bound, bound)
    xi1 = xi * (1.0 - xi)
    one_m = 1.0 - xi
    logd = (2.0 * torch.log(s) + torch.log(d1 * xi * xi + 2.0 * s * xi1 + d0 * one_m * one_m)
            - 2.0 * torch.log(s + bend * xi1))
    if inverse:
        logd = -logd
    return torch.where(inside, out, x), torch.where(inside, logd, torch.zeros_like(logd))


class SplineCouplingParams(OpParams):
    """`net` maps [x1, conditions] to (3·bins − 1)·⌊C/2⌋ channels, grouped by transformed channel
    (channel j reads net channels j·(3K−1) … (j+1)·(3K−1) − 1: widths, heights, derivatives)."""

    net: NetSpec
    bins: int = Field(default=8, ge=2)
    bound: PositiveFloat = 3.0
    min_bin_width: float = Field(default=1e-3, gt=0.0, lt=1.0)
    min_bin_height: float = Field(default=1e-3, gt=0.0, lt=1.0)
    min_derivative: float = Field(default=1e-3, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _bins_fit(self) -> SplineCouplingParams:
        for name in ("min_bin_width", "min_bin_height"):
            if getattr(self, name) * self.bins >= 1.0:
                raise ValueError(f"{name} × bins must be below 1 (the bins share a total size "
                                 f"of 1); got {getattr(self, name)} × {self.bins}")
        return self


class SplineCoupling(Conditioned):
    r"""Rational-quadratic spline coupling: x1 passes through, each value of x2 goes through a
    monotone RQ spline on [-B, B] parametrised by net([x1, *cond]); identity outside.

    With C channels, x1 = x[:, :⌈C/2⌉] and x2 = x[:, ⌈C/2⌉:], as in `affine_coupling`.

    .. math:: z = [x_1,\; g_{\theta(x_1)}(x_2)], \qquad
              \log|\det \partial z/\partial x| = \textstyle\sum \log g'_{\theta(x_1)}(x_2)

    A zero net output gives uniform bins and unit derivatives, which is the identity.

    References:
        Durkan, Bekasov, Murray, Papamakarios, "Neural Spline Flows",
        https://arxiv.org/abs/1906.04032.
    """

    def __init__(self, net: nn.Module, split: int, transformed: int, bins: int, bound: float,
                 min_bin_width: float, min_bin_height: float, min_derivative: float,
                 image: bool):
        super().__init__()
        self.net = net
        self.split = split
        self.transformed = transformed
        self.n_params = spline_outputs_per_channel(bins)
        self.bound = bound
        self.min_bin_width = min_bin_width
        self.min_bin_height = min_bin_height
        self.min_derivative = min_derivative
        self.image = image

    def run_conditioner(self, h: Tensor) -> Tensor:
        return self.net(h)

    def _params(self, x1: Tensor, cond: list[Tensor], dtype: torch.dtype) -> Tensor:
        feats = [x1] + conditions_to_features(cond, x1, self.image)
        h = self.condition(torch.cat(feats, 1)).to(dtype)  # spline maths in the input dtype
        # [B, C2·P, (H, W)] -> [B, C2, (H, W), P]; batch as -1 so exporters keep it dynamic
        h = h.reshape([-1, self.transformed, self.n_params] + list(h.shape[2:]))
        return h.movedim(2, -1)

    def _transform(self, x: Tensor, cond: list[Tensor], inverse: bool) -> tuple[Tensor, Tensor]:
        x1, x2 = x[:, :self.split], x[:, self.split:]
        y2, logd = rational_quadratic_spline(
            x2, self._params(x1, cond, x.dtype), self.bound, self.min_bin_width,
            self.min_bin_height, self.min_derivative, inverse)
        return torch.cat([x1, y2], 1), sum_per_sample(logd)

    def forward(self, x: Tensor, cond: list[Tensor], noise: Tensor | None
                ) -> tuple[Tensor, Tensor]:
        return self._transform(x, cond, False)

    @torch.jit.export
    def inverse(self, y: Tensor, cond: list[Tensor]) -> tuple[Tensor, Tensor]:
        return self._transform(y, cond, True)


class SplineCouplingOp(CouplingOp):
    name = "spline_coupling"
    Params = SplineCouplingParams
    summary = ("rational-quadratic spline coupling (NSF): x2 -> RQ spline on [-bound, bound] "
               "with knots from net(x1, conditions), identity tails")
    examples = (
        Example({"net": {"kind": "glow", "hidden": 6}, "bins": 4}, (TensorType((3, 4, 4)),)),
        Example({"net": {"kind": "mlp", "hidden": [7]}, "bins": 5, "bound": 2.0},
                (TensorType((5,)),), (TensorType((2,)),)),
    )

    def values_per_channel(self, p: Any) -> int:
        return spline_outputs_per_channel(p.bins)

    def build(self, p: Any, inputs: list[TensorType], conds: list[TensorType]) -> SplineCoupling:
        x = inputs[0]
        c = x.shape[0]
        return SplineCoupling(self.conditioner(p, x, conds), c - c // 2, c // 2, p.bins, float(p.bound),
                              p.min_bin_width, p.min_bin_height, p.min_derivative, x.is_image)

