r"""Skipping a non-finite training step exactly, decided on the device (no host sync).

The trainer computes ``keep`` (a 0-d bool tensor: the step's loss and gradient norm are
finite) on the device and never reads it; everything a step changes is then kept or restored
by arithmetic on ``keep``, the way ``GradScaler``'s ``found_inf`` skips a fused Adam step:

- `zero_unless`: the gradients are zeroed when ``keep`` is false, through an integer view
  (``bits · keep``: exact for every bit pattern, where ``NaN · 0`` would stay NaN);
- `MaskedOptimizer`: the Adamax / Adam / AdamW update written with foreach ops in which every
  change of state is scaled by ``keep`` (``m += keep·(1−β₁)·(g − m)``, ``u ← max(u·β, keep·
  (|g| + ε))`` with ``β = β₂`` or 1, ``p −= keep·lr/(1−β₁ᵗ) · m / u``, ``step += keep``).
  With ``keep = 1`` it is the torch update (up to rounding order); with ``keep = 0`` parameters
  and state keep their values exactly (a ``-0.0`` may become ``+0.0``) as long as they were
  finite. State lives in the wrapped torch optimizer, in its own format, so its
  ``state_dict``/``load_state_dict`` (checkpoints) are unchanged; ``step`` counts sit on the
  parameters' device;
- `BufferGuard`: the model's buffers (BatchNorm statistics) are copied before the forward into
  preallocated storage (one foreach copy per dtype) and restored after a skipped step by
  integer-view arithmetic ``b·keep + saved·(1 − keep)`` — bit-exact, NaN included.

Integer views multiply only by 0 or 1, so nothing overflows.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

from flowgraph.errors import FlowgraphError

__all__ = ["BufferGuard", "MaskedOptimizer", "zero_unless"]

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _int_views(tensors: list[Tensor]) -> dict[torch.dtype, list[Tensor]]:
    groups: dict[torch.dtype, list[Tensor]] = defaultdict(list)
    for t in tensors:
        kind = _INT_OF_SIZE[t.element_size()]
        groups[kind].append(t if t.dtype == kind else t.view(kind))
    return groups


def zero_unless(tensors: list[Tensor], keep: Tensor) -> None:
    """Set every element of `tensors` to (+)0 in place when `keep` is false; bit-exact no-op
    when it is true."""
    for kind, views in _int_views(tensors).items():
        torch._foreach_mul_(views, keep.to(kind))


class BufferGuard:
    """`save` the buffers before a step; `restore_unless(keep)` after it."""

    def __init__(self, buffers: list[Tensor]):
        self.views = dict(_int_views(list(buffers)))
        self.saved = {k: [torch.empty_like(v) for v in vs] for k, vs in self.views.items()}

    def save(self) -> None:
        for kind, views in self.views.items():
            torch._foreach_copy_(self.saved[kind], views)

    def restore_unless(self, keep: Tensor) -> None:
        for kind, views in self.views.items():
            k = keep.to(kind)
            torch._foreach_mul_(views, k)
            torch._foreach_mul_(self.saved[kind], 1 - k)
            torch._foreach_add_(views, self.saved[kind])


class MaskedOptimizer:
    """``step(keep)`` for a torch Adamax, Adam or AdamW (plain options: no amsgrad, maximize,
    or tensor hyperparameters), with its state kept in that optimizer. Create it after any
    ``load_state_dict`` of the optimizer (it keeps references to the state tensors)."""

    KINDS = ((torch.optim.Adamax, "adamax"), (torch.optim.AdamW, "adamw"),
             (torch.optim.Adam, "adam"))

    def __init__(self, optimizer: torch.optim.Optimizer):
        kind = next((k for cls, k in self.KINDS if isinstance(optimizer, cls)), None)
        if kind is None:
            raise FlowgraphError(f"sync-free skipping supports Adamax, Adam and AdamW. Got "
                                 f"{type(optimizer).__name__}.")
        for group in optimizer.param_groups:
            odd = [o for o in ("amsgrad", "maximize", "differentiable") if group.get(o)]
            if odd or kind == "adamw" and group.get("weight_decay") is None:
                raise FlowgraphError(f"sync-free skipping does not support {odd} of "
                                     f"{type(optimizer).__name__}.")
        self.optimizer, self.kind = optimizer, kind
        self.second = "exp_inf" if kind == "adamax" else "exp_avg_sq"
        self._state_lists: dict[int, tuple[list[Tensor], ...]] = {}  # group: (m, v, steps)
        # A group whose parameters share one step count (all got gradients at every step and
        # started together) takes its bias correction from one 0-d tensor: foreach fast paths.
        self.lockstep = [self._same_steps(g["params"]) for g in optimizer.param_groups]

    def _same_steps(self, params: list[Tensor]) -> bool:
        steps = [self.optimizer.state[p]["step"] for p in params
                 if "step" in self.optimizer.state.get(p, {})]
        if not steps:
            return True
        if len(steps) != len(params):
            return False
        values = torch.stack([torch.as_tensor(s, dtype=torch.float64).cpu() for s in steps])
        return bool((values == values[0]).all())  # once, before training: a checkpoint's steps

    def _state(self, p: Tensor) -> dict[str, Tensor]:
        state = self.optimizer.state[p]
        if "step" not in state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state[self.second] = torch.zeros_like(p, memory_format=torch.preserve_format)
        elif not isinstance(state["step"], Tensor) or state["step"].device != p.device:
            state["step"] = torch.as_tensor(state["step"], dtype=torch.float32).to(p.device)
        return state

    @torch.no_grad()
    def step(self, keep: Tensor) -> None:
        """One update of every parameter with a gradient, applied only if `keep` (0-d bool, on
        the parameters' device). Gradients must be finite or zeroed (`zero_unless`)."""
        for i, group in enumerate(self.optimizer.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if len(params) != len(group["params"]):
                self.lockstep[i] = False  # the others' step counts move on without these
            state = self._state_lists.get(i) if len(params) == len(group["params"]) else None
            if state is None:
                states = [self._state(p) for p in params]
                state = ([s["exp_avg"] for s in states], [s[self.second] for s in states],
                         [s["step"] for s in states])
                if len(params) == len(group["params"]):  # the usual case: built once
                    self._state_lists[i] = state
            lists = (params, [p.grad for p in params], *state)
            k = keep.to(params[0].dtype)
            if self.lockstep[i]:
                self._update(group, k, *lists)
            else:
                for one in zip(*lists, strict=True):
                    self._update(group, k, *([t] for t in one))

    def _update(self, group: dict, k: Tensor, params: list[Tensor], grads: list[Tensor],
                m: list[Tensor], v: list[Tensor], steps: list[Tensor]) -> None:
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        t = steps[0] + 1  # the step's count if it is kept; shared (lockstep or one parameter)
        torch._foreach_add_(steps, k)
        if wd and self.kind == "adamw":
            torch._foreach_mul_(params, 1 - k * (lr * wd))
        elif wd:
            grads = torch._foreach_add(grads, params, alpha=wd)
        d = torch._foreach_sub(grads, m)  # m += keep·(1−β₁)·(g − m): torch's lerp, masked
        torch._foreach_mul_(d, k * (1 - b1))
        torch._foreach_add_(m, d)
        torch._foreach_mul_(v, k * b2 + (1 - k))  # β₂ when kept, exactly 1 when skipped
        if self.kind == "adamax":
            a = torch._foreach_abs(grads)
            torch._foreach_add_(a, eps)
            torch._foreach_mul_(a, k)
            torch._foreach_maximum_(v, a)
            den = torch._foreach_clamp_min(v, eps)  # = v after any kept step; guards 0/0
        else:
            sq = torch._foreach_mul(grads, grads)
            torch._foreach_mul_(sq, k * (1 - b2))
            torch._foreach_add_(v, sq)
            den = torch._foreach_sqrt(v)
            torch._foreach_div_(den, torch.sqrt(1 - b2 ** t))
            torch._foreach_add_(den, eps)
        update = torch._foreach_div(m, den)
        torch._foreach_mul_(update, k * lr / (1 - b1 ** t))
        torch._foreach_sub_(params, update)
