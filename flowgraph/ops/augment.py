r"""`cross_unit_coupling`: DenseFlow's noise augmentation h_i (or plain white-noise augmentation)."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, PositiveInt
from torch import Tensor, nn

from flowgraph.core.op import Example, OpDef
from flowgraph.core.registry import NetSpec, nets
from flowgraph.core.types import OpParams, Shape, TensorType
from flowgraph.errors import ShapeError
from flowgraph.nn.simple import CrossUnitNetParams
from flowgraph.ops.base import std_normal_log_prob, sum_per_sample
from flowgraph.ops.coupling import Conditioned, condition_channels, conditions_to_features
from flowgraph.ops.scales import ScaleName, log_scale, resolve_scale

__all__ = ["CrossUnitCoupling", "CrossUnitCouplingParams"]


class CrossUnitCouplingParams(OpParams):
    """`growth` noise channels are appended last; `g: null` gives white noise (μ = 0, σ = 1)."""

    growth: PositiveInt
    g: NetSpec | None = Field(default_factory=CrossUnitNetParams)
    scale: ScaleName = "exp_2tanh"


class CrossUnitCoupling(Conditioned):
    r"""Append ê = μ + σ·e to x, with e ~ N(0, I) given as `noise` and (μ, s) = g(concat(cond)).

    μ is the first `growth` channels of g's output, s the last `growth` (``chunk(2)``), and
    log σ = scale(s). Without g, μ = 0 and σ = 1. y = [x, ê] (noise channels last).

    The returned log-det is the op's contribution to the variational bound (paper eq. 9):

    .. math:: \textstyle\sum \log\sigma - \log \mathcal{N}(e; 0, I)

    which is log|det ∂y/∂(x, e)| (= Σ log σ) minus log p(e). The inverse drops the noise
    channels, never evaluates g and returns a zero log-det (the map is not bijective in x).

    References:
        Grcić et al., "Densely connected normalizing flows", https://arxiv.org/abs/2106.04627.
    """

    def __init__(self, g: nn.Module | None, channels: int, growth: int, scale: int,
                 image: bool):
        super().__init__()
        self.g = g
        self.channels = channels
        self.growth = growth
        self.scale = scale
        self.image = image

    def run_conditioner(self, h: Tensor) -> Tensor:
        g = self.g
        assert g is not None  # only called when g is set
        return g(h)

    def forward(self, x: Tensor, cond: list[Tensor], noise: Tensor | None
                ) -> tuple[Tensor, Tensor]:
        if noise is None:
            raise RuntimeError("cross_unit_coupling needs noise: standard normal of shape "
                               "[B, growth, H, W]")
        e_hat = noise
        ld = -std_normal_log_prob(noise)
        if self.g is not None:
            out = self.condition(torch.cat(conditions_to_features(cond, x, self.image), 1))
            mu, s = out[:, :self.growth], out[:, self.growth:]
            log_sigma = log_scale(s, self.scale)
            e_hat = mu + torch.exp(log_sigma) * noise
            ld = ld + sum_per_sample(log_sigma)
        return torch.cat([x, e_hat], 1), ld

    @torch.jit.export
    def inverse(self, y: Tensor, cond: list[Tensor]) -> tuple[Tensor, Tensor]:
        return y[:, :self.channels], y.new_zeros(y.shape[0])


class _CrossUnitCouplingOp(OpDef):
    name = "cross_unit_coupling"
    Params = CrossUnitCouplingParams
    summary = "append growth noise channels mu(cond) + sigma(cond) e (DenseFlow augmentation)"
    role = "augment"
    examples = (
        Example({"growth": 2}, (TensorType((3, 4, 4)),), (TensorType((2, 4, 4)),)),
        Example({"growth": 3, "scale": "sigmoid"}, (TensorType((3, 4, 4)),), (TensorType((3, 4, 4)), TensorType((4,)),)),
        Example({"growth": 2, "g": {"kind": "cross_unit", "norm": "batch", "kernel": 1}}, (TensorType((3, 4, 4)),), (TensorType((3, 4, 4)),)),
        Example({"growth": 2, "g": None}, (TensorType((3, 4, 4)),)),
        Example({"growth": 2, "g": {"kind": "mlp", "hidden": [7]}}, (TensorType((5,)),), (TensorType((3,)),)),
    )
    conditions = "optional"
    bijective = False
    stochastic = True
    inverse_needs_conditions = False

    def _g_io(self, p: Any, x: TensorType, conds: list[TensorType]) -> tuple[int, int]:
        in_ch = condition_channels(x, conds, self.name)
        if p.g is None and conds:
            raise ShapeError("cross-unit coupling with g: null (white noise) takes no "
                             "conditions", found=f"{len(conds)} condition(s)",
                             hint="remove the conditions or set g")
        if p.g is not None and not conds:
            raise ShapeError("cross-unit coupling needs at least one condition when g is set",
                             found="no conditions",
                             hint="condition on earlier representations, or set g: null for "
                                  "white-noise augmentation")
        return in_ch, 2 * p.growth

    def infer(self, p: Any, inputs: list[TensorType], conds: list[TensorType]
              ) -> dict[str, TensorType]:
        (x,) = inputs
        self.require_continuous(x, self.name)
        if len(x.shape) not in (1, 3):
            raise ShapeError("cross_unit_coupling needs an image [C, H, W] or a vector [D]",
                             found=f"shape {list(x.shape)}")
        in_ch, _ = self._g_io(p, x, conds)
        if p.g is not None:
            nets().get(p.g.kind).check(p.g, TensorType((in_ch, *x.shape[1:])))
        return {"out": TensorType((x.shape[0] + p.growth, *x.shape[1:]))}

    def noise_shape(self, p: Any, inputs: list[TensorType]) -> Shape | None:
        return (p.growth, *inputs[0].shape[1:])

    def added_dims(self, p: Any, inputs: list[TensorType]) -> int:
        return p.growth * (inputs[0].numel // inputs[0].shape[0])

    def build(self, p: Any, inputs: list[TensorType], conds: list[TensorType]
              ) -> CrossUnitCoupling:
        x = inputs[0]
        g = None
        if p.g is not None:
            in_ch, out_ch = self._g_io(p, x, conds)
            g = nets().get(p.g.kind).build(p.g, in_ch, out_ch, x.is_image)
        return CrossUnitCoupling(g, x.shape[0], p.growth, int(resolve_scale(p.scale)),
                                 x.is_image)
