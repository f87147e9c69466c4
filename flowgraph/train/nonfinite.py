r"""Which node made a training step non-finite: replay the batch eagerly and watch every node.

Forward hooks on the submodules named by node id record, in the graph's forward order, the
first node whose output (tensor or log-det) contains NaN/inf; latent nodes are watched through
their prior's ``log_prob``. If the forward pass is finite, the gradient is checked instead:
tensor hooks on each node's output and its parameters' gradients locate where the backward
pass first (walking backwards) turns non-finite.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["find_nonfinite_node"]


def _finite(value: object) -> bool:
    if isinstance(value, Tensor):
        return bool(torch.isfinite(value.detach()).all()) if value.is_floating_point() else True
    if isinstance(value, (tuple, list)):
        return all(_finite(v) for v in value)
    return True


def _node_modules(flow: nn.Module) -> list[tuple[str, nn.Module]]:
    out = []
    for node_id in flow._analysis.graph.forward_order:
        try:
            out.append((node_id, flow.get_submodule(node_id)))
        except AttributeError:  # a node compiled inline (split, concat, ...)
            continue
    return out


def find_nonfinite_node(flow: nn.Module, x: Tensor, noise: Tensor | None,
                        loss: Callable[[Tensor], Tensor] | None = None) -> str:
    """Replay one batch through `flow` (eagerly, no autocast) and describe where it broke.

    Returns a sentence naming the first node, e.g. ``"node 'block1.u0.m1.coupling'
    (AffineCoupling) produced a non-finite output"``. The model's buffers are restored.
    """
    nodes = _node_modules(flow)
    saved = {k: b.clone() for k, b in flow.named_buffers()}
    first: list[str] = []
    outputs: dict[str, Tensor] = {}
    handles: list = []

    def watch(node_id: str) -> Callable:
        def hook(module: nn.Module, args: tuple, out: object) -> None:
            if not first and not _finite(out):
                first.append(node_id)
            z = out[0] if isinstance(out, (tuple, list)) else out
            if isinstance(z, Tensor) and z.requires_grad:
                outputs[node_id] = z
                z.retain_grad()
        return hook

    for node_id, module in nodes:
        handles.append(module.register_forward_hook(watch(node_id)))
        if hasattr(module, "log_prob"):  # a prior: the generated code calls log_prob
            original = module.log_prob

            def log_prob(*args: object, _node: str = node_id, _f: Callable = original) -> Tensor:
                out = _f(*args)
                if not first and not _finite(out):
                    first.append(_node)
                return out

            object.__setattr__(module, "log_prob", log_prob)
    try:
        flow.zero_grad(set_to_none=True)
        with torch.enable_grad():
            lp = flow.log_prob_once(x, None, noise)
            if first:
                return _describe(nodes, first[0], "produced a non-finite output")
            value = -lp.float().mean() / (flow.data_dims * math.log(2.0))
            if not torch.isfinite(value):
                return "the loss is non-finite although every node's output is finite"
            value.backward()
        return _backward_culprit(nodes, outputs)
    finally:
        for h in handles:
            h.remove()
        for _, module in nodes:
            module.__dict__.pop("log_prob", None)
        flow.zero_grad(set_to_none=True)
        with torch.no_grad():
            for k, b in flow.named_buffers():
                b.copy_(saved[k])


def _describe(nodes: list[tuple[str, nn.Module]], node_id: str, what: str) -> str:
    kind = type(dict(nodes)[node_id]).__name__
    return f"node {node_id!r} ({kind}) {what}"


def _backward_culprit(nodes: list[tuple[str, nn.Module]], outputs: dict[str, Tensor]) -> str:
    for node_id, module in reversed(nodes):
        out = outputs.get(node_id)
        grad_out_ok = out is None or out.grad is None or _finite(out.grad)
        params_ok = all(p.grad is None or _finite(p.grad) for p in module.parameters())
        if not grad_out_ok:
            return _describe(nodes, node_id, "received a non-finite gradient from a later "
                             "computation (its output's gradient)")
        if not params_ok:
            return _describe(nodes, node_id, "produced non-finite parameter gradients")
    return "no node's output or gradient is non-finite when replayed eagerly (the failure " \
           "may come from bf16, torch.compile, or a random draw)"
