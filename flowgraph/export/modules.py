r"""The exported programs: a compiled flow wrapped as tensor-in, tensor-out modules per direction.

Two directions, each one graph with a dynamic batch:

- **density**: ``(x, noise) -> (log_prob, bits_per_dim)``, both ``[N]``. `x` is the data as
  stored: uint8 ``[N, *data_shape]`` for discrete data with ``bits <= 8`` (int32 for more
  bits), float32 otherwise. `noise` ``[N, noise_dim]`` is the standard-normal noise of the
  stochastic nodes (dequantization, augmentation); it is an input only when ``noise_dim > 0``,
  so the exported value is reproducible and the same in every runtime.
- **sample**: ``(eps, temperature) -> (images, x)``. `eps` ``[N, latent_dim]`` is
  standard-normal noise for every latent and `temperature` a 0-d float tensor that scales it;
  `x` is the float sample before quantization and `images` the data as stored (rounded,
  clamped to ``[0, 2^bits)``, uint8; the float `x` again for continuous data).

`TorchScriptFlow` carries the directions as methods of one scripted module and adds seeded
helpers that draw the noise inside from a ``torch.Generator``: ``sample(n, temperature,
seed)`` equals `flowgraph.evaluate.sample_images` with the same seed, and
``bits_per_dim_seeded(x, seed)`` draws ``[N, noise_dim]`` rows from one generator (this is
not `evaluate_bpd`'s per-image noise). Its attributes ``data_shape``, ``bits``, ``latent_dim``
and ``noise_dim`` describe the model to C++ callers.

The flow must be in eval mode and frozen (`CompiledFlow.freeze`) before wrapping, so that no
linear algebra (slogdet, inv, solve_triangular) reaches the exported graphs.
"""

import math

import torch
from torch import Tensor, nn

__all__ = ["DensityModule", "SampleModule", "TorchScriptFlow", "data_dtype", "quantize"]


def data_dtype(bits: int) -> torch.dtype:
    """The dtype of stored data: uint8 up to 8 bits, int32 above, float32 when continuous."""
    if bits <= 0:
        return torch.float32
    return torch.uint8 if bits <= 8 else torch.int32


def quantize(x: Tensor, bits: int) -> Tensor:
    """Float samples -> stored data, as `flowgraph.evaluate.sample_images` does it."""
    if bits <= 0:
        return x
    x = torch.where(torch.isnan(x), torch.zeros_like(x), x)
    x = torch.clamp(torch.round(x), 0.0, float(2**bits - 1))
    return x.to(torch.uint8) if bits <= 8 else x.to(torch.int32)


class DensityModule(nn.Module):
    """``(x[, noise]) -> (log_prob, bits_per_dim)`` of a frozen flow (see the module doc)."""

    def __init__(self, flow: nn.Module):
        super().__init__()
        self.flow = flow
        self.scale = 1.0 / (flow.data_dims * math.log(2.0))

    def forward(self, x: Tensor, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
        log_prob = self.flow.log_prob_once(x.to(torch.float32), None, noise)
        return log_prob, -log_prob * self.scale


class SampleModule(nn.Module):
    """``(eps, temperature) -> (images, x)`` of a frozen flow (see the module doc)."""

    def __init__(self, flow: nn.Module):
        super().__init__()
        self.flow = flow
        self.bits = int(flow.bits)

    def forward(self, eps: Tensor, temperature: Tensor) -> tuple[Tensor, Tensor]:
        x = self.flow.sample_from_noise(eps * temperature, None)
        return quantize(x, self.bits), x


class TorchScriptFlow(nn.Module):
    """Both directions as methods of one module, for `torch.jit.script` (see the module doc).

    `forward` is ``bits_per_dim`` when the density direction is present, else
    ``sample_from_noise``; the methods of a missing direction raise.
    """

    data_shape: list[int]
    bits: int
    latent_dim: int
    noise_dim: int
    has_density: bool
    has_sample: bool

    def __init__(self, flow: nn.Module, density: bool = True, sample: bool = True):
        super().__init__()
        self.flow = flow
        self.data_shape = [int(s) for s in flow.data_shape]
        self.bits = int(flow.bits)
        self.latent_dim = int(flow.latent_dim)
        self.noise_dim = int(flow.noise_dim)
        self.scale = 1.0 / (flow.data_dims * math.log(2.0))
        self.has_density = density
        self.has_sample = sample

    def forward(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        if self.has_density:
            return self.bits_per_dim(x, noise)
        return self.sample_from_noise(x, 1.0)[0]

    @torch.jit.export
    def log_prob(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        """log-likelihood [N] of stored data `x`; `noise` None draws it from the global RNG."""
        if not self.has_density:
            raise RuntimeError("this file was exported with --direction sample only")
        return self.flow.log_prob_once(x.to(torch.float32), None, noise)

    @torch.jit.export
    def bits_per_dim(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        return -self.log_prob(x, noise) * self.scale

    @torch.jit.export
    def bits_per_dim_seeded(self, x: Tensor, seed: int) -> Tensor:
        g = torch.Generator()
        g.manual_seed(seed)
        noise = torch.randn([x.shape[0], self.noise_dim], generator=g)
        return self.bits_per_dim(x, noise)

    @torch.jit.export
    def sample_from_noise(self, eps: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
        """(images, float samples) from standard-normal `eps` [N, latent_dim]."""
        if not self.has_sample:
            raise RuntimeError("this file was exported with --direction density only")
        x = self.flow.sample_from_noise(eps * temperature, None)
        return quantize(x, self.bits), x

    @torch.jit.export
    def sample(self, n: int, temperature: float, seed: int) -> Tensor:
        """`n` images; the noise is ``randn(n, latent_dim)`` from a generator seeded `seed`."""
        g = torch.Generator()
        g.manual_seed(seed)
        eps = torch.randn([n, self.latent_dim], generator=g)
        return self.sample_from_noise(eps, temperature)[0]
