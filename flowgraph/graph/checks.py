r"""Structural checks of a `FlowGraph`, each returning a list of issues (all reported at once).

- arity: data inputs and conditions match what each op declares;
- acyclicity over data and condition edges (the error shows the cycle);
- every data tensor is consumed exactly once (no dangling outputs, no double use), contexts are
  only read as conditions;

Invertibility is not a check of its own: it is the inverse schedule failing to complete
(`flowgraph.graph.schedule`), the same schedule the code generator follows.
"""

from __future__ import annotations

import networkx as nx

from flowgraph.errors import Issue
from flowgraph.graph.ir import FlowGraph, GraphNode

__all__ = ["check_arity", "check_consumption", "check_cycles"]


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
