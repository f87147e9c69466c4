r"""DDP plumbing: the process group from torchrun's environment, and the module DDP wraps.

``torchrun --nproc_per_node=N -m flowgraph.cli.main train ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; `setup_distributed` reads them and joins
the group (nccl on CUDA, gloo on CPU). Multi-node works the same way (``--nnodes``,
``--rdzv-endpoint``); the output folder must then be on a shared file system for `--resume`.

DDP only synchronises gradients of computations that run through the wrapped module's
``forward``, and the training loss is ``flow.log_prob_once``, not ``flow.forward``; so the
trainer wraps `BitsPerDim`, whose forward *is* the loss.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from flowgraph.errors import FlowgraphError

__all__ = ["BitsPerDim", "DistInfo", "all_reduce_sum", "setup_distributed",
           "teardown_distributed"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owned: bool = False  # setup_distributed created the process group (so it tears it down)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class DeviceError(FlowgraphError):
    """A device name this machine cannot serve; the CLI exits with status 2."""

    usage = True


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto', 'cpu', 'cuda' or 'cuda:N', checked against what this machine has; a bare
    'cuda' under torchrun is the process's own GPU (LOCAL_RANK)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise DeviceError(f"device must be auto, cpu, cuda or cuda:N. Got {name!r}.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name}: CUDA is not available on this machine "
                          f"(torch {torch.__version__}); use cpu.")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda" and device.index >= torch.cuda.device_count():
        raise DeviceError(f"device {name}: only {torch.cuda.device_count()} CUDA device(s) "
                          "here.")
    return device


def setup_distributed(device: torch.device) -> DistInfo:
    """Join the process group described by the environment (a no-op for one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not dist.is_initialized():
        return DistInfo()
    owned = not dist.is_initialized()
    if owned:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(),
                    int(os.environ.get("LOCAL_RANK", dist.get_rank())), owned)


def teardown_distributed(info: DistInfo, ok: bool) -> None:
    """Destroy the process group `setup_distributed` created (after a barrier if all went
    well), so no rank exits while another still talks to it (gloo aborts otherwise)."""
    if info.owned and dist.is_initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum `t` in place across processes (identity without a process group); returns it."""
    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "nccl" and t.device.type != "cuda":
            moved = t.cuda()
            dist.all_reduce(moved)
            t.copy_(moved)
        else:
            dist.all_reduce(t)
    return t


class BitsPerDim(nn.Module):
    """``forward(x, noise)`` = per-sample single-sample bits/dim of `flow`, in float32.

    The flow accumulates its log-det terms in float32 for a float32 input; casting the result
    keeps the loss float32 under bf16 autocast too.
    """

    def __init__(self, flow: nn.Module):
        super().__init__()
        self.flow = flow
        self.scale = 1.0 / (flow.data_dims * math.log(2.0))

    def forward(self, x: Tensor, noise: Tensor | None) -> Tensor:
        return -self.flow.log_prob_once(x, None, noise).float() * self.scale
