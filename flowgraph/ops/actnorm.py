r"""`actnorm`: per-channel affine normalisation with an explicit data-dependent init (Glow)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from flowgraph.core.op import Example, OpDef
from flowgraph.core.types import OpParams, TensorType
from flowgraph.ops.base import FlowModule

__all__ = ["ActNorm", "ActNormParams", "actnorm_stats"]


def actnorm_stats(x: Tensor) -> Tensor:
    """[count, per-channel sum (C), per-channel sum of squares (C)] in float64.

    These are additive across shards, so an all-reduce (sum) of them gives the statistics of the
    concatenated batch; float64 keeps ``sumsq - n·mean²`` accurate for large n.
    """
    c = x.shape[1]
    v = x.detach().to(torch.float64).transpose(0, 1).reshape(c, -1)
    n = v.new_full((1,), float(v.shape[1]))
    return torch.cat([n, v.sum(1), (v * v).sum(1)])


class ActNormParams(OpParams):
    """ActNorm has no spec parameters: its shift and log-scale are learned."""


class ActNorm(FlowModule):
    r"""z = (x − b)·exp(−s), with b and s per channel (per feature for vectors).

    log|det ∂z/∂x| = −H·W·Σ_c s_c (H·W = 1 for vectors).

    The data-dependent init (b = mean, s = log(std + 1e-6), unbiased std over N, H, W) is the
    explicit step `data_init`, never part of `forward`: forward is branch-free, so it scripts,
    compiles with ``fullgraph=True`` and exports, and loading a state_dict can never trigger a
    re-init. The persistent ``initialized`` buffer only records that the step ran (trainers
    check it before the first step; checkpoints carry it).

    `CompiledFlow.freeze` may fold the inverse into the 1×1 conv this ActNorm feeds (`fold`):
    the conv's frozen inverse then applies x = exp(s)·v + b and its log-det, and this
    inverse passes y through with a zero log-det until `unfold`.

    Example:
        >>> m = ActNorm(3, ndim=3, spatial=16)
        >>> x = 2 + 3 * torch.randn(8, 3, 4, 4)
        >>> m.data_init(x)
        >>> z, ld = m(x, [], None)
        >>> bool(z.mean().abs() < 1e-5), int(m.initialized)
        (True, 1)
    """

    def __init__(self, channels: int, ndim: int, spatial: int):
        super().__init__()
        shape = (1, channels) + (1,) * (ndim - 1)  # broadcast over H, W (none for vectors)
        self.shift = nn.Parameter(torch.zeros(shape))
        self.log_scale = nn.Parameter(torch.zeros(shape))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.uint8))
        self.spatial = spatial
        self.folded = False

    def forward(self, x: Tensor, cond: list[Tensor], noise: Tensor | None
                ) -> tuple[Tensor, Tensor]:
        z = (x - self.shift) * torch.exp(-self.log_scale)
        # a fresh [B] tensor (not an expand view), so callers may update it in place
        return z, x.new_zeros(x.shape[0]) - self.spatial * self.log_scale.sum()

    @torch.jit.export
    def inverse(self, y: Tensor, cond: list[Tensor]) -> tuple[Tensor, Tensor]:
        if self.folded:  # the next conv's frozen inverse has applied this map already
            return y, y.new_zeros(y.shape[0])
        x = y * torch.exp(self.log_scale) + self.shift
        return x, y.new_zeros(y.shape[0]) + self.spatial * self.log_scale.sum()

    def fold(self) -> tuple[Tensor, Tensor, Tensor]:
        """Hand the inverse to the module this ActNorm feeds, and pass y through from now on.

        Returns (scale [C], shift [C], log-det): the inverse is x = scale·y + shift per
        channel with per-sample log-det `log-det`, taken from the current parameters.
        """
        with torch.no_grad():
            affine = (torch.exp(self.log_scale).flatten().clone(), self.shift.flatten().clone(),
                      self.spatial * self.log_scale.sum())
        self.folded = True
        return affine

    def unfold(self) -> None:
        self.folded = False

    def data_init(self, x: Tensor,
                  all_reduce: Callable[[Tensor], Tensor] | None = None) -> None:
        """Set b and s so that this batch comes out with zero mean and unit std per channel.

        Arguments:
            x: a batch, [N, C, H, W] or [N, C].
            all_reduce: optional in-place sum across processes (e.g. ``dist.all_reduce``
                wrapped to return its argument); when given, every rank gets the statistics
                of the global batch, hence identical parameters.
        """
        stats = actnorm_stats(x)
        if all_reduce is not None:
            stats = all_reduce(stats)
        c = self.shift.shape[1]
        n, total, sumsq = stats[0], stats[1:1 + c], stats[1 + c:]
        mean = total / n
        var = ((sumsq - n * mean * mean) / (n - 1)).clamp_min(0.0)
        with torch.no_grad():
            self.shift.copy_(mean.view_as(self.shift))
            self.log_scale.copy_(torch.log(var.sqrt() + 1e-6).view_as(self.log_scale))
            self.initialized.fill_(1)


class _ActNormOp(OpDef):
    name = "actnorm"
    Params = ActNormParams
    summary = "per-channel affine z = (x - b) exp(-s), data-dependent init via data_init()"
    examples = (
        Example({}, (TensorType((3, 4, 4)),)),
        Example({}, (TensorType((5,)),)),
    )

    def infer(self, p: Any, inputs: list[TensorType], conds: list[TensorType]
              ) -> dict[str, TensorType]:
        (x,) = inputs
        self.require_continuous(x, self.name)
        return {"out": TensorType(x.shape)}

    def build(self, p: Any, inputs: list[TensorType], conds: list[TensorType]) -> ActNorm:
        x = inputs[0]
        return ActNorm(x.shape[0], len(x.shape), x.numel // x.shape[0])
