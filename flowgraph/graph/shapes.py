r"""Shape, dimension and size bookkeeping over a checked, acyclic `FlowGraph`.

Every op's static rule (`OpDef.infer`) runs in forward order, before any tensor exists. Along
the way: parameter counts, noise dimensions added by augmentation, the rule that discrete data
is dequantized before anything continuous touches it, and limits that turn absurd sizes into
errors instead of out-of-memory crashes.
"""

from __future__ import annotations

from dataclasses import dataclass

from flowgraph.errors import Issue, ShapeError
from flowgraph.graph.ir import FlowGraph, GraphNode
from flowgraph.graph.schedule import forward_schedule

__all__ = ["DEFAULT_LIMITS", "Limits", "Totals", "infer_shapes"]


@dataclass(frozen=True)
class Limits:
    """Sizes beyond which a spec is rejected (per sample for tensors)."""

    max_tensor_numel: int = 2**31 - 1
    max_params: int = 20_000_000_000  # 80 GB of float32 weights
    bytes_per_param: int = 4


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Totals:
    params: int
    data_dims: int
    noise_dims: int
    latent_dims: int


def _gb(n_bytes: int) -> str:
    return f"{n_bytes / 1e12:.1f} TB" if n_bytes >= 1e12 else f"{n_bytes / 1e9:.1f} GB"


def _issue(g: FlowGraph, rule: str, msg: str, node: GraphNode, key: tuple = (), **kw) -> Issue:
    return Issue(rule, msg, node=node.id, location=g.smap.locate(node.path + key),
                 context=tuple(f"in {t}" for t in node.trail), **kw)


def infer_shapes(g: FlowGraph, limits: Limits = DEFAULT_LIMITS) -> tuple[Totals, list[Issue]]:
    """Fill in/out types and counts of every node; the graph must be acyclic."""
    issues: list[Issue] = []
    total_params = 0
    for node_id in forward_schedule(g):
        node = g.nodes[node_id]
        if node.op is None or node.params is None:
            continue
        ins = [g.type_of(u, p) for u, p in g.data_inputs(node_id)]
        conds = [g.type_of(u, p) for u, p in g.condition_inputs(node_id)]
        if any(t is None for t in ins + conds) or not ins:
            continue  # an upstream node or edge failed; its issue is already reported
        if node.kind == "op" and node.op.n_inputs is not None and len(ins) != node.op.n_inputs:
            continue  # arity issue already reported
        if node.op.conditions == "required" and not conds:
            continue
        node.in_types, node.cond_types = ins, conds
        if any(t.bits is not None for t in conds):
            issues.append(_issue(g, "discrete", "a condition is discrete data; dequantize it "
                                 "first or declare it continuous", node, ("condition",)))
        if not node.op.dequantizes and any(t.bits is not None for t in ins):
            issues.append(_issue(g, "discrete", f"{node.op.name} received discrete "
                                 f"{ins[0].bits}-bit data: dequantize it first", node, ("in",),
                                 hint="put a dequantize_uniform or dequantize_variational node "
                                 "right after the input"))
            continue
        try:
            outs = node.op.infer(node.params, ins, conds)
            node.param_count = node.op.param_count(node.params, ins, conds)
            noise = node.op.noise_shape(node.params, ins) if node.op.stochastic else None
            node.added_dims = node.op.added_dims(node.params, ins)
        except ShapeError as e:
            issues.append(_issue(g, e.rule, f"{node.op.name}: {e.message}", node, ("params",),
                                 found=e.found, hint=e.hint))
            continue
        except Exception as e:  # noqa: BLE001 - an op bug must still not become a traceback
            issues.append(_issue(g, "op-error", f"{node.op.name}: its shape rule failed "
                                 f"({type(e).__name__}: {e})", node))
            continue
        node.out_types = outs
        node.noise_numel = 0 if noise is None else _numel(noise)
        total_params += node.param_count
        issues += _check_sizes(g, node, limits)
        if node.kind == "op":
            change = sum(t.numel for t in outs.values()) - sum(t.numel for t in ins)
            if change != node.added_dims:
                issues.append(_issue(g, "dims", f"{node.op.name}'s shape rule changes the "
                                     f"dimension by {change} but the op declares "
                                     f"{node.added_dims} added dimensions (op bug)", node))
    data = g.data_input()
    data_dims = data.out_types["out"].numel
    noise_dims = sum(n.added_dims for n in g.ops())
    latent_dims = sum(n.in_types[0].numel for n in g.latents() if n.in_types)
    if not issues and latent_dims != data_dims + noise_dims:
        issues.append(Issue("dims", f"latent dimensions ({latent_dims}) differ from data "
                            f"({data_dims}) + noise ({noise_dims}) dimensions",
                            hint="some tensor is neither consumed nor declared as a latent"))
    if total_params > limits.max_params:
        issues.append(Issue("size", f"the model would have {total_params:,} parameters "
                            f"({_gb(total_params * limits.bytes_per_param)} of weights), over "
                            f"the limit of {limits.max_params:,}"))
    return Totals(total_params, data_dims, noise_dims, latent_dims), issues


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _check_sizes(g: FlowGraph, node: GraphNode, limits: Limits) -> list[Issue]:
    out = []
    if node.param_count > limits.max_params:
        need = _gb(node.param_count * limits.bytes_per_param)
        out.append(_issue(g, "size", f"{node.op.name} would need {node.param_count:,} "
                          f"parameters ({need} of weights)", node, ("params",),
                          hint="check widths and hidden sizes"))
    for port, t in node.out_types.items():
        if t.numel > limits.max_tensor_numel:
            out.append(_issue(g, "size", f"output {port!r} would hold {t.numel:,} values per "
                              f"sample ({_gb(4 * t.numel)} per image in float32)", node,
                              found=f"shape {list(t.shape)}"))
    return out
