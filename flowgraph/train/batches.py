r"""Data order, sharding and per-step random streams, all derived from (seed, position).

Nothing here carries state from one step to the next: epoch e visits the images in the order of
a permutation seeded by ``(seed, e)``, global batch b of that epoch is
``perm[b·B : (b+1)·B]`` (the incomplete last batch is dropped), and rank r of R takes the r-th
contiguous slice of B / R images of it (a `DistributedSampler` without state). The
augmentation and the model's noise of a step come from generators seeded by
``(seed, step, rank)``. So a run resumed at any step sees exactly the data and noise of an
uninterrupted one: it recomputes the permutation and skips the consumed batches.
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


class BatchSource:
    """This rank's uint8 batches ``[B / R, C, H, W]`` of an epoch, in order.

    `data` is a uint8 tensor ``[N, C, H, W]``, an `ArrayImageDataset` (indexed in memory) or any
    dataset of uint8 ``[C, H, W]`` images (read through a `DataLoader` with `workers`).
    """

    def __init__(self, data: Tensor | Dataset, batch_size: int, *, seed: int, rank: int = 0,
                 world_size: int = 1, workers: int = 0, shuffle: bool = True,
                 drop_last: bool = True):
        if batch_size % world_size:
            raise FlowgraphError(f"batch_size must be divisible by the number of processes "
                                 f"({world_size}). Got {batch_size}.")
        images = data.images() if hasattr(data, "images") else data
        self.tensor = images if isinstance(images, Tensor) else None
        self.data = data
        self.n = len(data)  # type: ignore[arg-type]
        self.batch_size, self.local = batch_size, batch_size // world_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.workers, self.shuffle, self.drop_last = workers, shuffle, drop_last
        if self.tensor is not None and self.tensor.dtype != torch.uint8:
            raise FlowgraphError(f"training images must be uint8. Got {self.tensor.dtype}.")

    def __len__(self) -> int:
        """Global batches per epoch."""
        full = steps_per_epoch(self.n, self.batch_size)
        return full if self.drop_last or self.n % self.batch_size == 0 else full + 1

    def indices(self, epoch: int, batch: int) -> Tensor:
        """This rank's image indices of global batch `batch` of `epoch`."""
        order = (epoch_permutation(self.n, self.seed, epoch) if self.shuffle
                 else torch.arange(self.n))
        return self._slice(order, batch)

    def _slice(self, order: Tensor, batch: int) -> Tensor:
        chunk = order[batch * self.batch_size:(batch + 1) * self.batch_size]
        per = -(-len(chunk) // self.world_size)  # a short last batch: the last ranks get less
        return chunk[self.rank * per:(self.rank + 1) * per]

    def get(self, epoch: int, batch: int) -> Tensor:
        """This rank's images of global batch `batch` of `epoch`."""
        idx = self.indices(epoch, batch)
        return self.tensor[idx] if self.tensor is not None else _Indexed(self.data)[idx]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[int, Tensor]]:
        """(batch index, images) for batches `start`, `start` + 1, ... of `epoch`."""
        order = (epoch_permutation(self.n, self.seed, epoch) if self.shuffle
                 else torch.arange(self.n))
        plan = [(b, idx) for b in range(start, len(self))
                if len(idx := self._slice(order, b))]  # a rank may get none of a short batch
        if self.tensor is not None:
            for b, idx in plan:
                yield b, self.tensor[idx]
            return
        loader = DataLoader(_Indexed(self.data), batch_size=None,
                            sampler=[idx for _, idx in plan], num_workers=self.workers)
        yield from zip((b for b, _ in plan), loader, strict=True)
