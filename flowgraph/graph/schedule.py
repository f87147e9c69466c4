r"""The inverse pass as one schedule: which node is inverted when, and which tensor is known at
each point. The invertibility check and the generation of the inverse and sampling code both
read this schedule, so a spec that passes the check cannot generate code that reads a tensor
before it exists.

Rules of the inverse pass (z -> x). At the start only external contexts are known.
- A latent is sampled (or read from z) once its conditions are known; that makes its source
  tensor known.
- An op is inverted once all its outputs are known and, if its inverse reads conditions
  (`inverse_needs_conditions`), all its conditions too; that makes its data inputs known.
Each step picks, among the ready nodes, the one latest in the forward order, so the inverse
stays as close to the reversed forward pass as the conditions allow.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import networkx as nx

from flowgraph.errors import Issue
from flowgraph.graph.ir import FlowGraph, GraphNode

__all__ = ["InverseSchedule", "Tensor", "forward_schedule", "inverse_schedule"]

Tensor = tuple[str, str]  # (node id, output port)


@dataclass(frozen=True)
class InverseSchedule:
    """`order`: the nodes in inverse order; `known_at[t]`: the step of `order` that
    reconstructs tensor t (-1: known from the start). A step i may read t iff known_at[t] < i;
    the code generator asserts that for every read."""

    order: list[str]
    known_at: dict[Tensor, int]


def forward_schedule(g: FlowGraph) -> list[str]:
    """Deterministic topological order (ties broken by spec position); inputs excluded."""
    if g.forward_order:
        return g.forward_order
    order = nx.lexicographical_topological_sort(g.graph, key=lambda n: g.nodes[n].index)
    return [n for n in order if g.nodes[n].kind != "input"]


def _needs(g: FlowGraph, node: GraphNode) -> tuple[list[Tensor], list[Tensor]]:
    """(outputs needed, conditions needed) to invert `node`."""
    reads_conds = node.kind == "latent" or (node.op is not None and
                                            node.op.inverse_needs_conditions)
    conds = list(g.condition_inputs(node.id)) if reads_conds else []
    outs = [(node.id, p) for p in node.op.outputs] if node.kind == "op" and node.op else []
    return outs, conds


def inverse_schedule(g: FlowGraph) -> tuple[InverseSchedule | None, list[Issue]]:
    """Schedule the inverse pass of an acyclic graph, or explain why it cannot be done."""
    forward = forward_schedule(g)
    pos = {n: i for i, n in enumerate(forward)}
    provider: dict[Tensor, str] = {}  # tensor -> the node whose inversion reconstructs it
    for n in forward:
        for src in g.data_inputs(n):
            provider.setdefault(src, n)
    known: dict[Tensor, int] = {(n.id, "out"): -1 for n in g.nodes.values()
                                if n.kind == "input" and n.role == "context"}
    missing: dict[str, set[Tensor]] = {}
    waiting: dict[Tensor, list[str]] = {}
    ready: list[tuple[int, str]] = []
    for n in forward:
        outs, conds = _needs(g, g.nodes[n])
        missing[n] = {t for t in outs + conds if t not in known}
        for t in missing[n]:
            waiting.setdefault(t, []).append(n)
        if not missing[n]:
            heapq.heappush(ready, (-pos[n], n))
    order: list[str] = []
    while ready:
        _, n = heapq.heappop(ready)
        order.append(n)
        for t in g.data_inputs(n):
            if t in known:
                continue
            known[t] = len(order) - 1
            for user in waiting.pop(t, ()):
                missing[user].discard(t)
                if not missing[user]:
                    heapq.heappush(ready, (-pos[user], user))
    if len(order) == len(forward):
        return InverseSchedule(order, known), []
    return None, _explain(g, set(forward) - set(order), missing, provider)


def _explain(g: FlowGraph, stuck: set[str], missing: dict[str, set[Tensor]],
             provider: dict[Tensor, str]) -> list[Issue]:
    """One issue per node whose *condition* can never be known; nodes that only wait on
    those are not reported (they are fine once the root cause is fixed)."""
    blocked = nx.DiGraph()
    for n in stuck:
        for t in missing[n]:
            if t in provider:
                blocked.add_edge(n, provider[t])
    issues = []
    for n in sorted(stuck, key=lambda n: g.nodes[n].index):
        node = g.nodes[n]
        conds = set(g.condition_inputs(n))
        for t in sorted(missing[n] & conds):
            prov = provider.get(t)
            if prov is None or not nx.has_path(blocked, prov, n):
                continue
            issues.append(_issue(g, node, t, prov, nx.shortest_path(blocked, prov, n)))
    return issues  # empty when the cause is a structural issue reported by another check


def _issue(g: FlowGraph, node: GraphNode, t: Tensor, prov: str, chain: list[str]) -> Issue:
    name = t[0] if t[1] == "out" else f"{t[0]}:{t[1]}"
    what = node.op.name if node.op else node.kind
    step = "sampled" if node.kind == "latent" else "inverted"
    if prov == node.id:
        why = (f"{name!r} is this node's own input, which only its own inverse reconstructs"
               if node.kind == "op" else
               f"{name!r} is the very tensor this latent scores, known only once it is sampled")
    else:
        why = (f"{name!r} is only reconstructed by inverting {prov!r}, and that needs "
               f"{node.id!r} {step} first")
    data_input = g.nodes[t[0]].kind == "input"
    rule = ("the data input is known in the inverse pass only at its very end, so only ops "
            "whose inverse ignores conditions (augmentation) may read it" if data_input else
            "a condition of a bijective node (or of a latent's prior) must be an external "
            "context, a latent, or a tensor reconstructed before the node in the inverse "
            "pass; only augmentation ops may read any earlier tensor, because their inverse "
            "drops the noise channels without reading the condition")
    ctx = tuple(f"in {x}" for x in node.trail)
    return Issue("condition-not-invertible",
                 f"{what} node conditions on {name!r}, which is not available when this node "
                 f"is {step}: {why}. Rule: {rule}.", node=node.id,
                 location=g.smap.locate(node.path + ("condition",)), context=ctx,
                 found="inverse order " + " -> ".join([node.id, *chain]))
