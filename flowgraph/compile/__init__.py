r"""The compiler: spec -> checked graph -> `CompiledFlow` module with generated methods."""

from __future__ import annotations

import contextlib
import hashlib
import re
import typing
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flowgraph.compile.codegen import Layout, generate_source, register_source, release_source
from flowgraph.compile.runtime import CompiledFlow
from flowgraph.core.registry import OpRegistry
from flowgraph.errors import FlowgraphError
from flowgraph.graph import Analysis, Limits, analyze
from flowgraph.graph.shapes import DEFAULT_LIMITS
from flowgraph.spec.io import SourceMap, dump_spec, read_spec
from flowgraph.spec.models import FlowSpec

__all__ = ["BuildError", "CompiledFlow", "build_flow", "compile_spec", "spec_hash"]


def spec_hash(spec: FlowSpec) -> str:
    """A stable hash of the normalised spec (checkpoints record it)."""
    return hashlib.sha256(dump_spec(spec).encode()).hexdigest()[:16]


def _set_submodule(root: nn.Module, dotted: str, module: nn.Module) -> None:
    *parents, leaf = dotted.split(".")
    owner = root
    for name in parents:
        if not hasattr(owner, name):
            owner.add_module(name, nn.Module())
        owner = getattr(owner, name)
    owner.add_module(leaf, module)


class BuildError(FlowgraphError):
    """Building a node's module failed; names the node, its op and its YAML line."""


def _generated_class(analysis: Analysis) -> tuple[type[CompiledFlow], Layout]:
    code = generate_source(analysis.graph)
    name = re.sub(r"\W+", "_", analysis.spec.name).strip("_") or "flow"
    filename = register_source(code.source, name)
    namespace: dict[str, Any] = {"torch": torch, "Tensor": torch.Tensor,
                                 "Optional": typing.Optional, "Tuple": tuple,
                                 **code.namespace}
    exec(compile(code.source, filename, "exec"), namespace)  # noqa: S102 - our own generated code
    attrs = {
        "_forward_terms": namespace["_forward_terms"],
        "_inverse": torch.jit.export(namespace["_inverse"]),
        "_generate": torch.jit.export(namespace["_generate"]),
        "_generated_source": code.source,
        "_source_file": filename,
        "__module__": __name__,
        "__qualname__": f"CompiledFlow_{name}",
    }
    cls = type(f"CompiledFlow_{name}", (CompiledFlow,), attrs)
    weakref.finalize(cls, release_source, filename)  # tracebacks need it while the class lives
    return cls, code.layout


def _build_module(analysis: Analysis, node_id: str) -> nn.Module | None:
    node = analysis.graph.nodes[node_id]
    try:
        return node.op.build(node.params, node.in_types, node.cond_types)
    except Exception as e:
        where = analysis.graph.smap.locate(node.path)
        raise BuildError(f"{where}: node {node_id!r} ({node.op.name}): building its module "
                         f"failed: {type(e).__name__}: {e}") from e


def build_flow(analysis: Analysis, seed: int | None = None) -> CompiledFlow:
    """Instantiate the module of an analysed spec. `seed` makes the initial weights repeatable."""
    cls, layout = _generated_class(analysis)
    g = analysis.graph
    rng = torch.random.fork_rng() if seed is not None else contextlib.nullcontext()
    with rng:
        if seed is not None:
            torch.manual_seed(seed)
        flow = cls()
        for node_id in g.forward_order:
            module = _build_module(analysis, node_id)
            if module is not None:
                _set_submodule(flow, node_id, module)
    data = g.data_input().out_types["out"]
    flow.data_shape = list(data.shape)
    flow.latent_shapes = [list(s.shape) for s in layout.latents]
    flow.data_dims = data.numel
    flow.latent_dim = layout.latent_dim
    flow.noise_dim = layout.noise_dim
    flow.bits = data.bits or 0
    flow.spec_text = dump_spec(analysis.spec)
    flow.spec_hash = spec_hash(analysis.spec)
    # Python-side metadata, deliberately outside the module's scripted state
    object.__setattr__(flow, "_analysis", analysis)
    object.__setattr__(flow, "_layout", layout)
    return flow


def compile_spec(spec: FlowSpec | str | Path, overrides: Mapping[str, Any] | None = None, *,
                 registry: OpRegistry | None = None, seed: int | None = None,
                 limits: Limits = DEFAULT_LIMITS, smap: SourceMap | None = None) -> CompiledFlow:
    """Check a spec (a path or a `FlowSpec`) and build its model; raises `SpecError`."""
    if not isinstance(spec, FlowSpec):
        spec, smap = read_spec(spec, overrides)
    return build_flow(analyze(spec, smap, registry, limits), seed)
