r"""Structural checks of a `FlowGraph`, each returning a list of issues (all reported at once).

- arity: data inputs and conditions match what each op declares;
- acyclicity over data and condition edges (the error shows the cycle);
- every data tensor is consumed exactly once (no dangling outputs, no double use), contexts are
  only read as conditions;
- invertibility: the inverse pass must be schedulable. Inverting a node needs its outputs and,
  for ops whose inverse reads them, its conditions. A condition is available during the inverse
  pass only if it is an external context, a latent, or a tensor reconstructed before that node
  is inverted. Augmentation ops (whose inverse just drops channels) may read any tensor.
"""

from __future__ import annotations

import networkx as nx

from flowgraph.errors import Issue
from flowgraph.graph.ir import FlowGraph, GraphNode

__all__ = ["check_arity", "check_consumption", "check_cycles", "check_invertibility",
           "forward_schedule", "inverse_dependencies", "inverse_schedule"]


def _issue(g: FlowGraph, rule: str, msg: str, node: GraphNode, key: tuple = (), **kw) -> Issue:
    ctx = tuple(f"in {t}" for t in node.trail)
    return Issue(rule, msg, node=node.id, location=g.smap.locate(node.path + key),
                 context=ctx + tuple(kw.pop("context", ())), **kw)


def check_arity(g: FlowGraph) -> list[Issue]:
    out = []
    for node in g.nodes.values():
        if node.op is None:
            continue
        n_data, n_cond = len(g.data_inputs(node.id)), len(g.condition_inputs(node.id))
        if node.kind == "op" and node.op.n_inputs is not None and n_data != node.op.n_inputs:
            out.append(_issue(g, "arity", f"{node.op.name} takes {node.op.n_inputs} data "
                              "input(s)", node, ("in",), found=str(n_data)))
        if node.kind == "op" and node.op.n_inputs is None and n_data < 2:
            out.append(_issue(g, "arity", f"{node.op.name} takes two or more data inputs",
                              node, ("in",), found=str(n_data)))
        if node.op.conditions == "none" and n_cond:
            out.append(_issue(g, "condition", f"{node.op.name} takes no conditions", node,
                              ("condition",), found=f"{n_cond} condition(s)"))
        if node.op.conditions == "required" and not n_cond:
            out.append(_issue(g, "condition", f"{node.op.name} needs at least one condition",
                              node, ("condition",) if node.kind == "op" else ("prior",)))
    return out


def check_cycles(g: FlowGraph) -> list[Issue]:
    simple = nx.DiGraph(g.graph.edges())
    simple.add_nodes_from(g.graph.nodes())
    out = []
    for comp in nx.strongly_connected_components(simple):
        if len(comp) == 1 and not simple.has_edge(*(next(iter(comp)),) * 2):
            continue
        first = min(comp, key=lambda n: g.nodes[n].index)
        cycle = nx.find_cycle(simple.subgraph(comp), first)
        path = " -> ".join([u for u, _ in cycle] + [cycle[0][0]])
        out.append(_issue(g, "cycle", "the graph has a cycle (data and condition edges "
                          "together must form a DAG)", g.nodes[first], found=path))
    return out


def check_consumption(g: FlowGraph) -> list[Issue]:
    out = []
    for node in g.nodes.values():
        if node.kind == "latent" or (node.kind == "op" and node.op is None):
            continue
        ports = node.op.outputs if node.kind == "op" else ("out",)
        for port in ports:
            users = g.consumers(node.id, port)
            name = node.id if port == "out" else f"{node.id}:{port}"
            if node.kind == "input" and node.role == "context":
                if users:
                    out.append(_issue(g, "context", f"context input {name!r} may only be read "
                                      "as a condition, not consumed as data", node,
                                      found=", ".join(users)))
                continue
            if not users:
                out.append(_issue(g, "unconsumed", f"tensor {name!r} is never consumed: "
                                  "every tensor must feed a node or be declared as a latent "
                                  "in 'outputs'", node,
                                  hint=f"add an output, e.g. outputs: {{z_{port}: {{from: "
                                  f"'{name}'}}}}"))
            elif len(users) > 1:
                out.append(_issue(g, "consumed-twice", f"tensor {name!r} is consumed as data "
                                  f"{len(users)} times; a flow consumes each tensor once",
                                  node, found=", ".join(users),
                                  hint="read it as a 'condition' where it is not transformed"))
    return out


def _producer_in_inverse(g: FlowGraph, node_id: str, port: str) -> str | None:
    """The node whose inversion reconstructs tensor (node_id, port); None if always known."""
    src = g.nodes[node_id]
    if src.kind == "input" and src.role == "context":
        return None
    users = g.consumers(node_id, port)
    return users[0] if len(users) == 1 else None


def inverse_dependencies(g: FlowGraph) -> tuple[nx.DiGraph, list[tuple[str, str, str, str]]]:
    """Edge a -> b: a must be inverted before b. Also returns the condition edges used."""
    dep = nx.DiGraph()
    cond_edges = []
    for node in g.nodes.values():
        if node.kind == "input":
            continue
        dep.add_node(node.id)
        if node.kind == "op" and node.op is not None:
            for port in node.op.outputs:
                for user in g.consumers(node.id, port):
                    dep.add_edge(user, node.id)
        needs = node.kind == "latent" or (node.op is not None and
                                          node.op.inverse_needs_conditions)
        if not needs:
            continue
        for src, port in g.condition_inputs(node.id):
            prod = _producer_in_inverse(g, src, port)
            if prod is not None and prod != node.id:
                dep.add_edge(prod, node.id)
                cond_edges.append((prod, node.id, src, port))
    return dep, cond_edges


def check_invertibility(g: FlowGraph) -> list[Issue]:
    dep, cond_edges = inverse_dependencies(g)
    out = []
    for prod, target, src, port in cond_edges:
        if not nx.has_path(dep, target, prod):
            continue
        chain = nx.shortest_path(dep, target, prod)
        name = src if port == "out" else f"{src}:{port}"
        node = g.nodes[target]
        what = node.op.name if node.op else node.kind
        out.append(_issue(
            g, "condition-not-invertible",
            f"{what} node conditions on {name!r}, which is not available when this node is "
            f"inverted: {name!r} is only reconstructed by inverting {prod!r}, and that needs "
            f"{target!r} inverted first. A condition of a bijective node must be an external "
            "context, a latent, or a tensor reconstructed before the node in the inverse pass; "
            "only augmentation ops (cross_unit_coupling) may read any earlier tensor, because "
            "their inverse drops the noise channels without reading the condition.",
            node, ("condition",), found="inverse order " + " -> ".join(chain)))
    return out


def forward_schedule(g: FlowGraph) -> list[str]:
    """Deterministic topological order (ties broken by spec position); inputs excluded."""
    order = nx.lexicographical_topological_sort(g.graph, key=lambda n: g.nodes[n].index)
    return [n for n in order if g.nodes[n].kind != "input"]


def inverse_schedule(g: FlowGraph) -> list[str]:
    """An order for the inverse pass, as close to reversed forward order as allowed."""
    dep, _ = inverse_dependencies(g)
    pos = {n: i for i, n in enumerate(forward_schedule(g))}
    return list(nx.lexicographical_topological_sort(dep, key=lambda n: -pos[n]))
