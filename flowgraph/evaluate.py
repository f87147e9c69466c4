r"""Evaluation and sampling of a trained flow: bits/dim with the importance-weighted bound, and
images drawn from the model.

Bits/dim follows the official DenseFlow evaluation (``eval_loglik.py``): BatchNorm in eval mode,
no gradients, the flow's own dtype (fp32), and for a flow with stochastic nodes the
importance-weighted bound over K noise samples,

.. math::

    \log \hat p_K(x) = \log \frac{1}{K} \sum_{k=1}^{K} \exp L_k(x), \qquad
    \mathrm{bpd}(x) = -\log \hat p_K(x) / (D \ln 2),

where :math:`L_k` is the single-sample bound with fresh noise and D the data dimensions
(``flow.data_dims``). K = 1 is the single-sample bound that training reports. The K samples are
evaluated `kbs` at a time (each forward pass holds ``batch·kbs`` images), and the log-sum-exp is
accumulated across chunks in float64.

Noise is explicit and tied to the image: the noise rows of image `i` are drawn one row at a time
from a generator seeded with ``image_seed(seed, i)`` (see `image_noise`). The value for an image therefore
depends only on the weights, the image, its index, K and the seed; not on `batch_size`, `kbs`
or `max_images`. (`CompiledFlow.log_prob` draws from the global RNG instead, so its numbers move
with the chunking.) The generator lives on `device`, so CPU and CUDA runs draw different noise.

References:
    Grcić, Grubišić, Šegvić. Densely connected normalizing flows. NeurIPS 2021.
    https://arxiv.org/abs/2106.04627 ; Burda et al., Importance weighted autoencoders,
    https://arxiv.org/abs/1509.00519 .
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from flowgraph.errors import FlowgraphError

__all__ = ["EvalError", "EvalResult", "evaluate_bpd", "image_noise", "image_seed",
           "sample_images", "to_display"]

_MAX_SEED = 2**32
_MASK64 = 2**64 - 1


class EvalError(FlowgraphError):
    """Evaluation or sampling was asked for something the flow or the data cannot do."""


@dataclass(frozen=True, eq=False)  # eq would compare the per-image arrays
class EvalResult:
    """Bits/dim over a dataset.

    `bpd` is the mean over images and `stderr` its standard error,
    ``std(per_image, ddof=1) / sqrt(n_images)`` (NaN for a single image). `exact` is True when
    the flow has no stochastic nodes, so the value is the exact likelihood whatever `k` is.
    """

    bpd: float
    stderr: float
    n_images: int
    k: int
    kbs: int
    seed: int
    exact: bool
    seconds: float
    per_image: np.ndarray = field(repr=False)

    @property
    def images_per_s(self) -> float:
        return self.n_images / self.seconds if self.seconds > 0 else math.inf

    @property
    def bound(self) -> str:
        if self.exact:
            return "exact"
        return "single-sample bound" if self.k == 1 else "IW bound"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the per-image values; NaN becomes None)."""
        return {"bpd": self.bpd, "stderr": None if math.isnan(self.stderr) else self.stderr,
                "n_images": self.n_images, "k": self.k, "kbs": self.kbs, "seed": self.seed,
                "bound": self.bound, "seconds": self.seconds,
                "images_per_s": self.images_per_s}


# -- noise --------------------------------------------------------------------------------------
def _check_seed(seed: int) -> None:
    if not 0 <= seed < _MAX_SEED:
        raise EvalError(f"seed must be in [0, 2**32). Got {seed}.")


def _mix(value: int) -> int:
    """splitmix64's finaliser: a bijection of 64-bit integers that scatters nearby values."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def image_seed(seed: int, index: int) -> int:
    """The generator seed of image `index` under `seed`.

    The CPU generator (mt19937) keeps only the low 32 bits of a seed, so those must change
    with both numbers: ``index·φ + mix(seed)`` mod 2^32, with φ odd, is distinct for every
    image of one run, and a new `seed` shifts every image's stream to an unrelated one.
    """
    return (int(index) * 0x9E3779B1 + _mix(seed)) % _MAX_SEED


def _image_generators(indices: Sequence[int], seed: int, device: torch.device
                      ) -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(image_seed(seed, i)) for i in indices]


def _next_rows(gens: list[torch.Generator], m: int, noise_dim: int, dtype: torch.dtype,
               device: torch.device) -> Tensor:
    """The next `m` noise rows of every image, image-major ([b·m, noise_dim]), as
    ``x.repeat_interleave(m, 0)`` orders the images. One row per call, so the stream of an
    image does not depend on how its K samples are chunked."""
    out = torch.empty(len(gens) * m, noise_dim, dtype=dtype, device=device)
    for row in range(out.shape[0]):
        out[row].normal_(generator=gens[row // m])
    return out


def image_noise(flow: torch.nn.Module, indices: Sequence[int], k: int, *, seed: int = 0,
                device: str | torch.device = "cpu") -> Tensor:
    """The noise `evaluate_bpd` gives images `indices`: ``[len(indices), k, noise_dim]``.

    Row ``[j, s]`` is the noise of the s-th of the K samples of image ``indices[j]``; pass
    ``noise[:, s]`` to ``flow.log_prob_once(x, None, noise[:, s])`` to reproduce one sample.
    """
    _check_seed(seed)
    device = torch.device(device)
    gens = _image_generators(indices, seed, device)
    rows = _next_rows(gens, k, flow.noise_dim, flow._ref.dtype, device)
    return rows.view(len(indices), k, flow.noise_dim)


# -- bits/dim -----------------------------------------------------------------------------------
def _iw_log_prob(flow: Any, x: Tensor, indices: Sequence[int], k: int, kbs: int,
                 seed: int) -> Tensor:
    """log of the K-sample importance-weighted bound per image, float64 ``[b]``."""
    if flow.noise_dim == 0:
        return flow.log_prob_once(x, None, None).double()
    b, device = x.shape[0], x.device
    gens = _image_generators(indices, seed, device)
    step = k if kbs <= 0 else min(kbs, k)
    acc = torch.full([b], -math.inf, dtype=torch.float64, device=device)
    done = 0
    while done < k:
        m = min(step, k - done)
        noise = _next_rows(gens, m, flow.noise_dim, flow._ref.dtype, device)
        lw = flow.log_prob_once(x.repeat_interleave(m, 0), None, noise).view(b, m)
        acc = torch.logaddexp(acc, torch.logsumexp(lw.double(), 1))
        done += m
    return acc - math.log(k)


def _item(data: Any, i: int) -> Tensor:
    item = data[i]
    if isinstance(item, (tuple, list)):  # (image, label) datasets
        item = item[0]
    if not isinstance(item, Tensor):
        item = torch.as_tensor(np.asarray(item))
    return item


def _check_positive(name: str, value: int, minimum: int = 1) -> None:
    if value < minimum:
        raise EvalError(f"{name} must be at least {minimum}. Got {value}.")


def evaluate_bpd(flow: Any, dataset: Any, *, k: int = 1, kbs: int = 0, batch_size: int = 64,
                 device: str | torch.device = "cpu", max_images: int | None = None,
                 seed: int = 0, progress: Callable[[int, int], None] | None = None
                 ) -> EvalResult:
    """Bits/dim of `flow` on `dataset` (K-sample importance-weighted bound; K=1: single-sample).

    Arguments:
        flow: a `CompiledFlow`; it is moved to `device`, put in eval mode for the call (its
            train/eval mode is restored afterwards) and run under `torch.inference_mode`.
        dataset: indexable images ``[C, H, W]`` of the flow's `data_shape` (uint8 for image
            data; an ``(image, label)`` item is accepted), or a tensor ``[N, C, H, W]``.
        k: importance samples per image (the paper: 1000 for CIFAR-10, 200 otherwise).
        kbs: samples per forward pass (0: all K at once); memory is ``batch_size·kbs`` images.
        batch_size: images per forward pass.
        max_images: evaluate only the first `max_images` images.
        seed: noise seed; image i's noise comes from ``(seed, i)`` (see `image_noise`).
        progress: called as ``progress(images_done, n_images)`` after every batch.

    Returns:
        `EvalResult` with the mean bits/dim, its standard error over images and the
        per-image values (float64 numpy array).

    Example:
        >>> from flowgraph.compile import compile_spec
        >>> flow = compile_spec("specs/realnvp-2d.yaml")  # doctest: +SKIP
        >>> evaluate_bpd(flow, data, k=1000, kbs=50).bpd  # doctest: +SKIP
    """
    _check_positive("k", k)
    _check_positive("kbs", kbs, 0)
    _check_positive("batch_size", batch_size)
    _check_seed(seed)
    n = len(dataset)
    if max_images is not None:
        _check_positive("max_images", max_images)
        n = min(n, max_images)
    if n == 0:
        raise EvalError("the dataset is empty; there is nothing to evaluate. Got 0 images.")
    device = torch.device(device)
    shape = list(flow.data_shape)
    first = _item(dataset, 0)
    if list(first.shape) != shape:
        raise EvalError(f"the data do not fit the model: the spec's input is {shape}. "
                        f"Got images of shape {list(first.shape)}.")
    flow.to(device)
    was_training = flow.training
    flow.eval()
    values = np.empty(n, dtype=np.float64)
    scale = flow.data_dims * math.log(2.0)
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            for lo in range(0, n, batch_size):
                idx = range(lo, min(lo + batch_size, n))
                x = torch.stack([_item(dataset, i) for i in idx]).to(device)
                logp = _iw_log_prob(flow, x, idx, k, kbs, seed)
                values[lo:idx.stop] = (-logp / scale).cpu().numpy()
                if progress is not None:
                    progress(idx.stop, n)
    finally:
        flow.train(was_training)
    seconds = time.perf_counter() - start
    if not np.isfinite(values).all():
        bad = np.flatnonzero(~np.isfinite(values))
        raise EvalError(f"bits/dim is not finite for {len(bad)} image(s), first index "
                        f"{int(bad[0])}; the weights or the data are broken. "
                        f"Got {values[bad[0]]}.")
    stderr = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return EvalResult(bpd=float(values.mean()), stderr=stderr, n_images=n, k=k, kbs=kbs,
                      seed=seed, exact=flow.noise_dim == 0, seconds=seconds, per_image=values)


# -- sampling ----------------------------------------------------------------------------------
def sample_images(flow: Any, n: int, *, temperature: float = 1.0, seed: int = 0,
                  batch_size: int = 64, device: str | torch.device = "cpu") -> Tensor:
    """`n` samples of `flow`, on the CPU.

    The standard-normal noise of every latent (``[n, latent_dim]``) is drawn on the CPU from a
    generator seeded with `seed` and scaled by `temperature` (T = 0.8 in the DenseFlow paper's
    CelebA figures; T = 0 maps every sample to the image of zero noise), then mapped through
    the priors and the inverse in eval mode, `batch_size` at a time. The result does not depend
    on `batch_size` or `device` beyond float rounding.

    Returns:
        for discrete data (``flow.bits > 0``) integers in ``[0, 2^bits)``, uint8 when
        bits ≤ 8 (int32 otherwise), of shape ``[n, *data_shape]``; for continuous data the
        float samples.
    """
    _check_positive("n", n)
    _check_positive("batch_size", batch_size)
    _check_seed(seed)
    if not math.isfinite(temperature) or temperature < 0:
        raise EvalError(f"temperature must be a finite number ≥ 0. Got {temperature}.")
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    eps = torch.randn(n, flow.latent_dim, generator=gen, dtype=flow._ref.dtype) * temperature
    flow.to(device)
    was_training = flow.training
    flow.eval()
    try:
        with torch.inference_mode():
            parts = [flow.sample_from_noise(eps[lo:lo + batch_size].to(device), None).cpu()
                     for lo in range(0, n, batch_size)]
    finally:
        flow.train(was_training)
    x = torch.cat(parts)
    if flow.bits <= 0:
        return x
    top = float(2**flow.bits - 1)
    x = torch.nan_to_num(x, nan=0.0).round().clamp(0.0, top)
    return x.to(torch.uint8 if flow.bits <= 8 else torch.int32)


def to_display(images: Tensor, bits: int) -> Tensor:
    """Integer images in ``[0, 2^bits)`` -> 0..255 for viewing (identity for 8-bit data)."""
    if bits == 8:
        return images
    return (images.double() * (255.0 / (2**bits - 1))).round().to(torch.uint8)
