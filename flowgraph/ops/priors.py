r"""Prior ops (latent sinks): `standard_normal`, `channel_normal`, `conditional_normal`.

Each builds a `Prior` with ``log_prob(z, cond) -> [B]``, ``sample(eps, cond) = mean +
exp(log_std)·eps`` and ``standardize(z, cond) = (z − mean)·exp(−log_std)`` (its inverse).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from flowgraph.core.op import Example, OpDef
from flowgraph.core.types import OpParams, TensorType
from flowgraph.errors import ShapeError
from flowgraph.ops.base import Prior, at_least_fp32, std_normal_log_prob
from flowgraph.ops.coupling import condition_channels, conditions_to_features

__all__ = ["ChannelNormal", "ConditionalNormal", "PriorParams", "StandardNormal", "normal_log_prob"]


def normal_log_prob(z: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """Per-sample log N(z; mean, exp(log_std)²), summed over all but the batch dimension."""
    z = at_least_fp32(z)
    eps = (z - mean) * torch.exp(-log_std)
    return (-0.5 * (eps * eps + math.log(2.0 * math.pi)) - log_std).flatten(1).sum(1)


class PriorParams(OpParams):
    """Normal priors have no spec parameters (their statistics are learned or fixed)."""


class StandardNormal(Prior):
    """z ~ N(0, I) (DenseFlow's prior for factored-out halves)."""

    @torch.jit.export
    def log_prob(self, z: Tensor, cond: list[Tensor]) -> Tensor:
        return std_normal_log_prob(z)

    @torch.jit.export
    def sample(self, eps: Tensor, cond: list[Tensor]) -> Tensor:
        return eps

    @torch.jit.export
    def standardize(self, z: Tensor, cond: list[Tensor]) -> Tensor:
        return z


class ChannelNormal(Prior):
    """z ~ N(μ_c, σ_c²) with μ and log σ learned per channel, shared over H×W, init 0.

    DenseFlow's ``ConvNormal2d`` base distribution. On vectors: per feature.
    """

    def __init__(self, channels: int, ndim: int):
        super().__init__()
        shape = (1, channels) + (1,) * (ndim - 1)
        self.mean = nn.Parameter(torch.zeros(shape))
        self.log_std = nn.Parameter(torch.zeros(shape))

    @torch.jit.export
    def log_prob(self, z: Tensor, cond: list[Tensor]) -> Tensor:
        return normal_log_prob(z, self.mean, self.log_std)

    @torch.jit.export
    def sample(self, eps: Tensor, cond: list[Tensor]) -> Tensor:
        return self.mean + torch.exp(self.log_std) * eps

    @torch.jit.export
    def standardize(self, z: Tensor, cond: list[Tensor]) -> Tensor:
        return (z - self.mean) * torch.exp(-self.log_std)


class ConditionalNormal(Prior):
    """z ~ N(μ(c), σ(c)²) per element, from a zero-initialised 3×3 conv (images) or linear
    (vectors) of concat(conditions): output channels [:C] are μ, [C:] are log σ (Glow's
    learned conditional prior at a split). Starts as N(0, I).
    """

    def __init__(self, cond_ch: int, channels: int, image: bool):
        super().__init__()
        layer = (nn.Conv2d(cond_ch, 2 * channels, 3, padding=1) if image
                 else nn.Linear(cond_ch, 2 * channels))
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
        self.net = layer
        self.channels = channels
        self.image = image

    def _stats(self, z: Tensor, cond: list[Tensor]) -> tuple[Tensor, Tensor]:
        out = self.net(torch.cat(conditions_to_features(cond, z, self.image), 1))
        return out[:, :self.channels], out[:, self.channels:]

    @torch.jit.export
    def log_prob(self, z: Tensor, cond: list[Tensor]) -> Tensor:
        mean, log_std = self._stats(z, cond)
        return normal_log_prob(z, mean, log_std)

    @torch.jit.export
    def sample(self, eps: Tensor, cond: list[Tensor]) -> Tensor:
        mean, log_std = self._stats(eps, cond)
        return mean + torch.exp(log_std) * eps

    @torch.jit.export
    def standardize(self, z: Tensor, cond: list[Tensor]) -> Tensor:
        mean, log_std = self._stats(z, cond)
        return (z - mean) * torch.exp(-log_std)


class _PriorOp(OpDef):
    """Shared arity of priors: one latent input, no outputs."""

    Params = PriorParams
    n_inputs = 1
    outputs = ()
    is_prior = True
    role = "prior"

    def infer(self, p: Any, inputs: list[TensorType], conds: list[TensorType]
              ) -> dict[str, TensorType]:
        (z,) = inputs
        self.require_continuous(z, self.name)
        return {}


class _StandardNormalOp(_PriorOp):
    name = "standard_normal"
    summary = "fixed N(0, I) prior"
    examples = (
        Example({}, (TensorType((3, 4, 4)),)),
    )

    def build(self, p: Any, inputs: list[TensorType], conds: list[TensorType]) -> Prior:
        return StandardNormal()


class _ChannelNormalOp(_PriorOp):
    name = "channel_normal"
    summary = "N(mu_c, sigma_c^2) prior, learned per channel (DenseFlow base)"
    examples = (
        Example({}, (TensorType((3, 4, 4)),)),
        Example({}, (TensorType((5,)),)),
    )

    def build(self, p: Any, inputs: list[TensorType], conds: list[TensorType]) -> Prior:
        z = inputs[0]
        return ChannelNormal(z.shape[0], len(z.shape))


class _ConditionalNormalOp(_PriorOp):
    name = "conditional_normal"
    summary = "N(mu(c), sigma(c)^2) prior from a zero-init conv/linear of the conditions (Glow)"
    examples = (
        Example({}, (TensorType((3, 4, 4)),), (TensorType((2, 4, 4)), TensorType((3,)),)),
        Example({}, (TensorType((5,)),), (TensorType((2,)),)),
    )
    conditions = "required"

    def infer(self, p: Any, inputs: list[TensorType], conds: list[TensorType]
              ) -> dict[str, TensorType]:
        (z,) = inputs
        self.require_continuous(z, self.name)
        if len(z.shape) not in (1, 3):
            raise ShapeError("conditional_normal needs an image [C, H, W] or a vector [D]",
                             found=f"shape {list(z.shape)}")
        if not conds:
            raise ShapeError("conditional_normal needs at least one condition",
                             found="no conditions", hint="use channel_normal for no conditions")
        condition_channels(z, conds, self.name)
        return {}

    def build(self, p: Any, inputs: list[TensorType], conds: list[TensorType]) -> Prior:
        z = inputs[0]
        return ConditionalNormal(condition_channels(z, conds, self.name), z.shape[0],
                                 z.is_image)
