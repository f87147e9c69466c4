r"""Data order, sharding and per-step random streams, all derived from (seed, position).

Nothing here carries state from one step to the next: epoch e visits the images in the order of
a permutation seeded by ``(seed, e)``, global batch b of that epoch is
``perm[b·B : (b+1)·B]`` (the incomplete last batch is dropped), and rank r of R takes the r-th
contiguous slice of B / R images of it (a `DistributedSampler` without state). The
augmentation and the model's noise of a step come from generators seeded by
``(seed, step, rank)``. So a run resumed at any step sees exactly the data and noise of an
uninterrupted one: it recomputes the permutation and skips the consumed batches.

Where the images come from (`BatchSource`), fastest first:
- on the GPU: a uint8 training set that fits `device_budget` bytes is copied to the device once
  (CIFAR-10: 150 MB); each epoch's permutation goes to the device once, and a batch is an
  ``index_select`` there: no host work or transfer per step;
- in host memory or memory-mapped (a uint8 tensor, or an `ArrayImageDataset`, indexed across its
  chunks in place with ``gather``): this rank's images are gathered into pinned memory when the
  device is CUDA, so the trainer's ``non_blocking`` copy overlaps the previous step;
- any other dataset (image files): a `DataLoader` with `workers` and ``pin_memory`` on CUDA.

Each rank reads only its own B / R images of a batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from flowgraph.errors import FlowgraphError

__all__ = ["BatchSource", "derive_seed", "epoch_permutation", "generator", "steps_per_epoch"]


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from a tuple of ints/strings (stable across runs and platforms)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def generator(*parts: int | str, device: str | torch.device = "cpu") -> torch.Generator:
    """A `torch.Generator` on `device` seeded with ``derive_seed(*parts)``."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(*parts))
    return g


def epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    """The visiting order of `n` images in `epoch`."""
    return torch.randperm(n, generator=generator(seed, "epoch", epoch))


def steps_per_epoch(n: int, batch_size: int) -> int:
    return n // batch_size


class _Indexed(Dataset):
    """Adapts a dataset to a `DataLoader` whose "indices" are whole index batches."""

    def __init__(self, data: Dataset):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getitem__(self, indices: Sequence[int]) -> Tensor:
        return torch.stack([self.data[int(i)] for i in indices])


def _nbytes(data: object) -> int | None:
    if isinstance(data, Tensor):
        return data.numel() * data.element_size()
    return getattr(data, "nbytes", None) if hasattr(data, "gather") else None


class BatchSource:
    """This rank's uint8 batches ``[B / R, C, H, W]`` of an epoch, in order.

    `data` is a uint8 tensor ``[N, C, H, W]``, an `ArrayImageDataset` (gathered in place, never
    joined) or any dataset of uint8 ``[C, H, W]`` images (read through a `DataLoader` with
    `workers`). `device`: where the batches go next; on CUDA they come pinned (or already on
    the device when the set fits `device_budget` bytes; 0: never). See the module docstring.
    """

    def __init__(self, data: Tensor | Dataset, batch_size: int, *, seed: int, rank: int = 0,
                 world_size: int = 1, workers: int = 0, shuffle: bool = True,
                 drop_last: bool = True, device: str | torch.device | None = None,
                 device_budget: int = 0):
        if batch_size % world_size:
            raise FlowgraphError(f"batch_size must be divisible by the number of processes "
                                 f"({world_size}). Got {batch_size}.")
        if isinstance(data, Tensor) and data.dtype != torch.uint8:
            raise FlowgraphError(f"training images must be uint8. Got {data.dtype}.")
        self.data = data
        self.n = len(data)  # type: ignore[arg-type]
        self.batch_size, self.local = batch_size, batch_size // world_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.workers, self.shuffle, self.drop_last = workers, shuffle, drop_last
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.pin = self.device.type == "cuda"
        self.tensor = data if isinstance(data, Tensor) else None
        size = _nbytes(data)
        self.on_device = (self.device.type != "cpu" and size is not None
                          and 0 < size <= device_budget)
        if self.on_device:
            self.tensor = self._to_device(data)

    def _to_device(self, data: Tensor | Dataset) -> Tensor:
        if isinstance(data, Tensor):
            return data.to(self.device)
        out = torch.empty((self.n, *data.shape), dtype=torch.uint8, device=self.device)
        start = 0
        for chunk in data.chunks():  # in slices: no second full copy in host memory
            step = max(1, (64 << 20) // max(1, chunk[:1].nbytes))
            for i in range(0, len(chunk), step):
                part = torch.from_numpy(chunk[i:i + step].copy())
                out[start + i:start + i + len(part)].copy_(part)
            start += len(chunk)
        return out

    def __len__(self) -> int:
        """Global batches per epoch."""
        full = steps_per_epoch(self.n, self.batch_size)
        return full if self.drop_last or self.n % self.batch_size == 0 else full + 1

    def _order(self, epoch: int) -> Tensor:
        return (epoch_permutation(self.n, self.seed, epoch) if self.shuffle
                else torch.arange(self.n))

    def indices(self, epoch: int, batch: int) -> Tensor:
        """This rank's image indices of global batch `batch` of `epoch`."""
        return self._slice(self._order(epoch), batch)

    def _slice(self, order: Tensor, batch: int) -> Tensor:
        chunk = order[batch * self.batch_size:(batch + 1) * self.batch_size]
        per = -(-len(chunk) // self.world_size)  # a short last batch: the last ranks get less
        return chunk[self.rank * per:(self.rank + 1) * per]

    def _read(self, idx: Tensor) -> Tensor:
        """The images `idx` (on the device when the set is there, else pinned on CUDA)."""
        if self.on_device:
            return self.tensor.index_select(0, idx)
        shape = (len(idx), *self.tensor.shape[1:]) if self.tensor is not None else None
        if self.tensor is not None:
            if not self.pin:
                return self.tensor[idx]
            out = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
            return torch.index_select(self.tensor, 0, idx, out=out)
        if hasattr(self.data, "gather"):
            out = None
            if self.pin:
                out = torch.empty((len(idx), *self.data.shape), dtype=torch.uint8,
                                  pin_memory=True)
            return self.data.gather(idx, out=out)
        return _Indexed(self.data)[idx]

    def get(self, epoch: int, batch: int) -> Tensor:
        """This rank's images of global batch `batch` of `epoch`."""
        idx = self.indices(epoch, batch)
        return self._read(idx.to(self.device) if self.on_device else idx)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[int, Tensor]]:
        """(batch index, images) for batches `start`, `start` + 1, ... of `epoch`."""
        order = self._order(epoch)
        plan = [b for b in range(start, len(self)) if len(self._slice(order, b))]
        if self.tensor is not None or hasattr(self.data, "gather"):
            if self.on_device:  # once per epoch, asynchronously; slices of it are views
                order = order.pin_memory().to(self.device, non_blocking=True)
            for b in plan:
                yield b, self._read(self._slice(order, b))
            return
        loader = DataLoader(_Indexed(self.data), batch_size=None,
                            sampler=[self._slice(order, b) for b in plan],
                            num_workers=self.workers, pin_memory=self.pin)
        yield from zip(plan, loader, strict=True)
