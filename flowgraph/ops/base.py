r"""The runtime contract every op module follows (and the prior contract of latent sinks).

`FlowModule` subclass requirements:

- ``forward(x, cond: List[Tensor], noise: Optional[Tensor]) -> (y, logabsdet)`` maps data side to
  latent side; `logabsdet` has shape ``[B]`` and MUST be ``log|det dy/dx|`` summed per sample.
  For a stochastic op it is the op's full contribution to the log-likelihood bound (for an
  augmentation: ``sum(log sigma) - log N(e)``; for dequantization: ``-D*bits*ln2 - log q(u|x)``).
- ``inverse(y, cond: List[Tensor]) -> (x, logabsdet)`` MUST return the inverse map's log-det,
  that is, minus the forward one at the matching point. Non-bijective ops (augmentation,
  dequantization) return zeros there. `inverse` carries ``@torch.jit.export``.
- Only tensors, lists of tensors and ``Optional[Tensor]`` cross the boundary; randomness comes in
  as `noise`; no tensor-valued Python ``if``; allocate with ``x.new_*`` so device and dtype follow.
- ``freeze()`` may cache inverse weights and constant log-dets as buffers for export; it must not
  change any output beyond float rounding.

`Prior` (a latent's distribution) requirements:

- ``log_prob(z, cond) -> [B]``, and ``sample(eps, cond) -> z`` which maps standard-normal noise to
  the latent (so temperature scales `eps`); ``standardize(z, cond) -> eps`` is its inverse.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["FlowModule", "Prior", "at_least_fp32", "building_on_meta", "std_normal_log_prob",
           "sum_per_sample"]


def building_on_meta() -> bool:
    """True while a module is built under ``torch.device("meta")`` (to count its parameters):
    an __init__ that computes its initial values (a QR, an LU) can then skip the computation
    and create tensors of the right shapes only."""
    return torch.empty(0).is_meta


def at_least_fp32(t: Tensor) -> Tensor:
    """Upcast half-precision tensors: log-densities and log-dets are kept in float32 or wider
    (under bf16 autocast a sum over thousands of bf16 values would lose whole nats)."""
    if t.dtype == torch.float16 or t.dtype == torch.bfloat16:
        return t.float()
    return t


def sum_per_sample(t: Tensor) -> Tensor:
    """Sum over all but the batch dimension, in at least float32."""
    return at_least_fp32(t).flatten(1).sum(1)


def std_normal_log_prob(x: Tensor) -> Tensor:
    """Per-sample log N(x; 0, I), summed over all but the batch dimension (scriptable)."""
    x = at_least_fp32(x)
    return -0.5 * (x * x + math.log(2 * math.pi)).flatten(1).sum(1)


class FlowModule(nn.Module):
    """Base of op modules; see the module docstring for the contract."""

    def forward(self, x: Tensor, cond: list[Tensor], noise: Tensor | None
                ) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    @torch.jit.export
    def inverse(self, y: Tensor, cond: list[Tensor]) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def freeze(self) -> None:
        """Cache what export needs (inverse weights, constant log-dets). Default: nothing."""


class Prior(nn.Module):
    """Base of latent distributions; see the module docstring for the contract."""

    def forward(self, z: Tensor, cond: list[Tensor]) -> Tensor:
        return self.log_prob(z, cond)

    @torch.jit.export
    def log_prob(self, z: Tensor, cond: list[Tensor]) -> Tensor:
        raise NotImplementedError

    @torch.jit.export
    def sample(self, eps: Tensor, cond: list[Tensor]) -> Tensor:
        raise NotImplementedError

    @torch.jit.export
    def standardize(self, z: Tensor, cond: list[Tensor]) -> Tensor:
        raise NotImplementedError
