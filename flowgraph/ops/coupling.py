r"""`affine_coupling` (RealNVP/Glow/DenseFlow) and what other conditioned ops share: the
condition rules and `Conditioned`, the one place where conditioner networks run (and in which
precision).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from flowgraph.core.op import Example, OpDef
from flowgraph.core.registry import NetSpec, nets
from flowgraph.core.types import OpParams, TensorType
from flowgraph.errors import ShapeError
from flowgraph.ops.base import FlowModule, sum_per_sample
from flowgraph.ops.scales import ScaleName, log_scale, resolve_scale

__all__ = ["AffineCoupling", "AffineCouplingParams", "Conditioned", "CouplingOp",
           "condition_channels", "conditions_to_features"]


def condition_channels(x: TensorType, conds: list[TensorType], op: str) -> int:
    """Channels the conditions add to a conditioner input at `x`'s resolution (static rule).

    Rule: for an image `x`, every condition is an image with the same H×W, or a vector [K]
    (broadcast over H×W as K channels); for a vector `x`, every condition is a vector.
    """
    total = 0
    for i, c in enumerate(conds):
        same_hw = x.is_image and c.is_image and c.shape[1:] == x.shape[1:]
        if len(c.shape) == 1 or same_hw:
            total += c.shape[0]
        elif x.is_image and c.is_image:
            raise ShapeError(f"{op}: image conditions must have the input's spatial size "
                             f"{x.shape[1]}×{x.shape[2]}",
                             found=f"condition {i} of shape {list(c.shape)}",
                             hint="squeeze/unsqueeze the condition, or pass a vector "
                                  "(it is broadcast over H×W)")
        else:
            raise ShapeError(f"{op}: conditions of a {'image' if x.is_image else 'vector'} "
                             "input must be images of the same H×W or vectors [K]",
                             found=f"condition {i} of shape {list(c.shape)} for input of "
                                   f"shape {list(x.shape)}")
    return total


def conditions_to_features(cond: list[Tensor], like: Tensor, image: bool) -> list[Tensor]:
    """Runtime side of `condition_channels`: vector conditions are broadcast over the H×W of
    `like` when the op works on images."""
    out: list[Tensor] = []
    for c in cond:
        if image and c.dim() == 2:
            c = c[:, :, None, None].expand(-1, -1, like.shape[2], like.shape[3])
        out.append(c)
    return out


class Conditioned(FlowModule):
    """Base of ops that run a conditioner network (a net built from a ``net:`` field).

    `condition` is the only call site of the net. With ``conditioner_dtype`` None (the
    default) it is the plain call; set to ``torch.bfloat16`` (by
    `CompiledFlow.set_conditioner_dtype`) the net runs under autocast to that dtype while the
    rest of the op stays in its input's dtype. Either way the output comes back in the input's
    dtype, so the forward and the inverse read the same float32 values from the net and stay
    exact inverses. TorchScript ignores the setting (its autocast takes constants only).

    With ``recompute`` True (`CompiledFlow.set_conditioner_recompute`, the trainer's
    ``memory_saving``) a training forward keeps only the net's input: its activations, the bulk
    of a DenseFlow step's memory, are recomputed in the backward pass (non-reentrant
    checkpointing; BatchNorm statistics are not updated a second time).

    Subclass requirements: `run_conditioner(h)` calls the net on `h`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conditioner_dtype: torch.dtype | None = None  # read in eager code only
        self.recompute = False  # read in eager code only

    def run_conditioner(self, h: Tensor) -> Tensor:
        raise NotImplementedError

    def condition(self, h: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            out = self.run_conditioner(h)
        else:
            out = self._run_in_precision(h)
        return out if out.dtype == h.dtype else out.to(h.dtype)

    @torch.jit.unused
    def _run_in_precision(self, h: Tensor) -> Tensor:
        if self.recompute and self.training and torch.is_grad_enabled():
            return checkpoint(self._run, h, use_reentrant=False, preserve_rng_state=False,
                              context_fn=lambda: (nullcontext(), _frozen_batchnorm(self)))
        return self._run(h)

    @torch.jit.unused
    def _run(self, h: Tensor) -> Tensor:
        if self.conditioner_dtype is None:
            return self.run_conditioner(h)
        with torch.autocast(h.device.type, dtype=self.conditioner_dtype):
            return self.run_conditioner(h)


@contextmanager
def _frozen_batchnorm(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers of `module` normalise with batch statistics but leave their running
    statistics alone (momentum 0, the batch count restored): the recomputation of a
    checkpointed forward must not count the batch twice."""
    layers = [m for m in module.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in layers]
    for m in layers:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(layers, saved, strict=True):
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)


class AffineCouplingParams(OpParams):
    """`net` maps [x1, conditions] to 2·⌊C/2⌋ channels; `layout` says how they are read."""

    net: NetSpec
    scale: ScaleName = "exp_2tanh"
    layout: Literal["interleaved", "halves"] = "interleaved"


class AffineCoupling(Conditioned):
    r"""Affine coupling: x1 passes through, x2 is scaled and shifted by a net of x1 (and conds).

    With C channels, x1 = x[:, :⌈C/2⌉] and x2 = x[:, ⌈C/2⌉:] (⌊C/2⌋ channels, DenseFlow's
    ``chunk(2)``). h = net([x1, *cond]) has 2·⌊C/2⌋ channels; ``interleaved`` (official
    DenseFlow) reads s_j = h[2j], t_j = h[2j+1]; ``halves`` reads s = h[:⌊C/2⌋], t = the rest.

    .. math:: z = [x_1,\; \sigma(s) \odot x_2 + t], \qquad
              \log|\det \partial z/\partial x| = \textstyle\sum \log\sigma(s)

    References:
        Dinh et al., "Density estimation using Real NVP", https://arxiv.org/abs/1605.08803;
        Grcić et al., "Densely connected normalizing flows", https://arxiv.org/abs/2106.04627.
    """

    def __init__(self, net: nn.Module, split: int, transformed: int, scale: int,
                 interleaved: bool, image: bool):
        super().__init__()
        self.net = net
        self.split = split
        self.transformed = transformed
        self.scale = scale
        self.interleaved = interleaved
        self.image = image

    def run_conditioner(self, h: Tensor) -> Tensor:
        return self.net(h)

    def _scale_shift(self, x1: Tensor, cond: list[Tensor]) -> tuple[Tensor, Tensor]:
        feats = [x1] + conditions_to_features(cond, x1, self.image)
        out = self.condition(torch.cat(feats, 1))
        if self.interleaved:
            s, t = out[:, 0::2], out[:, 1::2]
        else:
            s, t = out[:, :self.transformed], out[:, self.transformed:]
        return log_scale(s, self.scale), t

    def forward(self, x: Tensor, cond: list[Tensor], noise: Tensor | None
                ) -> tuple[Tensor, Tensor]:
        x1, x2 = x[:, :self.split], x[:, self.split:]
        log_s, t = self._scale_shift(x1, cond)
        z2 = x2 * torch.exp(log_s) + t
        return torch.cat([x1, z2], 1), sum_per_sample(log_s)

    @torch.jit.export
    def inverse(self, y: Tensor, cond: list[Tensor]) -> tuple[Tensor, Tensor]:
        y1, z2 = y[:, :self.split], y[:, self.split:]
        log_s, t = self._scale_shift(y1, cond)
        x2 = (z2 - t) * torch.exp(-log_s)
        return torch.cat([y1, x2], 1), -sum_per_sample(log_s)


class CouplingOp(OpDef):
    """What coupling ops share: x1, the first ⌈C/2⌉ channels, passes through and, with the
    conditions, feeds a conditioner whose output has `values_per_channel` values for each of
    the ⌊C/2⌋ transformed channels. Subclasses set `name`, `Params` (with a `net` field),
    `values_per_channel` and `build` (using `conditioner`)."""

    conditions = "optional"

    def values_per_channel(self, p: Any) -> int:
        raise NotImplementedError

    def _net_io(self, p: Any, x: TensorType, conds: list[TensorType]) -> tuple[int, int]:
        c = x.shape[0]
        in_ch = c - c // 2 + condition_channels(x, conds, self.name)
        return in_ch, self.values_per_channel(p) * (c // 2)

    def infer(self, p: Any, inputs: list[TensorType], conds: list[TensorType]
              ) -> dict[str, TensorType]:
        (x,) = inputs
        self.require_continuous(x, self.name)
        if len(x.shape) not in (1, 3) or x.shape[0] < 2:
            raise ShapeError(f"{self.name} needs an image [C, H, W] or a vector [D] with at "
                             "least 2 channels (one to condition on, one to transform)",
                             found=f"shape {list(x.shape)}")
        in_ch, _ = self._net_io(p, x, conds)
        nets().get(p.net.kind).check(p.net, TensorType((in_ch, *x.shape[1:])))
        return {"out": TensorType(x.shape)}

    def conditioner(self, p: Any, x: TensorType, conds: list[TensorType]) -> nn.Module:
        in_ch, out_ch = self._net_io(p, x, conds)
        return nets().get(p.net.kind).build(p.net, in_ch, out_ch, x.is_image)


class _AffineCouplingOp(CouplingOp):
    name = "affine_coupling"
    Params = AffineCouplingParams
    summary = "affine coupling: x2 -> sigma(s) x2 + t with (s, t) = net(x1, conditions)"
    examples = (
        Example({"net": {"kind": "glow", "hidden": 6}, "scale": "exp_2tanh"}, (TensorType((3, 4, 4)),)),
        Example({"net": {"kind": "glow", "hidden": 6}, "scale": "sigmoid"}, (TensorType((3, 4, 4)),)),
        Example({"net": {"kind": "glow", "hidden": 6}, "scale": "exp"}, (TensorType((3, 4, 4)),)),
        Example({"net": {"kind": "glow", "hidden": 6}, "scale": "exp_tanh"}, (TensorType((3, 4, 4)),)),
        Example({"net": {"kind": "glow", "hidden": 6}, "layout": "halves"}, (TensorType((4, 4, 4)),)),
        Example({"net": {"kind": "glow", "hidden": 6}}, (TensorType((2, 4, 4)),), (TensorType((3, 4, 4)), TensorType((2,)),)),
        Example({"net": {"kind": "resnet", "hidden": 6, "blocks": 1, "norm": "batch"}}, (TensorType((3, 4, 4)),)),
        Example({"net": {"kind": "cross_unit", "expansion": 2}}, (TensorType((3, 4, 4)),), (TensorType((2, 4, 4)),)),
        Example({"net": {"kind": "mlp", "hidden": [7]}}, (TensorType((5,)),)),
        Example({"net": {"kind": "mlp", "hidden": [7]}, "layout": "halves", "scale": "exp"}, (TensorType((5,)),), (TensorType((2,)),)),
    )

    def values_per_channel(self, p: Any) -> int:
        return 2  # s and t

    def build(self, p: Any, inputs: list[TensorType], conds: list[TensorType]) -> AffineCoupling:
        x = inputs[0]
        c = x.shape[0]
        return AffineCoupling(self.conditioner(p, x, conds), c - c // 2, c // 2,
                              int(resolve_scale(p.scale)),
                              p.layout == "interleaved", x.is_image)
