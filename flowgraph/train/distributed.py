r"""DDP plumbing: the process group from torchrun's environment, the module DDP wraps,
BatchNorm over the global batch, and the TF32 switch.

``torchrun --nproc_per_node=N -m flowgraph.cli.main train ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; `setup_distributed` reads them and joins
the group (nccl on CUDA, gloo on CPU). Multi-node works the same way (``--nnodes``,
``--rdzv-endpoint``; docs/gpu.md); the output folder must then be on a shared file system for
`--resume`.

Under DDP each process normalises its BatchNorm layers over its own B / R images unless they
are converted (`convert_sync_batchnorm`): to torch's `nn.SyncBatchNorm` on GPUs, and on the CPU
(gloo; torch's class refuses CPU tensors and DDP refuses it on CPU modules) to
`GlobalBatchNorm`, a differentiable all-reduce of the sums, so CPU runs and tests normalise over
the global batch the same way.

DDP only synchronises gradients of computations that run through the wrapped module's
``forward``, and the training loss is ``flow.log_prob_once``, not ``flow.forward``; so the
trainer wraps `BitsPerDim`, whose forward *is* the loss.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from flowgraph.errors import FlowgraphError

__all__ = ["BitsPerDim", "DistInfo", "GlobalBatchNorm", "all_reduce_sum",
           "convert_sync_batchnorm", "set_tf32", "setup_distributed", "teardown_distributed"]


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


def set_tf32(device: torch.device, enabled: bool) -> None:
    """Allow (or forbid) TF32 for fp32 matmuls and convolutions on CUDA (process-wide; a no-op
    on the CPU). Uses torch's ``fp32_precision`` settings where they exist: torch refuses a mix
    of those and the older ``allow_tf32`` flags."""
    if device.type != "cuda":
        return
    value = "tf32" if enabled else "ieee"
    try:
        torch.backends.cuda.matmul.fp32_precision = value
        torch.backends.cudnn.conv.fp32_precision = value
    except AttributeError:  # torch < 2.9
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


class _SumAcrossProcesses(torch.autograd.Function):
    """Sum over processes; the gradient of a sum is the sum of the gradients."""

    @staticmethod
    def forward(ctx: Any, t: Tensor) -> Tensor:
        out = t.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch for CPU processes (gloo), where torch's SyncBatchNorm
    refuses to run and DDP refuses to wrap it: per-channel sums and squared deviations are
    summed across processes with autograd. Without a process group, or in eval mode, it is a
    plain BatchNorm."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"GlobalBatchNorm expects at least 2-D input. Got {x.dim()}-D.")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        self._check_input_dim(x)
        total = _SumAcrossProcesses.apply
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = total(x.new_full((1,), x.numel() / x.shape[1]))
        mean = total(x.sum(dims)) / count
        centred = x - mean.view(shape)
        var = total(centred.square().sum(dims)) / count  # two passes: no cancellation
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (self.momentum if self.momentum is not None
                            else 1.0 / float(self.num_batches_tracked))
                unbiased = var * (count / (count - 1).clamp_min(1))
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.weight is not None:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> int:
    """Replace every BatchNorm layer inside `module` by one over the global batch — torch's
    `nn.SyncBatchNorm` for CUDA, `GlobalBatchNorm` for the CPU — sharing its parameters and
    buffers (so optimizers, checkpoints and state-dict keys are unaffected). Returns how many
    were replaced (0 the second time)."""
    cls = nn.SyncBatchNorm if device.type == "cuda" else GlobalBatchNorm
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.modules.batchnorm._BatchNorm) or isinstance(
                    child, (nn.SyncBatchNorm, GlobalBatchNorm)):
                continue
            new = cls(child.num_features, child.eps, child.momentum, child.affine,
                      child.track_running_stats)
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            new.running_mean, new.running_var = child.running_mean, child.running_var
            new.num_batches_tracked = child.num_batches_tracked
            new.train(child.training)
            parent.add_module(name, new)
            count += 1
    return count
