"""The package imports only downward: core → spec → graph → ops/nn → compile → the rest.

Every import statement counts, including those inside functions (no lazy imports that hide a
cycle). Same-layer imports are fine, except that conditioner networks (`nn`) never import ops.
"""

from __future__ import annotations

import ast
from pathlib import Path

import flowgraph

ROOT = Path(next(iter(flowgraph.__path__)))
LAYERS = {"errors": 0, "core": 0, "spec": 1, "graph": 2, "nn": 3, "ops": 3, "compile": 4}
TOP = 5  # train, cli, draw, data, evaluate, checkpoint, testing, ...


def _layer(module: str) -> tuple[int, str]:
    part = module.split(".")[1] if module.count(".") else ""
    return LAYERS.get(part, TOP), part


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return [(line, m) for line, m in out if m == "flowgraph" or m.startswith("flowgraph.")]


def test_no_module_imports_upward() -> None:
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        src_layer, src_part = _layer(name)
        for line, target in _imports(path):
            dst_layer, dst_part = _layer(target)
            if target == "flowgraph" and name != "flowgraph":
                bad.append(f"{path.relative_to(ROOT)}:{line} imports the package root")
            elif dst_layer > src_layer or (src_part == "nn" and dst_part == "ops"):
                bad.append(f"{path.relative_to(ROOT)}:{line} ({src_part or 'flowgraph'}, "
                           f"layer {src_layer}) imports {target} (layer {dst_layer})")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from flowgraph.compile import compile_spec\n")
    ((line, target),) = _imports(f)
    assert (line, _layer(target)[0]) == (2, 4) and _layer("flowgraph.graph.ir")[0] == 2


def test_graph_reserves_every_attribute_of_the_compiled_flow() -> None:
    """`graph` sits below `compile`, so it lists the flow's attributes; this keeps them in step."""
    from torch import nn

    from flowgraph.compile.runtime import CompiledFlow
    from flowgraph.graph.ir import reserved_names

    public = {n for n in dir(CompiledFlow) if not n.startswith("_")} - set(dir(nn.Module))
    assert public <= reserved_names()
    assert {"spec_text", "spec_hash"} <= reserved_names()  # instance attributes, not on the class


def test_public_api_resolves_and_matches_all() -> None:
    import flowgraph.train.progress

    assert set(flowgraph.__all__) == set(flowgraph._API) | {"__version__"}
    for name in flowgraph.__all__:
        assert getattr(flowgraph, name) is not None
    assert callable(flowgraph.train) and flowgraph.train.TrainConfig
