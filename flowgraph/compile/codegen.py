r"""Code generation: a checked `FlowGraph` -> straight-line Python methods (fx-style).

Generated code calls submodules by literal attribute paths (``self.block1.u0.m0.coupling``), so
TorchScript, ``torch.compile(fullgraph=True)`` and ``torch.export`` all see plain straight-line
code: no ModuleList iteration (forward or reversed), no dict lookups, no string dispatch.
The source is registered with `linecache` so that TorchScript and tracebacks can read it.
"""

from __future__ import annotations

import itertools
import linecache
from dataclasses import dataclass, field

from flowgraph.graph.ir import FlowGraph, GraphNode
from flowgraph.ops.registry import CallSite

__all__ = ["Layout", "Slot", "generate_source", "register_source"]

_counter = itertools.count()


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


def _shape_list(shape: tuple[int, ...]) -> str:
    return "[_b, " + ", ".join(str(d) for d in shape) + "]"


class _Gen:
    def __init__(self, g: FlowGraph):
        self.g = g
        self.vars: dict[tuple[str, str], str] = {}
        self.layout = Layout()
        for node in g.nodes.values():
            if node.kind == "input":
                self.vars[(node.id, "out")] = "x" if node.role == "data" else "context"
        counter = itertools.count()
        for node_id in g.forward_order:
            node = g.nodes[node_id]
            if node.kind == "op":
                for port in node.op.outputs:
                    self.vars[(node_id, port)] = f"v{next(counter)}"
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
        self.uses_context = any(self.g.condition_inputs(n) and any(
            self.g.nodes[u].kind == "input" for u, _ in self.g.condition_inputs(n))
            for n in g.nodes)

    def conds(self, node: GraphNode) -> str:
        return "[" + ", ".join(self.vars[(u, p)] for u, p in
                               self.g.condition_inputs(node.id)) + "]"

    def comment(self, node: GraphNode) -> str:
        ins = ", ".join(str(t) for t in node.in_types)
        outs = ", ".join(str(t) for t in node.out_types.values()) or "latent"
        return f"# {node.id}: {node.op_name}  {ins} -> {outs}"

    def site(self, node: GraphNode, forward: bool) -> CallSite:
        data = [self.vars[(u, p)] for u, p in self.g.data_inputs(node.id)]
        outs = [self.vars[(node.id, p)] for p in node.op.outputs]
        noise = "None"
        slot = self.noise_slots.get(node.id)
        if forward and slot is not None:
            noise = f"_noise[:, {slot.start}:{slot.stop}].reshape({_shape_list(slot.shape)})"
        # an inverse that ignores its conditions must not read them: they may not exist yet
        conds = self.conds(node) if forward or node.op.inverse_needs_conditions else "[]"
        return CallSite(attr=f"self.{node.id}", inputs=tuple(data if forward else outs),
                        outputs=tuple(outs if forward else data), conds=conds,
                        noise=noise, node_id=node.id, params=node.params,
                        in_types=tuple(node.in_types),
                        out_types=tuple(node.out_types[p] for p in node.op.outputs))

    def prologue(self, first: str) -> list[str]:
        lines = [f"_b = {first}.shape[0]"]
        if self.uses_context:
            lines.append('assert context is not None, "this flow needs a context input"')
        return lines

    def forward(self) -> str:
        lines = ["if not x.is_floating_point():", "    x = x.to(self._ref.dtype)"]
        lines += self.prologue("x")
        if self.layout.noise_dim:
            draw = (f"    _noise = torch.randn([_b, {self.layout.noise_dim}], "
                    "dtype=x.dtype, device=x.device)")
            lines += ["if noise is None:", draw, "else:", "    _noise = noise"]
        lines += ["ld = x.new_zeros([_b])", "lp = x.new_zeros([_b])"]
        for node_id in self.g.forward_order:
            node = self.g.nodes[node_id]
            lines.append(self.comment(node))
            if node.kind == "latent":
                (src,) = self.g.data_inputs(node_id)
                lines.append(f"lp = lp + self.{node_id}.log_prob({self.vars[src]}, "
                             f"{self.conds(node)})")
            else:
                lines += node.op.emit_forward(self.site(node, True))
        zs = ", ".join(f"{self.vars[self.g.data_inputs(s.name)[0]]}.reshape([_b, -1])"
                       for s in self.layout.latents)
        lines.append(f"z = torch.cat([{zs}], 1)")
        lines.append("return z, ld, lp")
        sig = ("def _forward_terms(self, x: Tensor, context: Optional[Tensor], "
               "noise: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:")
        return _method(sig, lines)

    def backward(self, generate: bool) -> str:
        src = "eps" if generate else "z"
        lines = self.prologue(src)
        lines.append(f"ld = {src}.new_zeros([_b])")
        for node_id in self.g.inverse_order:
            node = self.g.nodes[node_id]
            lines.append(self.comment(node))
            if node.kind == "latent":
                slot = next(s for s in self.layout.latents if s.name == node_id)
                piece = f"{src}[:, {slot.start}:{slot.stop}].reshape({_shape_list(slot.shape)})"
                target = self.vars[self.g.data_inputs(node_id)[0]]
                if generate:
                    lines.append(f"{target} = self.{node_id}.sample({piece}, {self.conds(node)})")
                else:
                    lines.append(f"{target} = {piece}")
            else:
                lines += node.op.emit_inverse(self.site(node, False))
        if generate:
            lines.append("return x")
            sig = ("def _generate(self, eps: Tensor, context: Optional[Tensor]) -> Tensor:")
        else:
            lines.append("return x, ld")
            sig = ("def _inverse(self, z: Tensor, context: Optional[Tensor]) "
                   "-> Tuple[Tensor, Tensor]:")
        return _method(sig, lines)


def _method(signature: str, lines: list[str]) -> str:
    body = "\n".join("    " + line for line in lines)
    return f"{signature}\n{body}\n"


def generate_source(g: FlowGraph) -> tuple[str, Layout]:
    """Source of `_forward_terms`, `_inverse` and `_generate` for graph `g`."""
    gen = _Gen(g)
    parts = [gen.forward(), gen.backward(generate=False), gen.backward(generate=True)]
    header = f"# generated by flowgraph from spec {g.program.name!r}; do not edit\n"
    return header + "\n\n".join(parts), gen.layout


def register_source(source: str, name: str) -> str:
    """Make `source` readable by inspect/TorchScript under a unique pseudo file name."""
    filename = f"<flowgraph-generated:{name}:{next(_counter)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    return filename
