r"""Code generation: a checked `FlowGraph` -> straight-line Python methods (fx-style).

Generated code calls submodules by literal attribute paths (``self.block1.u0.m0.coupling``), so
TorchScript, ``torch.compile(fullgraph=True)`` and ``torch.export`` all see plain straight-line
code: no ModuleList iteration, no dict lookups, no string dispatch. Variables are named after
the nodes that produce them (``block1_u0_m0_coupling``); the compiler's own names start with
``_``, which node ids may not. Ops state their calls through `Writer` (the `Emitter` of
`flowgraph.core.op`); the inverse and sampling methods follow the graph's inverse schedule and
check every read against the tensors that schedule says are known.
"""

from __future__ import annotations

import builtins
import itertools
import keyword
import linecache
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from flowgraph.core.op import Method, ModuleRef, Site, Var
from flowgraph.graph.ir import FlowGraph, GraphNode

__all__ = ["CodegenError", "GeneratedCode", "Layout", "Slot", "Writer", "generate_source",
           "register_source", "release_source"]

_counter = itertools.count()
# Names the generated methods use themselves: parameters, and modules of the namespace.
_TAKEN = frozenset({"self", "x", "z", "eps", "context", "noise", "ld", "lp", "torch", "Tensor", "Optional",
                    "Tuple", "List"}) | frozenset(dir(builtins))


@dataclass(frozen=True)
class Slot:
    """A named slice [start, stop) of a flat per-sample tensor, with its unflattened shape."""

    name: str
    start: int
    stop: int
    shape: tuple[int, ...]


@dataclass
class Layout:
    """Where each latent sits in z, and each stochastic node's noise in the noise tensor."""

    latents: list[Slot] = field(default_factory=list)
    noise: list[Slot] = field(default_factory=list)

    @property
    def latent_dim(self) -> int:
        return self.latents[-1].stop if self.latents else 0

    @property
    def noise_dim(self) -> int:
        return self.noise[-1].stop if self.noise else 0


@dataclass(frozen=True)
class GeneratedCode:
    source: str
    layout: Layout
    #: functions the generated code calls by alias (ops' own helper functions)
    namespace: dict[str, Callable[..., Any]]


class CodegenError(RuntimeError):
    """An op asked for something the generator cannot write (an op bug, named by node)."""


@dataclass(frozen=True)
class _Expr:
    """Generator-internal expression text (never built by ops)."""

    text: str


def _shape_list(shape: tuple[int, ...]) -> str:
    return "[_b, " + ", ".join(str(d) for d in shape) + "]"


def _variable_names(g: FlowGraph) -> dict[tuple[str, str], str]:
    """(node id, port) -> a Python identifier derived from the id, unique in the method."""
    names: dict[tuple[str, str], str] = {}
    used: set[str] = set()
    for node in g.nodes.values():
        if node.kind == "input":
            names[(node.id, "out")] = "x" if node.role == "data" else "context"
            continue
        if node.kind != "op" or node.op is None:
            continue
        for port in node.op.outputs:
            base = re.sub(r"\W", "_", node.id.replace(".", "_"))
            if len(node.op.outputs) > 1:
                base += f"_{port}"
            if base[0].isdigit() or keyword.iskeyword(base) or base in _TAKEN:
                base += "_"
            name, k = base, 2
            while name in used:
                name, k = f"{base}_{k}", k + 1
            used.add(name)
            names[(node.id, port)] = name
    return names


class Writer:
    """Collects the lines of one method; implements `flowgraph.core.op.Emitter`."""

    def __init__(self, namespace: dict[str, Callable[..., Any]]):
        self.lines: list[str] = []
        self.namespace = namespace
        self.node_id = ""

    def call(self, fn: Method | Callable[..., Any], *args: Any, out: Var | Sequence[Var],
             logdet: bool = False, **kwargs: Any) -> None:
        outs = [out] if isinstance(out, Var) else list(out)
        if not outs or not all(isinstance(o, Var) for o in outs):
            raise CodegenError(f"node {self.node_id!r}: `out` must be the site's Var(s)")
        parts = [self._arg(a) for a in args] + [f"{k}={self._arg(v)}" for k, v in kwargs.items()]
        target = ", ".join(o.name for o in outs)
        call = f"{self._fn(fn)}({', '.join(parts)})"
        if logdet:
            self.lines += [f"{target}, _ld = {call}", "ld = ld + _ld"]
        else:
            self.lines.append(f"{target} = {call}")

    def _fn(self, fn: Method | Callable[..., Any]) -> str:
        if isinstance(fn, Method):
            path = f"self.{fn.module.path}"
            return path if fn.name == "forward" else f"{path}.{fn.name}"
        name = getattr(fn, "__name__", "")
        if name and getattr(torch, name, None) is fn:
            return f"torch.{name}"
        if not callable(fn) or not name.isidentifier():
            raise CodegenError(f"node {self.node_id!r}: cannot call {fn!r}")
        for alias, known in self.namespace.items():
            if known is fn:
                return alias
        alias = f"_fn{len(self.namespace)}_{name}"
        self.namespace[alias] = fn
        return alias

    def _arg(self, a: Any) -> str:
        if isinstance(a, (Var, _Expr)):
            return a.name if isinstance(a, Var) else a.text
        if isinstance(a, (list, tuple)):
            inner = ", ".join(self._arg(v) for v in a)
            return f"[{inner}]"
        if a is None or isinstance(a, (bool, int, float, str)):
            return repr(a)
        raise CodegenError(f"node {self.node_id!r}: cannot pass {type(a).__name__} {a!r} to "
                           "generated code (Vars, literals and lists of them only)")


class _Gen:
    def __init__(self, g: FlowGraph):
        self.g = g
        self.names = _variable_names(g)
        self.namespace: dict[str, Callable[..., Any]] = {}
        self.layout = Layout()
        pos = 0
        for lat in g.latents():
            n = lat.in_types[0].numel
            self.layout.latents.append(Slot(lat.id, pos, pos + n, lat.in_types[0].shape))
            pos += n
        pos = 0
        for node_id in g.forward_order:
            node = g.nodes[node_id]
            if node.kind == "op" and node.op.stochastic:
                shape = node.op.noise_shape(node.params, node.in_types)
                self.layout.noise.append(Slot(node_id, pos, pos + node.noise_numel, shape))
                pos += node.noise_numel
        self.noise_slots = {s.name: s for s in self.layout.noise}
        ctx = g.context_input()
        self.uses_context = ctx is not None and any(
            d["kind"] == "condition" for _, _, d in g.graph.out_edges(ctx.id, data=True))

    def var(self, tensor: tuple[str, str], step: int | None = None, reader: str = "") -> Var:
        """The variable of `tensor`; at inverse `step`, only if the schedule has it by then."""
        if step is not None and self.g.inverse_known_at.get(tensor, step) >= step:
            raise CodegenError(f"node {reader!r} reads {tensor[0]}:{tensor[1]} before the "
                               "inverse schedule reconstructs it (compiler bug)")
        return Var(self.names[tensor])

    def comment(self, node: GraphNode) -> str:
        ins = ", ".join(str(t) for t in node.in_types)
        outs = ", ".join(str(t) for t in node.out_types.values()) or "latent"
        return f"# {node.id}: {node.op_name}  {ins} -> {outs}"

    def site(self, node: GraphNode, forward: bool, step: int | None) -> Site:
        data = [self.var(t) for t in self.g.data_inputs(node.id)]
        outs = [self.var((node.id, p), step, node.id) for p in node.op.outputs]
        noise = None
        slot = self.noise_slots.get(node.id)
        if forward and slot is not None:
            noise = _Expr(f"_noise[:, {slot.start}:{slot.stop}]"
                          f".reshape({_shape_list(slot.shape)})")
        conds: tuple = ()
        if forward or node.op.inverse_needs_conditions:  # else they may not exist yet
            conds = tuple(self.var(t, step, node.id) for t in self.g.condition_inputs(node.id))
        return Site(node.id, ModuleRef(node.id), tuple(data if forward else outs),
                    tuple(outs if forward else data), conds, noise, node.params,
                    tuple(node.in_types), tuple(node.out_types[p] for p in node.op.outputs))

    def emit(self, w: Writer, node: GraphNode, forward: bool, step: int | None) -> None:
        w.node_id = node.id
        site = self.site(node, forward, step)
        try:
            (node.op.emit_forward if forward else node.op.emit_inverse)(w, site)
        except CodegenError:
            raise
        except Exception as e:
            raise CodegenError(f"node {node.id!r} ({node.op.name}): its code emission failed: "
                               f"{type(e).__name__}: {e}") from e

    def conds_list(self, node: GraphNode, step: int | None = None) -> str:
        names = [self.var(t, step, node.id).name for t in self.g.condition_inputs(node.id)]
        return "[" + ", ".join(names) + "]"

    def prologue(self, first: str) -> list[str]:
        lines = [f"_b = {first}.shape[0]"]
        if self.uses_context:
            lines.append('assert context is not None, "this flow needs a context input"')
        return lines

    def forward(self) -> str:
        w = Writer(self.namespace)
        w.lines += ["if not x.is_floating_point():", "    x = x.to(self._ref.dtype)"]
        w.lines += self.prologue("x")
        if self.layout.noise_dim:
            draw = (f"    _noise = torch.randn([_b, {self.layout.noise_dim}], "
                    "dtype=x.dtype, device=x.device)")
            w.lines += ["if noise is None:", draw, "else:", "    _noise = noise"]
        w.lines += ["ld = x.new_zeros([_b])", "lp = x.new_zeros([_b])"]
        for node_id in self.g.forward_order:
            node = self.g.nodes[node_id]
            w.lines.append(self.comment(node))
            if node.kind == "latent":
                (src,) = self.g.data_inputs(node_id)
                w.lines.append(f"lp = lp + self.{node_id}.log_prob({self.var(src).name}, "
                               f"{self.conds_list(node)})")
            else:
                self.emit(w, node, True, None)
        zs = ", ".join(f"{self.var(self.g.data_inputs(s.name)[0]).name}.reshape([_b, -1])"
                       for s in self.layout.latents)
        w.lines.append(f"z = torch.cat([{zs}], 1)")
        w.lines.append("return z, ld, lp")
        sig = ("def _forward_terms(self, x: Tensor, context: Optional[Tensor], "
               "noise: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:")
        return _method(sig, w.lines)

    def backward(self, generate: bool) -> str:
        src = "eps" if generate else "z"
        w = Writer(self.namespace)
        w.lines += self.prologue(src)
        w.lines.append(f"ld = {src}.new_zeros([_b])")
        slots = {s.name: s for s in self.layout.latents}
        for step, node_id in enumerate(self.g.inverse_order):
            node = self.g.nodes[node_id]
            w.lines.append(self.comment(node))
            if node.kind == "latent":
                slot = slots[node_id]
                piece = f"{src}[:, {slot.start}:{slot.stop}].reshape({_shape_list(slot.shape)})"
                target = self.var(self.g.data_inputs(node_id)[0]).name
                if generate:
                    w.lines.append(f"{target} = self.{node_id}.sample({piece}, "
                                   f"{self.conds_list(node, step)})")
                else:
                    w.lines.append(f"{target} = {piece}")
            else:
                self.emit(w, node, False, step)
        if generate:
            w.lines.append("return x")
            sig = "def _generate(self, eps: Tensor, context: Optional[Tensor]) -> Tensor:"
        else:
            w.lines.append("return x, ld")
            sig = ("def _inverse(self, z: Tensor, context: Optional[Tensor]) "
                   "-> Tuple[Tensor, Tensor]:")
        return _method(sig, w.lines)


def _method(signature: str, lines: list[str]) -> str:
    body = "\n".join("    " + line for line in lines)
    return f"{signature}\n{body}\n"


def generate_source(g: FlowGraph) -> GeneratedCode:
    """Source of `_forward_terms`, `_inverse` and `_generate` for graph `g`."""
    gen = _Gen(g)
    parts = [gen.forward(), gen.backward(generate=False), gen.backward(generate=True)]
    header = f"# generated by flowgraph from spec {g.program.name!r}; do not edit\n"
    return GeneratedCode(header + "\n\n".join(parts), gen.layout, gen.namespace)


def register_source(source: str, name: str) -> str:
    """Make `source` readable by inspect/TorchScript under a unique pseudo file name."""
    filename = f"<flowgraph-generated:{name}:{next(_counter)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    return filename


def release_source(filename: str) -> None:
    """Forget a registered source (called when its compiled class is collected)."""
    linecache.cache.pop(filename, None)
