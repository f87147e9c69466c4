r"""Diagrams of a spec's flow graph as graphviz DOT, from the static analysis alone.

Nothing here builds a model: `to_dot` reads an `Analysis` (see `flowgraph.graph.analyze`) and
`render` runs graphviz's ``dot`` on the text. Two views:

``blocks`` (default) reads like Fig. 3 of the DenseFlow paper, derived from the id hierarchy
(``block1.u3.m2.coupling``) and op flags, with no model names hard-coded:

- a top-level group with sub-groups is a cluster (a *block*); its second-level groups are gray
  boxes (*units*) labelled with their number of direct children (*modules*); its second-level
  ops are drawn one by one;
- a stochastic augmentation (``cross_unit_coupling``, or any stochastic op that does not
  dequantize) is a small blue dot, pulled out of its unit and placed before it; its conditions
  (the earlier representations) arrive as dashed blue edges;
- a group made only of space-to-channel reshapes (a ``squeeze`` and the ``split`` that drops
  half of the channels to a latent) is a dotted square, as is a lone ``squeeze``/``unsqueeze``;
- any other top-level group (Glow steps, RealNVP layers, ...) collapses into one gray box;
- latents are terminal ellipses labelled with their prior and shape; data edges carry shapes.

``detailed`` draws every op node (id tail and op name) inside nested clusters, one per id
level; data edges are solid and labelled with shapes, condition edges dashed and blue.

The text is deterministic: the same spec gives the same DOT, with node names taken from ids.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from flowgraph.errors import FlowgraphError
from flowgraph.graph import Analysis, FlowGraph, GraphNode

__all__ = ["FORMATS", "DrawError", "render", "to_dot"]

View = Literal["blocks", "detailed"]
FORMATS = ("svg", "png", "pdf")
_SOURCE_FORMATS = ("dot", "gv")

COND_COLOR = "#1f77b4"     # conditioning / skip connections (the paper's blue)
AUG_COLOR = "#1f77b4"      # cross-unit coupling dots
UNIT_FILL = "#c8c8c8"      # DenseFlow units: gray squares
LATENT_FILL = "#f2f2f2"
_SPACE_TO_CHANNEL = frozenset({"squeeze", "unsqueeze"})
_RESHAPES = _SPACE_TO_CHANNEL | {"split", "concat"}
_MAIN = "main"  # graphviz `group` of the blocks view's elements: keeps the main chain straight


class DrawError(FlowgraphError):
    """Drawing failed: graphviz missing, an unknown format, or ``dot`` reported an error."""

    def __init__(self, message: str, usage: bool = False):
        super().__init__(message)
        self.usage = usage


# -- DOT text helpers ------------------------------------------------------------------------

def _q(text: str) -> str:
    """A DOT quoted string; newlines become centred line breaks."""
    s = str(text).replace("\\", "\\\\").replace('"', '\\"')
    return '"' + s.replace("\r", "").replace("\n", "\\n") + '"'


def _attrs(**kw: object) -> str:
    items = [f"{k}={_q(str(v))}" for k, v in kw.items() if v is not None]
    return f" [{', '.join(items)}]" if items else ""


def _fmt_count(n: int) -> str:
    for div, suffix in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
        if n >= div:
            return f"{n / div:.3g}{suffix}"
    return str(n)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 1

    def line(self, text: str) -> None:
        self.lines.append("  " * self.depth + text)

    def node(self, name: str, **kw: object) -> None:
        self.line(f"{_q(name)}{_attrs(**kw)};")

    def edge(self, src: str, dst: str, **kw: object) -> None:
        self.line(f"{_q(src)} -> {_q(dst)}{_attrs(**kw)};")

    def open_cluster(self, name: str, **kw: object) -> None:
        self.line(f"subgraph {_q('cluster_' + name)} {{")
        self.depth += 1
        for k, v in kw.items():
            if v is not None:
                self.line(f"{k}={_q(str(v))};")

    def close(self) -> None:
        self.depth -= 1
        self.line("}")


def _header(analysis: Analysis, view: str, rankdir: str) -> list[str]:
    t = analysis.totals
    title = (f"{analysis.spec.name} ({view} view): {t.params:,} parameters, "
             f"{t.latent_dims:,} latent dims")
    graph = _attrs(rankdir=rankdir, label=title, labelloc="t", fontname="Helvetica",
                   fontsize=14, nodesep="0.25", ranksep="0.35", newrank="true")
    return [
        f"digraph {_q(analysis.spec.name)} {{",
        f"  graph{graph};",
        f"  node{_attrs(fontname='Helvetica', fontsize=10)};",
        f"  edge{_attrs(fontname='Helvetica', fontsize=8, arrowsize='0.6')};",
    ]


# -- shared node classification --------------------------------------------------------------

def _is_augmentation(node: GraphNode) -> bool:
    op = node.op
    if node.kind != "op" or op is None:
        return False
    return op.name == "cross_unit_coupling" or (op.stochastic and not op.dequantizes)


def _sorted_nodes(g: FlowGraph) -> list[GraphNode]:
    return sorted(g.nodes.values(), key=lambda n: n.index)


def _input_label(node: GraphNode) -> str:
    t = node.out_types.get("out")
    role = "" if node.role == "data" else f" ({node.role})"
    return f"{node.id}{role}\n{t}" if t is not None else node.id


def _latent_label(node: GraphNode) -> str:
    prior = node.op.name if node.op is not None else getattr(node.decl, "dist", "?")
    shape = f"\n{node.in_types[0]}" if node.in_types else ""
    return f"{node.id}\n{prior}{shape}"


def _draw_terminal(w: _Writer, node: GraphNode, group: str | None = None) -> None:
    if node.kind == "input":
        w.node(node.id, group=group if node.role == "data" else None,
               label=_input_label(node), shape="oval",
               style="dashed" if node.role == "context" else "bold", tooltip=node.id)
    else:
        w.node(node.id, label=_latent_label(node), shape="ellipse", style="filled",
               fillcolor=LATENT_FILL, tooltip=f"latent {node.id}")


def _cond_tip(src: str, port: str) -> str:
    return f"condition {src}" + (f":{port}" if port != "out" else "")


def _drops_to_latent(g: FlowGraph, node: GraphNode) -> bool:
    return any(g.nodes[v].kind == "latent" for _, v in g.graph.out_edges(node.id))


def _reshape_label(g: FlowGraph, ops: Iterable[GraphNode]) -> str:
    words = []
    for n in ops:
        word = "drop" if n.op_name == "split" and _drops_to_latent(g, n) else n.op_name
        if word not in words:
            words.append(word)
    return " + ".join(words)


# -- the blocks view -------------------------------------------------------------------------

@dataclass
class _Elem:
    """One drawn thing of the blocks view: a node, a collapsed group, a dot or a square."""

    name: str
    kind: Literal["terminal", "op", "aug", "box", "reshape"]
    cluster: str | None
    members: list[GraphNode] = field(default_factory=list)


class _BlocksView:
    def __init__(self, analysis: Analysis):
        self.a = analysis
        self.g = analysis.graph
        self.nodes = _sorted_nodes(self.g)
        self.elems: dict[str, _Elem] = {}
        self.of: dict[str, str] = {}  # node id -> element name
        self._classify()

    # which group prefixes are blocks / reshapes
    def _classify(self) -> None:
        ops = [n for n in self.nodes if n.kind == "op"]
        by_top: dict[str, list[GraphNode]] = {}
        for n in ops:
            parts = n.id.split(".")
            if len(parts) > 1:
                by_top.setdefault(parts[0], []).append(n)
        blocks = {top for top, members in by_top.items()
                  if any(len(m.id.split(".")) >= 3 for m in members if not _is_augmentation(m))}

        def group_of(parts: list[str]) -> str | None:
            if len(parts) == 1:
                return None
            if parts[0] in blocks and len(parts) >= 3:
                return ".".join(parts[:2])
            if parts[0] not in blocks:
                return parts[0]
            return None

        members: dict[str, list[GraphNode]] = {}
        for n in ops:
            if not _is_augmentation(n):
                grp = group_of(n.id.split("."))
                if grp is not None:
                    members.setdefault(grp, []).append(n)
        reshape_groups = {grp for grp, ms in members.items()
                          if {m.op_name for m in ms} <= _RESHAPES
                          and {m.op_name for m in ms} & _SPACE_TO_CHANNEL}

        for n in self.nodes:
            parts = n.id.split(".")
            cluster = parts[0] if parts[0] in blocks and len(parts) > 1 else None
            if n.kind != "op":
                self._add(n, n.id, "terminal", None)
            elif _is_augmentation(n):
                self._add(n, n.id, "aug", cluster)
            else:
                grp = group_of(parts)
                if grp is None:
                    kind = "reshape" if n.op_name in _SPACE_TO_CHANNEL else "op"
                    self._add(n, n.id, kind, cluster)
                else:
                    self._add(n, grp, "reshape" if grp in reshape_groups else "box", cluster)
        self.blocks = blocks

    def _add(self, node: GraphNode, name: str, kind: str, cluster: str | None) -> None:
        elem = self.elems.get(name)
        if elem is None:
            elem = self.elems[name] = _Elem(name, kind, cluster)  # type: ignore[arg-type]
        elem.members.append(node)
        self.of[node.id] = name

    def _params(self, members: list[GraphNode]) -> int:
        return sum(m.param_count for m in members)

    def _draw_elem(self, w: _Writer, e: _Elem) -> None:
        if e.kind == "terminal":
            _draw_terminal(w, e.members[0], _MAIN)
            return
        params = self._params(e.members)
        tip = f"{e.name}: {_plural(len(e.members), 'op')}, {params:,} parameters"
        tail = e.name.split(".")[-1]
        if e.kind == "aug":
            n = e.members[0]
            out = n.out_types.get("out")
            w.node(e.name, group=_MAIN, label="", shape="circle", style="filled",
                   fillcolor=AUG_COLOR, color=AUG_COLOR, width="0.18", height="0.18",
                   fixedsize="true", tooltip=f"{n.id} ({n.op_name}) -> {out}, "
                                              f"{n.param_count:,} parameters")
        elif e.kind == "reshape":
            label = _reshape_label(self.g, e.members)
            if len(e.members) > 1 or e.name != e.members[0].id or tail != label:
                label = f"{tail}\n{label}"
            w.node(e.name, group=_MAIN, label=label, shape="square", style="dotted,bold",
                   fontsize=9, tooltip=tip)
        elif e.kind == "op":
            n = e.members[0]
            label = tail if tail == n.op_name else f"{tail}\n{n.op_name}"
            w.node(e.name, group=_MAIN, label=label, shape="box", style="rounded",
                   tooltip=f"{n.id} ({n.op_name}), {n.param_count:,} parameters")
        else:  # box: a collapsed group
            depth = len(e.name.split("."))
            children: list[str] = []
            nested = False
            for m in e.members:
                parts = m.id.split(".")
                child = parts[depth]
                nested = nested or len(parts) > depth + 1
                if child not in children:
                    children.append(child)
            word = "module" if nested else "op"
            w.node(e.name, group=_MAIN, label=f"{tail}\n{_plural(len(children), word)}",
                   shape="box",
                   style="filled", fillcolor=UNIT_FILL, color="#888888", width="0.9",
                   height="0.75", tooltip=tip)

    def draw(self, w: _Writer) -> None:
        emitted: set[str] = set()
        for e in self.elems.values():
            if e.name in emitted:
                continue
            if e.cluster is None:
                self._draw_elem(w, e)
                emitted.add(e.name)
                continue
            # a block: open its cluster once, drawing all of its elements in order
            block = e.cluster
            inside = [x for x in self.elems.values() if x.cluster == block]
            units = [x for x in inside if x.kind == "box"]
            params = sum(self._params(x.members) for x in inside)
            label = (f"{block}\n{_plural(len(units), 'unit')}, {_fmt_count(params)} params"
                     if units else f"{block}\n{_fmt_count(params)} params")
            w.open_cluster(block, label=label, style="rounded", color="#555555",
                           fontsize=11, tooltip=f"{block}: {params:,} parameters")
            for x in inside:
                self._draw_elem(w, x)
                emitted.add(x.name)
            w.close()
        self._edges(w)

    def _edges(self, w: _Writer) -> None:
        seen: set[tuple] = set()
        for v in self.nodes:
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
                        w.edge(eu, ev, label=label, weight="4")
                    else:
                        w.edge(eu, ev, style="dashed", color=COND_COLOR, arrowhead="vee",
                               weight="0", tooltip=_cond_tip(u, port))


# -- the detailed view -----------------------------------------------------------------------

def _detailed(analysis: Analysis, w: _Writer) -> None:
    g = analysis.graph
    nodes = _sorted_nodes(g)
    # tree of id prefixes: prefix -> ordered children (sub-prefixes and node ids)
    children: dict[tuple[str, ...], list[tuple[str, object]]] = {(): []}
    for n in nodes:
        parts = tuple(n.id.split(".")) if n.kind == "op" else (n.id,)
        for cut in range(1, len(parts)):
            prefix = parts[:cut]
            if prefix not in children:
                children[prefix] = []
                children[parts[:cut - 1]].append(("group", prefix))
        children[parts[:-1]].append(("node", n))

    def op_node(n: GraphNode) -> None:
        tail = n.id.split(".")[-1]
        label = tail if tail == n.op_name else f"{tail}\n{n.op_name}"
        fill = "#ffffff"
        if _is_augmentation(n):
            fill = "#c6dbef"
        elif n.op is not None and n.op.dequantizes:
            fill = "#e5f5e0"
        elif n.op_name in _RESHAPES:
            fill = "#f7f7f7"
        style = "filled,dotted" if n.op_name in _SPACE_TO_CHANNEL else "filled,rounded"
        w.node(n.id, group=_MAIN, label=label, shape="box", style=style, fillcolor=fill,
               tooltip=f"{n.id} ({n.op_name}), {n.param_count:,} parameters")

    def emit(prefix: tuple[str, ...]) -> None:
        for what, item in children[prefix]:
            if what == "group":
                sub: tuple[str, ...] = item  # type: ignore[assignment]
                depth = len(sub)
                shade = ("#ffffff", "#f4f4f4", "#e8e8e8", "#dcdcdc")[min(depth - 1, 3)]
                w.open_cluster(".".join(sub), label=sub[-1], style="rounded,filled",
                               fillcolor=shade, color="#888888", fontsize=10,
                               tooltip=".".join(sub))
                emit(sub)
                w.close()
            else:
                n: GraphNode = item  # type: ignore[assignment]
                if n.kind == "op":
                    op_node(n)
                else:
                    _draw_terminal(w, n, _MAIN)

    emit(())
    for v in nodes:
        for u, port in g.data_inputs(v.id):
            t = g.type_of(u, port)
            text = str(t) if t is not None else ""
            if port != "out":
                text = f"{port}: {text}" if text else port
            w.edge(u, v.id, label=text or None)
        for u, port in g.condition_inputs(v.id):
            w.edge(u, v.id, style="dashed", color=COND_COLOR, arrowhead="vee",
                   tooltip=_cond_tip(u, port))


# -- public API ------------------------------------------------------------------------------

def to_dot(analysis: Analysis, view: View = "blocks", *, rankdir: str = "LR") -> str:
    """The DOT source of a spec's diagram (see the module docstring for the two views)."""
    if view not in ("blocks", "detailed"):
        raise DrawError(f"unknown view {view!r}; views: blocks, detailed", usage=True)
    if rankdir not in ("LR", "TB", "RL", "BT"):
        raise DrawError(f"unknown rankdir {rankdir!r}; one of LR, TB, RL, BT", usage=True)
    w = _Writer()
    w.lines = _header(analysis, view, rankdir)
    if view == "blocks":
        _BlocksView(analysis).draw(w)
    else:
        _detailed(analysis, w)
    w.lines.append("}")
    return "\n".join(w.lines) + "\n"


def _dot_binary() -> str:
    exe = shutil.which("dot")
    if exe is None:
        raise DrawError("graphviz's `dot` program was not found on PATH; install graphviz: "
                        "apt-get install graphviz (Debian/Ubuntu), brew install graphviz "
                        "(macOS), conda install graphviz")
    return exe


def render(dot_source: str, path: str | Path, fmt: str | None = None,
           timeout: float | None = 600) -> Path:
    """Run graphviz ``dot`` on `dot_source`, writing `path` as svg, png or pdf.

    The format comes from the suffix of `path` unless `fmt` is given; ``.dot``/``.gv`` write
    the source itself. Returns the path written.
    """
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt in _SOURCE_FORMATS:
        path.write_text(dot_source, encoding="utf-8")
        return path
    if fmt not in FORMATS:
        raise DrawError(f"cannot draw to {str(path)!r}: unknown format {fmt or '(none)'!r}; "
                        f"use a file ending in .{', .'.join(FORMATS + _SOURCE_FORMATS)}",
                        usage=True)
    if not path.parent.is_dir():
        raise DrawError(f"cannot write {str(path)!r}: directory {str(path.parent)!r} does "
                        "not exist", usage=True)
    exe = _dot_binary()
    try:
        proc = subprocess.run([exe, f"-T{fmt}", "-o", str(path)], input=dot_source.encode(),
                              capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise DrawError(f"graphviz `dot` took longer than {timeout:g} s; try the blocks "
                        "view or --rankdir TB") from None
    except OSError as e:
        raise DrawError(f"cannot run graphviz `dot` ({exe}): {e}") from None
    err = proc.stderr.decode(errors="replace").strip()
    if proc.returncode != 0:
        raise DrawError(f"graphviz `dot` failed (exit {proc.returncode}): {err or 'no output'}")
    if not path.is_file() or path.stat().st_size == 0:
        raise DrawError(f"graphviz `dot` wrote nothing to {str(path)!r}"
                        + (f": {err}" if err else ""))
    return path
