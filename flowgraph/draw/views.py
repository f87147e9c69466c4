r"""The two views of a spec's flow graph, each built as a `graphviz.Digraph`.

``blocks`` (default) reads like Fig. 3 of the DenseFlow paper for any spec. Its parts come
from the spec's scopes (template uses, groups, repeat iterations; see
`flowgraph.draw.structure`) and from the roles of the ops:

- a top-level scope that holds scopes of its own is a cluster (a *block*), labelled with its
  id and template; its sub-scopes are gray boxes (*units*) labelled with what they hold
  (``5 × glow_like_module``), and its own ops are drawn one by one;
- a top-level scope that holds only ops is one gray box;
- a repeat of more than `MAX_RUN` iterations is one stacked box (``k0 … k31``, ``32 × step``);
- an ``augment`` op is a small blue dot; one that opens a unit (its data input comes from
  outside the unit) is pulled out and drawn just before it. Its conditions (the earlier
  representations) arrive as dashed blue edges;
- a scope whose ops all have the ``reshape`` role (a space-to-channel transition that drops
  half of the channels to a latent) is a dotted square, as is any lone ``reshape`` op;
- latents are terminal ellipses labelled with their prior and shape; data edges carry shapes.

``detailed`` draws every op node (id tail and op name, shaded by role) inside nested clusters,
one per scope; data edges are solid and labelled with shapes, condition edges dashed and blue.

Output is deterministic: the same spec gives the same DOT, with node names taken from ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from flowgraph.draw.render import DrawError, load_graphviz
from flowgraph.draw.structure import Scope, op_role, run_name, runs, scope_tree
from flowgraph.graph import Analysis, FlowGraph, GraphNode

__all__ = ["AUG_COLOR", "COND_COLOR", "MAX_RUN", "UNIT_FILL", "VIEWS", "diagram", "to_dot"]

View = Literal["blocks", "detailed"]
VIEWS = ("blocks", "detailed")
RANKDIRS = ("LR", "TB", "RL", "BT")
MAX_RUN = 8  # longer repeats are drawn as one stacked box in the blocks view

COND_COLOR = "#1f77b4"     # conditioning / skip connections (the paper's blue)
AUG_COLOR = "#1f77b4"      # augmentation dots
UNIT_FILL = "#c8c8c8"      # units: gray boxes
LATENT_FILL = "#f2f2f2"
ROLE_FILL = {"augment": "#c6dbef", "dequantize": "#e5f5e0", "reshape": "#f7f7f7",
             "transform": "#ffffff"}
_MAIN = "main"  # graphviz `group` of the blocks view's elements: keeps the main chain straight

Item = Scope | GraphNode


# -- small helpers ---------------------------------------------------------------------------

def _text(s: str) -> str:
    """A DOT string value: backslashes kept literal, newlines as centred line breaks."""
    return s.replace("\\", "\\\\").replace("\n", "\\n")


def _fmt_count(n: int) -> str:
    for div, suffix in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
        if n >= div:
            return f"{n / div:.3g}{suffix}"
    return str(n)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _role(node: GraphNode) -> str:
    return op_role(node.op) if node.op is not None else node.kind


def _op_label(node: GraphNode) -> str:
    tail = node.id.rsplit(".", 1)[-1]
    return tail if tail == node.op_name else f"{tail}\n{node.op_name}"


def _uses(scope: Scope) -> str:
    return f"use {scope.template}" if scope.template else "group"


def _new_graph(analysis: Analysis, view: str, rankdir: str) -> Any:
    if view not in VIEWS:
        raise DrawError(f"unknown view {view!r}; views: {', '.join(VIEWS)}", usage=True)
    if rankdir not in RANKDIRS:
        raise DrawError(f"unknown rankdir {rankdir!r}; one of {', '.join(RANKDIRS)}",
                        usage=True)
    graphviz = load_graphviz()
    t = analysis.totals
    title = (f"{analysis.spec.name} ({view} view): {t.params:,} parameters, "
             f"{t.latent_dims:,} latent dims")
    return graphviz.Digraph(
        analysis.spec.name,
        graph_attr={"rankdir": rankdir, "label": _text(title), "labelloc": "t",
                    "fontname": "Helvetica", "fontsize": "14", "nodesep": "0.25",
                    "ranksep": "0.35", "newrank": "true"},
        node_attr={"fontname": "Helvetica", "fontsize": "10"},
        edge_attr={"fontname": "Helvetica", "fontsize": "8", "arrowsize": "0.6"})


def _terminal(dot: Any, node: GraphNode, group: str | None) -> None:
    """An input (oval; dashed for a context) or a latent (ellipse with prior and shape)."""
    if node.kind == "input":
        t = node.out_types.get("out")
        role = "" if node.role == "data" else f" ({node.role})"
        label = f"{node.id}{role}\n{t}" if t is not None else node.id
        attrs = {"shape": "oval", "style": "dashed" if node.role == "context" else "bold"}
        if node.role == "data" and group:
            attrs["group"] = group
        dot.node(node.id, _text(label), tooltip=node.id, **attrs)
    else:
        prior = node.op.name if node.op is not None else getattr(node.decl, "dist", "?")
        shape = f"\n{node.in_types[0]}" if node.in_types else ""
        dot.node(node.id, _text(f"{node.id}\n{prior}{shape}"), shape="ellipse",
                 style="filled", fillcolor=LATENT_FILL, tooltip=f"latent {node.id}")


def _cond_edge(dot: Any, src: str, dst: str, port: str, owner: str) -> None:
    tip = f"condition {owner}" + (f":{port}" if port != "out" else "")
    dot.edge(src, dst, style="dashed", color=COND_COLOR, arrowhead="vee", weight="0",
             tooltip=tip)


# -- the blocks view -------------------------------------------------------------------------

@dataclass
class _Elem:
    """One drawn thing of the blocks view: an op, a dot, a unit box, a stack or a square."""

    name: str
    kind: Literal["op", "aug", "box", "stack", "reshape"]
    members: list[GraphNode]
    label: str = ""
    tip: str = ""
    units: int = 0  # the units it stands for: 1 for a box, the iterations of a stack


@dataclass
class _Cluster:
    scope: Scope
    elems: list[_Elem] = field(default_factory=list)


class _Blocks:
    def __init__(self, analysis: Analysis):
        self.g: FlowGraph = analysis.graph
        self.of: dict[str, str] = {}  # node id -> name of the element that draws it
        self.order: list[_Elem | _Cluster | GraphNode] = []  # terminals are GraphNodes
        nodes = sorted(self.g.nodes.values(), key=lambda n: n.index)
        for n in nodes:
            if n.kind == "input":
                self._terminal(n)
        for run in runs(scope_tree(self.g).children):
            self.order.extend(self._place(run, top=True))
        for n in nodes:
            if n.kind == "latent":
                self._terminal(n)

    def _terminal(self, n: GraphNode) -> None:
        self.order.append(n)
        self.of[n.id] = n.id

    def _elem(self, e: _Elem) -> _Elem:
        for m in e.members:
            self.of[m.id] = e.name
        return e

    # -- what each part of the spec becomes ------------------------------------------------
    def _place(self, run: list[Item], top: bool) -> list[_Elem | _Cluster]:
        if len(run) > MAX_RUN:
            return [self._stack(run)]
        out: list[_Elem | _Cluster] = []
        for item in run:
            if isinstance(item, GraphNode):
                out.append(self._op(item))
            elif top and item.scopes():
                cluster = _Cluster(item)
                for sub in runs(item.children):
                    cluster.elems.extend(self._place(sub, top=False))  # type: ignore[arg-type]
                out.append(cluster)
            else:
                out.extend(self._unit(item))
        return out

    def _op(self, n: GraphNode) -> _Elem:
        role = _role(n)
        kind = {"augment": "aug", "reshape": "reshape"}.get(role, "op")
        out = n.out_types.get("out")
        tip = f"{n.id} ({n.op_name}, {role})" + (f" -> {out}" if out is not None else "")
        label = "" if kind == "aug" else _op_label(n)
        return self._elem(_Elem(n.id, kind, [n], label,  # type: ignore[arg-type]
                                f"{tip}, {n.param_count:,} parameters"))

    def _unit(self, scope: Scope) -> list[_Elem]:
        """A scope as one box, after the dots of the augmentations that open it."""
        members = list(scope.ops())
        inside = {m.id for m in members}
        opening = [m for m in members if _role(m) == "augment"
                   and not any(u in inside for u, _ in self.g.data_inputs(m.id))]
        pulled = {m.id for m in opening}
        rest = [m for m in members if m.id not in pulled]
        out = [self._op(m) for m in opening]
        if not rest:
            return out
        params = sum(m.param_count for m in rest)
        tip = (f"{scope.id} ({_uses(scope)}): {_plural(len(rest), 'op')}, "
               f"{params:,} parameters")
        if all(_role(m) == "reshape" for m in rest):
            names = list(dict.fromkeys(m.op_name for m in rest))
            label = f"{scope.tail}\n{' + '.join(names)}"
            out.append(self._elem(_Elem(scope.id, "reshape", rest, label, tip)))
        else:
            shown = [c for c in scope.children
                     if isinstance(c, Scope) or c.id not in pulled]
            summary = self._summary(shown)
            if scope.template is not None:
                summary = f"{scope.template}: {summary}"
            label = f"{scope.tail}\n{summary}"
            out.append(self._elem(_Elem(scope.id, "box", rest, label, tip, units=1)))
        return out

    def _stack(self, run: list[Item]) -> _Elem:
        """A long repeat as one box: ``k0 … k31`` / ``32 × step``."""
        first, last = run[0], run[-1]
        members = [m for it in run for m in (it.ops() if isinstance(it, Scope) else [it])]
        tail = first.id.rsplit(".", 1)[-1], last.id.rsplit(".", 1)[-1]
        params = sum(m.param_count for m in members)
        name = f"{first.id}..{tail[1]}"  # ".." never occurs in a node id
        label = f"{tail[0]} … {tail[1]}\n{len(run)} × {run_name(run)}"
        tip = f"{first.id} … {last.id}: {_plural(len(members), 'op')}, {params:,} parameters"
        return self._elem(_Elem(name, "stack", members, label, tip,
                                units=len(run) if isinstance(first, Scope) else 0))

    @staticmethod
    def _summary(children: list[Item]) -> str:
        """What a unit holds: ``5 × glow_like_module``, ``3 ops``."""
        parts, n_ops = [], 0
        for run in runs(children):
            if isinstance(run[0], Scope):
                parts.append(f"{len(run)} × {run_name(run)}")
            else:
                n_ops += len(run)
        if n_ops:
            parts.append(_plural(n_ops, "op"))
        return ", ".join(parts)

    # -- drawing ------------------------------------------------------------------------------
    def draw(self, dot: Any) -> None:
        for item in self.order:
            if isinstance(item, GraphNode):
                _terminal(dot, item, _MAIN)
            elif isinstance(item, _Elem):
                self._draw_elem(dot, item)
            else:
                self._draw_cluster(dot, item)
        self._edges(dot)

    def _draw_cluster(self, dot: Any, c: _Cluster) -> None:
        scope = c.scope
        params = sum(m.param_count for e in c.elems for m in e.members)
        n_units = sum(e.units for e in c.elems)
        head = scope.id if scope.template is None else f"{scope.id} · {scope.template}"
        count = f"{_plural(n_units, 'unit')}, " if n_units else ""
        with dot.subgraph(name=f"cluster_{scope.id}") as sub:
            sub.attr(label=_text(f"{head}\n{count}{_fmt_count(params)} params"),
                     style="rounded", color="#555555", fontsize="11",
                     tooltip=f"{scope.id} ({_uses(scope)}): {params:,} parameters")
            for e in c.elems:
                self._draw_elem(sub, e)

    def _draw_elem(self, dot: Any, e: _Elem) -> None:
        common = {"group": _MAIN, "tooltip": e.tip}
        if e.kind == "aug":
            dot.node(e.name, "", shape="circle", style="filled", fillcolor=AUG_COLOR,
                     color=AUG_COLOR, width="0.18", height="0.18", fixedsize="true", **common)
        elif e.kind == "reshape":
            dot.node(e.name, _text(e.label), shape="square", style="dotted,bold",
                     fontsize="9", **common)
        elif e.kind == "op":
            fill = ROLE_FILL.get(_role(e.members[0]), "#ffffff")
            dot.node(e.name, _text(e.label), shape="box", style="rounded,filled",
                     fillcolor=fill, **common)
        else:  # a unit box, or a stack of them
            dot.node(e.name, _text(e.label), shape="box", style="filled", fillcolor=UNIT_FILL,
                     color="#888888", width="0.9", height="0.75",
                     peripheries="2" if e.kind == "stack" else None, **common)

    def _edges(self, dot: Any) -> None:
        seen: set[tuple] = set()
        for v in sorted(self.g.nodes.values(), key=lambda n: n.index):
            ev = self.of[v.id]
            for kind, ins in (("data", self.g.data_inputs(v.id)),
                              ("condition", self.g.condition_inputs(v.id))):
                for u, port in ins:
                    eu = self.of[u]
                    if eu == ev:
                        continue
                    t = self.g.type_of(u, port)
                    label = str(t) if (kind == "data" and t is not None) else None
                    key = (eu, ev, kind, label)
                    if key in seen:
                        continue
                    seen.add(key)
                    if kind == "data":
                        dot.edge(eu, ev, label=label, weight="4")
                    else:
                        _cond_edge(dot, eu, ev, port, u)


# -- the detailed view -----------------------------------------------------------------------

_SHADES = ("#ffffff", "#f4f4f4", "#e8e8e8", "#dcdcdc")


def _detailed(analysis: Analysis, dot: Any) -> None:
    g = analysis.graph
    nodes = sorted(g.nodes.values(), key=lambda n: n.index)

    def op_node(target: Any, n: GraphNode) -> None:
        role = _role(n)
        style = "filled,dotted" if role == "reshape" else "filled,rounded"
        target.node(n.id, _text(_op_label(n)), group=_MAIN, shape="box", style=style,
                    fillcolor=ROLE_FILL.get(role, "#ffffff"),
                    tooltip=f"{n.id} ({n.op_name}, {role}), {n.param_count:,} parameters")

    def emit(target: Any, scope: Scope, depth: int) -> None:
        for child in scope.children:
            if isinstance(child, GraphNode):
                op_node(target, child)
                continue
            label = child.tail if child.template is None else f"{child.tail} · {child.template}"
            with target.subgraph(name=f"cluster_{child.id}") as sub:
                sub.attr(label=_text(label), style="rounded,filled",
                         fillcolor=_SHADES[min(depth, len(_SHADES) - 1)], color="#888888",
                         fontsize="10", tooltip=f"{child.id} ({_uses(child)})")
                emit(sub, child, depth + 1)

    for n in nodes:
        if n.kind == "input":
            _terminal(dot, n, _MAIN)
    emit(dot, scope_tree(g), 0)
    for n in nodes:
        if n.kind == "latent":
            _terminal(dot, n, None)
    for v in nodes:
        for u, port in g.data_inputs(v.id):
            t = g.type_of(u, port)
            text = str(t) if t is not None else ""
            if port != "out":
                text = f"{port}: {text}" if text else port
            dot.edge(u, v.id, label=_text(text) if text else None)
        for u, port in g.condition_inputs(v.id):
            _cond_edge(dot, u, v.id, port, u)


# -- public API ------------------------------------------------------------------------------

def diagram(analysis: Analysis, view: View = "blocks", *, rankdir: str = "LR") -> Any:
    """The spec's diagram as a `graphviz.Digraph` (see the module docstring for the views)."""
    dot = _new_graph(analysis, view, rankdir)
    if view == "blocks":
        _Blocks(analysis).draw(dot)
    else:
        _detailed(analysis, dot)
    return dot


def to_dot(analysis: Analysis, view: View = "blocks", *, rankdir: str = "LR") -> str:
    """The DOT source of `diagram`: the same spec always gives the same text."""
    return diagram(analysis, view, rankdir=rankdir).source
