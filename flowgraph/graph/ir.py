r"""`FlowGraph`: the expanded spec as a networkx graph of typed nodes and data/condition edges.

Graph nodes are the spec's inputs, its op nodes and its latents. An edge carries ``kind``
("data" or "condition"), the source ``port`` and the ``slot`` (position among the target's data
inputs or conditions). Building the graph resolves every op name and validates every node's
params with the op's own model; shapes are filled in later by `flowgraph.graph.shapes`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import networkx as nx
from pydantic import ValidationError

from flowgraph.core.op import OpDef
from flowgraph.core.registry import OpRegistry
from flowgraph.core.types import TensorType
from flowgraph.errors import Issue
from flowgraph.spec.expand import LatentDecl, NodeDecl, Program, Ref
from flowgraph.spec.io import SourceMap
from flowgraph.spec.validation import clip, validation_issues

__all__ = ["FLOW_ATTRIBUTES", "FlowGraph", "GraphNode", "build_graph", "reserved_names"]

Kind = Literal["input", "op", "latent"]


@dataclass
class GraphNode:
    """One node with everything known about it statically."""

    id: str
    kind: Kind
    index: int
    path: tuple
    op: OpDef | None = None
    params: Any = None
    decl: NodeDecl | LatentDecl | None = None
    role: str = "data"  # inputs only: data | context
    in_types: list[TensorType] = field(default_factory=list)
    cond_types: list[TensorType] = field(default_factory=list)
    out_types: dict[str, TensorType] = field(default_factory=dict)
    param_count: int = 0
    added_dims: int = 0
    noise_numel: int = 0
    trail: tuple[str, ...] = ()

    @property
    def op_name(self) -> str:
        return self.op.name if self.op is not None else self.kind


@dataclass
class FlowGraph:
    program: Program
    graph: nx.MultiDiGraph
    nodes: dict[str, GraphNode]
    smap: SourceMap
    forward_order: list[str] = field(default_factory=list)
    inverse_order: list[str] = field(default_factory=list)
    #: (node id, port) -> the step of `inverse_order` that reconstructs it (-1: from the start)
    inverse_known_at: dict[tuple[str, str], int] = field(default_factory=dict)

    def data_inputs(self, node_id: str) -> list[tuple[str, str]]:
        return self._edges[0].get(node_id, [])

    def condition_inputs(self, node_id: str) -> list[tuple[str, str]]:
        return self._edges[1].get(node_id, [])

    def consumers(self, node_id: str, port: str, kind: str = "data") -> list[str]:
        return self._edges[2].get((node_id, port, kind), [])

    @functools.cached_property
    def _edges(self) -> tuple[dict, dict, dict]:
        """Incoming data / condition edges per node (by slot) and consumers per tensor, read
        once from the (immutable after building) networkx graph."""
        data: dict[str, list] = {}
        cond: dict[str, list] = {}
        users: dict[tuple, list[str]] = {}
        for u, v, d in self.graph.edges(data=True):
            (data if d["kind"] == "data" else cond).setdefault(v, []).append(
                (d["slot"], u, d["port"]))
            users.setdefault((u, d["port"], d["kind"]), []).append(v)
        sort = lambda m: {k: [(u, p) for _, u, p in sorted(e)] for k, e in m.items()}
        return sort(data), sort(cond), users

    def type_of(self, node_id: str, port: str) -> TensorType | None:
        return self.nodes[node_id].out_types.get(port)

    def ops(self) -> Iterator[GraphNode]:
        return (n for n in self.nodes.values() if n.kind == "op")

    def latents(self) -> list[GraphNode]:
        return [n for n in self.nodes.values() if n.kind == "latent"]

    def data_input(self) -> GraphNode:
        return next(n for n in self.nodes.values() if n.kind == "input" and n.role == "data")

    def context_input(self) -> GraphNode | None:
        return next((n for n in self.nodes.values()
                     if n.kind == "input" and n.role == "context"), None)


#: The compiled flow's own attributes (beyond nn.Module's); a test keeps this in step with
#: `flowgraph.compile.runtime.CompiledFlow`, which sits above this layer.
FLOW_ATTRIBUTES = frozenset({
    "bits", "bits_per_dim", "code", "data_dims", "data_shape", "draw_noise", "freeze",
    "initialize", "inverse", "inverse_and_log_det", "is_initialized", "latent_dim",
    "latent_parts", "latent_shapes", "log_prob", "log_prob_once", "noise_dim", "sample",
    "sample_from_noise", "set_conditioner_dtype", "set_conditioner_recompute", "spec_hash",
    "spec_text",
})


@functools.cache
def reserved_names() -> frozenset[str]:
    """Names no id segment may take: attributes of every module (each segment is a submodule
    attribute of an nn.Module) and, for the first segment, of the compiled flow."""
    from torch import nn

    return frozenset(n for n in dir(nn.Module) if not n.startswith("__")) | FLOW_ATTRIBUTES


class _Builder:
    def __init__(self, program: Program, registry: OpRegistry, smap: SourceMap,
                 quiet_missing: bool):
        self.program, self.registry, self.smap = program, registry, smap
        self.quiet_missing = quiet_missing
        self.issues: list[Issue] = []
        self.g = nx.MultiDiGraph()
        self.nodes: dict[str, GraphNode] = {}

    def issue(self, rule: str, message: str, path: tuple, **kw: Any) -> None:
        trail = kw.pop("trail", ())
        self.issues.append(Issue(rule, message, location=self.smap.locate(path),
                                 context=tuple(f"in {t}" for t in trail), **kw))

    def add(self, node: GraphNode) -> bool:
        if node.id in self.nodes:
            first = self.nodes[node.id]
            self.issue("duplicate-id", f"id {node.id!r} is defined twice", node.path,
                       node=node.id, hint=f"first defined at {self.smap.locate(first.path)}")
            return False
        self.nodes[node.id] = node
        self.g.add_node(node.id)
        return True

    def parse(self, op: OpDef, params: Any, path: tuple, node_id: str,
              trail: tuple[str, ...] = ()) -> Any:
        if not isinstance(params, Mapping):
            self.issue("param", f"{op.name}: params must be a mapping", path, node=node_id,
                       found=clip(repr(params)), trail=trail)
            return None
        try:
            return op.parse(params)
        except ValidationError as e:
            ctx = tuple(f"in {t}" for t in trail)
            self.issues += [replace(i, context=ctx) for i in validation_issues(
                e, op.Params, self.smap.locate, rule="param", prefix=path, node=node_id,
                label=op.name)]
            return None

    def run(self) -> FlowGraph:
        index = 0
        for decl in self.program.inputs.values():
            self.add(GraphNode(decl.name, "input", index, decl.path, role=decl.role,
                               out_types={"out": TensorType(decl.shape, decl.bits)}))
            index += 1
        for decl in self.program.nodes:
            index += 1
            if decl.op not in self.registry or self.registry.get(decl.op).is_prior:
                close = self.registry.suggestions(decl.op)
                self.issue("unknown-op", f"unknown op {decl.op!r}", decl.path + ("op",),
                           node=decl.id, trail=decl.trail,
                           hint=(f"did you mean {', '.join(map(repr, close))}?" if close else
                                 "`flowgraph ops` lists the ops"))
                op = None
            else:
                op = self.registry.get(decl.op)
            params = (self.parse(op, decl.params, decl.path + ("params",), decl.id, decl.trail)
                      if op else None)
            self.add(GraphNode(decl.id, "op", index, decl.path, op, params, decl,
                               trail=decl.trail))
        for lat in self.program.latents:
            index += 1
            op = self.registry.get(lat.dist) if lat.dist in self.registry else None
            if op is None or not op.is_prior:
                priors = [o.name for o in self.registry if o.is_prior]
                self.issue("unknown-prior", f"unknown prior {lat.dist!r}",
                           lat.path + ("prior",), node=lat.name,
                           hint=f"priors: {', '.join(priors)}")
                op = None
            params = self.parse(op, lat.params, lat.path + ("prior", "params"),
                                lat.name) if op else None
            self.add(GraphNode(lat.name, "latent", index, lat.path, op, params, lat))
        self._check_names()
        for node in list(self.nodes.values()):
            if node.kind == "op":
                self._connect(node, node.decl.inputs, "data", ("in",))
                self._connect(node, node.decl.conditions, "condition", ("condition",))
            elif node.kind == "latent":
                self._connect(node, (node.decl.source,), "data", ("from",))
                self._connect(node, node.decl.conditions, "condition", ("condition",))
        return FlowGraph(self.program, self.g, self.nodes, self.smap)

    def _check_names(self) -> None:
        ids = set(self.nodes)
        reserved = reserved_names()
        for node in self.nodes.values():
            parts = node.id.split(".")
            bad = next((p for p in parts if p in reserved or p.startswith("_")), None)
            if bad is not None:
                self.issue("id", f"{bad!r} is a reserved name (an attribute of the compiled "
                           "module, or a name starting with '_', which the compiler uses)",
                           node.path, node=node.id, found=repr(node.id),
                           hint="rename the node or template instance")
            for cut in range(1, len(parts)):
                prefix = ".".join(parts[:cut])
                if prefix in ids:
                    self.issue("id", f"{prefix!r} is both a node and the prefix of "
                               f"{node.id!r}", node.path, node=node.id)
                    break

    def _connect(self, node: GraphNode, refs: tuple[Ref, ...], kind: str, key: tuple) -> None:
        for slot, ref in enumerate(refs):
            src = self.nodes.get(ref.node)
            path = node.path + key
            if src is None and self.quiet_missing:
                continue  # a node that failed to expand; already reported
            if src is None or src.kind == "latent":
                self.issue("reference", f"{ref.node!r} is not a tensor of this graph", path,
                           node=node.id, found=str(ref))
                continue
            port = self._port(src, ref, node, path)
            if port is not None:
                self.g.add_edge(src.id, node.id, kind=kind, port=port, slot=slot)

    def _port(self, src: GraphNode, ref: Ref, node: GraphNode, path: tuple) -> str | None:
        ports = src.op.outputs if src.kind == "op" and src.op else ("out",)
        if src.kind == "op" and src.op is None:
            return ref.port or "out"  # unknown op: already reported
        if ref.port is None:
            if len(ports) == 1:
                return ports[0]
            self.issue("port", f"{src.id!r} ({src.op_name}) has outputs "
                       f"{', '.join(ports)}; name one as '{src.id}:<port>'", path,
                       node=node.id, found=str(ref))
            return None
        if ref.port not in ports:
            self.issue("port", f"{src.id!r} ({src.op_name}) has no output {ref.port!r}; "
                       f"outputs: {', '.join(ports)}", path, node=node.id, found=str(ref))
            return None
        return ref.port


def build_graph(program: Program, registry: OpRegistry, smap: SourceMap | None = None,
                quiet_missing: bool = False) -> tuple[FlowGraph, list[Issue]]:
    """`quiet_missing`: references to absent nodes were already reported by expansion."""
    b = _Builder(program, registry, smap or SourceMap(), quiet_missing)
    graph = b.run()
    return graph, b.issues
