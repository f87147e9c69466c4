r"""The `flowgraph compile` report: per-node table, per-group summary, latents and totals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flowgraph.graph import Analysis
from flowgraph.graph.ir import GraphNode

__all__ = ["group_rows", "render_report", "report_dict"]


def _shape(node: GraphNode) -> tuple[str, str]:
    ins = ", ".join(str(t) for t in node.in_types) or "-"
    outs = ", ".join(str(t) for t in node.out_types.values()) or "-"
    return ins, outs


@dataclass
class GroupRow:
    name: str
    nodes: int
    input: str
    output: str
    params: int


def group_rows(analysis: Analysis, depth: int = 1) -> list[GroupRow]:
    """Aggregate op and latent nodes by the first `depth` segments of their ids."""
    g = analysis.graph
    rows: dict[str, GroupRow] = {}
    for node_id in g.forward_order:
        node = g.nodes[node_id]
        key = ".".join(node_id.split(".")[:depth])
        ins, outs = _shape(node)
        row = rows.get(key)
        if row is None:
            rows[key] = GroupRow(key, 1, ins, outs, node.param_count)
        else:
            row.nodes += 1
            row.params += node.param_count
            row.output = outs
    return list(rows.values())


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return [fmt(headers), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]


def render_report(analysis: Analysis, depth: int | None = None) -> str:
    """Human-readable report. `depth` None: every node; an int: nodes grouped by id prefix."""
    g, t = analysis.graph, analysis.totals
    n_ops = sum(1 for _ in g.ops())
    out = [f"spec {analysis.spec.name!r}: {n_ops} nodes, {len(g.latents())} latents", ""]
    if depth is None:
        rows = []
        for node_id in g.forward_order:
            node = g.nodes[node_id]
            ins, outs = _shape(node)
            conds = len(node.cond_types)
            op = node.op_name + (f" |{conds} cond" if conds else "")
            rows.append([node_id, op, ins, outs if node.kind == "op" else "(latent)",
                         f"{node.param_count:,}"])
        out += _table(["node", "op", "input", "output", "params"], rows, {4})
    else:
        rows = [[r.name, str(r.nodes), r.input, r.output, f"{r.params:,}"]
                for r in group_rows(analysis, depth)]
        out += _table(["group", "nodes", "input", "output", "params"], rows, {1, 4})
    if depth != 1:
        out += ["", "blocks (top-level groups):"]
        rows = [[r.name, str(r.nodes), r.input, r.output, f"{r.params:,}"]
                for r in group_rows(analysis, 1)]
        out += ["  " + line for line in _table(["group", "nodes", "input", "output", "params"],
                                               rows, {1, 4})]
    out += ["", "latents:"]
    lat_rows = [[n.id, n.op_name, str(n.in_types[0]) if n.in_types else "?",
                 f"{n.in_types[0].numel:,}" if n.in_types else "?", f"{n.param_count:,}"]
                for n in g.latents()]
    out += ["  " + line for line in _table(["latent", "prior", "shape", "dims", "params"],
                                           lat_rows, {3, 4})]
    out += ["", f"parameters:  {t.params:,}  ({t.params * 4 / 2**20:,.1f} MiB in float32)",
            f"latent dims: {t.latent_dims:,} = {t.data_dims:,} data + {t.noise_dims:,} noise",
            f"bits/dim uses D = {t.data_dims:,} (data dimensions)"]
    return "\n".join(out)


def report_dict(analysis: Analysis) -> dict[str, Any]:
    """The same information for machines (`flowgraph compile --json`)."""
    g, t = analysis.graph, analysis.totals
    nodes = []
    for node_id in g.forward_order:
        node = g.nodes[node_id]
        nodes.append({
            "id": node_id, "kind": node.kind, "op": node.op_name,
            "inputs": [list(x.shape) for x in node.in_types],
            "conditions": [{"from": f"{u}:{p}" if p != "out" else u,
                            "shape": list(g.type_of(u, p).shape)}
                           for u, p in g.condition_inputs(node_id)],
            "outputs": {p: list(x.shape) for p, x in node.out_types.items()},
            "params": node.param_count, "noise_dims": node.noise_numel,
            "added_dims": node.added_dims,
        })
    return {
        "name": analysis.spec.name,
        "nodes": nodes,
        "groups": [vars(r) for r in group_rows(analysis, 1)],
        "latents": [{"name": n.id, "prior": n.op_name, "shape": list(n.in_types[0].shape),
                     "dims": n.in_types[0].numel} for n in g.latents()],
        "totals": {"params": t.params, "data_dims": t.data_dims, "noise_dims": t.noise_dims,
                   "latent_dims": t.latent_dims},
    }
