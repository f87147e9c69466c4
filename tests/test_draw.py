"""`flowgraph draw`: DOT structure of both views, determinism, and real renders with `dot`."""

from __future__ import annotations

import io
import re
import shutil
import sys
import textwrap
import time
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import SPEC_FILES

from flowgraph.cli.main import main
from flowgraph.core.registry import ops
from flowgraph.draw import COND_COLOR, UNIT_FILL, DrawError, op_role, render, to_dot
from flowgraph.graph import analyze
from flowgraph.spec import parse_spec
from flowgraph.spec.io import read_spec

ROOT = Path(__file__).resolve().parents[1]
SPECS = SPEC_FILES
HAS_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAS_DOT, reason="graphviz `dot` is not installed")
SHAPE = re.compile(r"^\d+(×\d+)*( \(\d+-bit\))?$")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Two DenseFlow-like blocks: units of glow-like modules, cross-unit couplings reading
# ${earlier}, a squeeze-and-drop transition between the blocks.
DENSE = """
flowgraph: 1
name: tiny-dense
args: {units: [4, 2], modules: [2, 1], growth: 2}
inputs:
  x: {shape: [3, 8, 8], bits: 8}
templates:
  module:
    nodes:
      - {id: actnorm, op: actnorm, in: x}
      - {id: conv, op: conv1x1, in: actnorm}
      - {id: coupling, op: affine_coupling, in: conv, params: {net: {kind: glow, hidden: 8}}}
      - {id: swap, op: permute, in: coupling, params: {kind: swap_halves}}
  dense_block:
    args: {units: 1, modules: 1}
    nodes:
      - id: u
        repeat: "${units}"
        in: x
        body:
          - id: aug
            op: cross_unit_coupling
            when: "${i > 0}"
            in: "${prev}"
            condition: "${earlier}"
            params: {growth: "${growth}"}
          - {id: m, repeat: "${modules}", use: module, in: aug}
  transition:
    nodes:
      - {id: squeeze, op: squeeze, in: x}
      - {id: split, op: split, in: squeeze}
    output: "split:first"
nodes:
  - {id: deq, op: dequantize_uniform, in: x}
  - {id: squeeze, op: squeeze, in: deq}
  - {id: block1, use: dense_block, in: squeeze, with: {units: "${units[0]}", modules: "${modules[0]}"}}
  - {id: t1, use: transition, in: block1}
  - {id: block2, use: dense_block, in: t1, with: {units: "${units[1]}", modules: "${modules[1]}"}}
outputs:
  z1: {from: "t1.split:second"}
  z: {from: block2, prior: {dist: channel_normal}}
"""

# Multi-scale Glow: levels of squeeze, flow steps and a split; no augmentation.
GLOW = """
flowgraph: 1
name: tiny-glow
inputs:
  x: {shape: [3, 8, 8], bits: 8}
templates:
  step:
    nodes:
      - {id: actnorm, op: actnorm, in: x}
      - {id: conv, op: conv1x1, in: actnorm}
      - {id: coupling, op: affine_coupling, in: conv, params: {net: {kind: glow, hidden: 8}}}
  level:
    nodes:
      - {id: squeeze, op: squeeze, in: x}
      - {id: step, repeat: 3, use: step, in: squeeze}
      - {id: split, op: split, in: step}
    output: "split:first"
nodes:
  - {id: deq, op: dequantize_uniform, in: x}
  - {id: level1, use: level, in: deq}
  - {id: level2, use: level, in: level1}
outputs:
  z1: {from: "level1.split:second"}
  z2: {from: "level2.split:second"}
  z: {from: level2}
"""

# RealNVP-like 2-D toy: flat repeated layers, a context input used as a condition.
TOY = """
flowgraph: 1
name: toy-2d
inputs:
  x: {shape: [2]}
  c: {shape: [3], role: context}
templates:
  layer:
    nodes:
      - {id: coupling, op: affine_coupling, in: x, condition: [c], params: {net: {kind: mlp, hidden: [16]}}}
      - {id: flip, op: permute, in: coupling, params: {kind: reverse}}
nodes:
  - {id: first, op: affine_coupling, in: x, params: {net: {kind: mlp, hidden: [16]}}}
  - {id: layer, repeat: 3, use: layer, in: first}
outputs:
  z: {from: layer}
"""


def analysis_of(body: str, name: str = "d.yaml", registry=None):
    spec, smap = parse_spec(textwrap.dedent(body).strip() + "\n", name)
    return analyze(spec, smap, registry)


# -- a small reader of the DOT that the graphviz package writes (one statement per line) -----

_ID = r'"(?:[^"\\]|\\.)*"|[^\s\[\]"=]+'
_ATTR = re.compile(rf'(\w+)=({_ID})')
_NODE = re.compile(rf'^\s*({_ID}) \[(.*)\]$')
_EDGE = re.compile(rf'^\s*({_ID}) -> ({_ID})(?: \[(.*)\])?$')
_CLUSTER = re.compile(rf'^\s*subgraph ({_ID}) \{{$')


def _unquote(text: str) -> str:
    if not text.startswith('"'):
        return text
    return re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], text[1:-1])


def _attrs(text: str | None) -> dict[str, str]:
    return {k: _unquote(v) for k, v in _ATTR.findall(text or "")}


@dataclass
class Dot:
    nodes: dict[str, dict[str, str]] = field(default_factory=dict)
    cluster_of: dict[str, tuple[str, ...]] = field(default_factory=dict)  # node -> clusters
    clusters: dict[str, dict[str, str]] = field(default_factory=dict)
    edges: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    def edges_to(self, dst: str, dashed: bool | None = None) -> list[tuple[str, str, dict]]:
        return [e for e in self.edges if e[1] == dst
                and (dashed is None or ("dashed" in e[2].get("style", "")) == dashed)]

    def data_edges(self):
        return [e for e in self.edges if "dashed" not in e[2].get("style", "")]

    def cond_edges(self):
        return [e for e in self.edges if "dashed" in e[2].get("style", "")]


def parse_dot(text: str) -> Dot:
    d = Dot()
    stack: list[str] = []
    lines = text.splitlines()
    assert lines[0].startswith("digraph ") and lines[-1] == "}"
    for line in lines[1:-1]:
        if m := _CLUSTER.match(line):
            stack.append(_unquote(m.group(1)))
            d.clusters[stack[-1]] = {}
        elif line.strip() == "}":
            stack.pop()
        elif re.match(r"^\s*(graph|node|edge) \[", line):
            continue
        elif m := _EDGE.match(line):
            d.edges.append((_unquote(m.group(1)), _unquote(m.group(2)), _attrs(m.group(3))))
        elif m := _NODE.match(line):
            name = _unquote(m.group(1))
            assert name not in d.nodes, f"node {name} declared twice"
            d.nodes[name] = _attrs(m.group(2))
            d.cluster_of[name] = tuple(stack)
        else:  # a cluster's own attributes
            assert stack and _ATTR.match(line.strip()), line
            d.clusters[stack[-1]].update(_attrs(line))
    assert not stack
    for src, dst, _ in d.edges:  # every edge joins declared nodes
        assert src in d.nodes and dst in d.nodes, (src, dst)
    return d


@pytest.fixture(scope="module")
def dense():
    return analysis_of(DENSE)


@pytest.fixture(scope="module")
def dense_blocks(dense):
    return parse_dot(to_dot(dense))


# -- blocks view -----------------------------------------------------------------------------

def test_blocks_view_has_a_cluster_per_block_and_gray_unit_boxes(dense_blocks):
    d = dense_blocks
    assert set(d.clusters) == {"cluster_block1", "cluster_block2"}
    # a cluster is labelled with its id and template, and counts its units
    assert d.clusters["cluster_block1"]["label"].startswith("block1 · dense_block\n4 units")
    assert d.clusters["cluster_block2"]["label"].startswith("block2 · dense_block\n2 units")
    units = {n for n, a in d.nodes.items() if a.get("fillcolor") == UNIT_FILL}
    assert units == {"block1.u0", "block1.u1", "block1.u2", "block1.u3",
                     "block2.u0", "block2.u1"}
    for u in units:
        a = d.nodes[u]
        assert a["shape"] == "box" and "filled" in a["style"]
        block = u.split(".")[0]
        assert d.cluster_of[u] == (f"cluster_{block}",)
        assert a["label"] == f"{u.split('.')[1]}\n" + (
            "2 × module" if block == "block1" else "1 × module")
    # modules are collapsed into their units: no op node of a unit is drawn
    assert not any(n.count(".") >= 2 for n in d.nodes if not n.endswith(".aug"))


def test_blocks_view_draws_augmentation_as_blue_dots_with_dashed_skips(dense_blocks):
    d = dense_blocks
    dots = {n for n, a in d.nodes.items() if a.get("shape") == "circle"}
    assert dots == {"block1.u1.aug", "block1.u2.aug", "block1.u3.aug", "block2.u1.aug"}
    for n in dots:
        a = d.nodes[n]
        assert a["label"] == "" and a["fillcolor"] == COND_COLOR and "filled" in a["style"]
        assert d.cluster_of[n] == (f"cluster_{n.split('.')[0]}",)
        # unit i gets i dashed skip connections (${earlier}: block input + units 0..i-2),
        # and its data input (unit i-1) as a solid edge
        i = int(n.split(".")[1][1:])
        skips = d.edges_to(n, dashed=True)
        assert len(skips) == i, (n, skips)
        assert all(e[2]["color"] == COND_COLOR for e in skips)
        (data,) = d.edges_to(n, dashed=False)
        assert data[0] == n.rsplit(".", 2)[0] + f".u{i - 1}"
    block_in = {"block1": "squeeze", "block2": "t1"}
    for n in dots:
        block, unit = n.split(".")[:2]
        i = int(unit[1:])
        srcs = {e[0] for e in d.edges_to(n, dashed=True)}
        assert srcs == {block_in[block]} | {f"{block}.u{k}" for k in range(i - 1)}
    assert len(d.cond_edges()) == 1 + 2 + 3 + 1


def test_blocks_view_draws_transitions_as_dotted_squares_and_shapes_on_edges(dense_blocks):
    d = dense_blocks
    t1 = d.nodes["t1"]
    assert t1["shape"] == "square" and "dotted" in t1["style"]
    assert t1["label"] == "t1\nsqueeze + split"
    assert d.cluster_of["t1"] == ()
    squeeze = d.nodes["squeeze"]  # a lone space-to-channel op is a dotted square too
    assert squeeze["shape"] == "square" and "dotted" in squeeze["style"]
    squares = {n for n, a in d.nodes.items() if a.get("shape") == "square"}
    assert squares == {"squeeze", "t1"}
    # latents are terminal ellipses with prior and shape
    assert d.nodes["z1"]["label"] == "z1\nstandard_normal\n36×2×2"
    assert d.nodes["z"]["label"] == "z\nchannel_normal\n38×2×2"
    assert all(d.nodes[z]["shape"] == "ellipse" for z in ("z1", "z"))
    assert not [e for e in d.edges if e[0] in ("z1", "z")]
    # every data edge carries a tensor shape
    labels = {(s, t): a["label"] for s, t, a in d.data_edges()}
    assert all(SHAPE.match(lbl) for lbl in labels.values()), labels
    assert labels[("x", "deq")] == "3×8×8 (8-bit)"
    assert labels[("deq", "squeeze")] == "3×8×8"
    assert labels[("squeeze", "block1.u0")] == "12×4×4"
    assert labels[("block1.u0", "block1.u1.aug")] == "12×4×4"
    assert labels[("block1.u1.aug", "block1.u1")] == "14×4×4"
    assert labels[("block1.u3", "t1")] == "18×4×4"
    assert labels[("t1", "z1")] == "36×2×2"
    assert labels[("t1", "block2.u0")] == "36×2×2"
    assert labels[("block2.u1", "z")] == "38×2×2"
    # dashed skips carry no shape label and no edge is drawn twice
    assert all("label" not in a for _, _, a in d.cond_edges())
    assert len({(s, t, a.get("style")) for s, t, a in d.edges}) == len(d.edges)


def test_blocks_view_of_glow_and_a_2d_toy_is_sensible():
    g = parse_dot(to_dot(analysis_of(GLOW)))
    assert set(g.clusters) == {"cluster_level1", "cluster_level2"}
    steps = {n for n, a in g.nodes.items() if a.get("fillcolor") == UNIT_FILL}
    assert steps == {f"level{k}.step{j}" for k in (1, 2) for j in range(3)}
    assert all(g.nodes[s]["label"].endswith("3 ops") for s in steps)
    assert g.nodes["level1.squeeze"]["shape"] == "square"
    assert g.cluster_of["level1.split"] == ("cluster_level1",)
    assert not any(a.get("shape") == "circle" for a in g.nodes.values())
    assert g.edges_to("z1")[0][0] == "level1.split"

    t = parse_dot(to_dot(analysis_of(TOY)))
    assert t.clusters == {}
    boxes = {n for n, a in t.nodes.items() if a.get("fillcolor") == UNIT_FILL}
    assert boxes == {"layer0", "layer1", "layer2"}
    assert t.nodes["first"]["label"] == "first\naffine_coupling"
    assert t.nodes["c"]["style"] == "dashed"  # a context input
    conds = t.cond_edges()
    assert {(s, d) for s, d, _ in conds} == {("c", f"layer{k}") for k in range(3)}
    assert all(a["color"] == COND_COLOR for _, _, a in conds)
    assert [a["label"] for s, d, a in t.data_edges() if d == "layer0"] == ["2"]


# Not DenseFlow: a template use holding template uses, a group holding uses, a flat use.
STAGES = """
flowgraph: 1
name: stages
inputs:
  x: {shape: [4]}
templates:
  pair:
    nodes:
      - {id: coupling, op: affine_coupling, in: x, params: {net: {kind: mlp, hidden: [8]}}}
      - {id: flip, op: permute, in: coupling, params: {kind: reverse}}
  stage:
    nodes:
      - {id: norm, op: actnorm, in: x}
      - {id: left, use: pair, in: norm}
      - {id: right, use: pair, in: left}
nodes:
  - {id: front, use: stage, in: x}
  - id: back
    in: front
    body:
      - {id: a, use: pair, in: "${input}"}
      - {id: b, use: pair, in: a}
  - {id: tail, use: pair, in: back}
outputs:
  z: {from: tail}
"""


def test_blocks_view_takes_clusters_from_any_specs_templates_and_groups():
    d = parse_dot(to_dot(analysis_of(STAGES)))
    assert set(d.clusters) == {"cluster_front", "cluster_back"}
    assert d.clusters["cluster_front"]["label"].startswith("front · stage\n2 units")
    assert d.clusters["cluster_back"]["label"].startswith("back\n2 units")  # a group
    units = {n: a["label"] for n, a in d.nodes.items() if a.get("fillcolor") == UNIT_FILL}
    assert units == {"front.left": "left\npair: 2 ops", "front.right": "right\npair: 2 ops",
                     "back.a": "a\npair: 2 ops", "back.b": "b\npair: 2 ops",
                     "tail": "tail\npair: 2 ops"}
    assert d.cluster_of["front.left"] == ("cluster_front",)
    assert d.cluster_of["tail"] == ()  # a use holding only ops is one box, not a cluster
    assert d.nodes["front.norm"]["label"] == "norm\nactnorm"  # a block's own op
    assert d.cluster_of["front.norm"] == ("cluster_front",)
    assert [(s, t) for s, t, _ in d.data_edges()] == [
        ("x", "front.norm"), ("front.norm", "front.left"), ("front.left", "front.right"),
        ("front.right", "back.a"), ("back.a", "back.b"), ("back.b", "tail"), ("tail", "z")]
    detailed = parse_dot(to_dot(analysis_of(STAGES), "detailed"))
    assert detailed.clusters["cluster_front.left"]["label"] == "left · pair"
    assert detailed.clusters["cluster_back"]["label"] == "back"
    assert detailed.cluster_of["back.a.flip"] == ("cluster_back", "cluster_back.a")


def test_blocks_view_stacks_a_long_repeat_into_one_box():
    long_glow = GLOW.replace("repeat: 3", "repeat: 12")
    d = parse_dot(to_dot(analysis_of(long_glow)))
    stacks = {n: a for n, a in d.nodes.items() if a.get("peripheries") == "2"}
    assert set(stacks) == {"level1.step0..step11", "level2.step0..step11"}
    assert stacks["level1.step0..step11"]["label"] == "step0 … step11\n12 × step"
    assert d.clusters["cluster_level1"]["label"].startswith("level1 · level\n12 units")
    assert ("level1.squeeze", "level1.step0..step11") in {(s, t) for s, t, _ in d.edges}
    assert len(parse_dot(to_dot(analysis_of(long_glow), "detailed")).nodes) == len(
        analysis_of(long_glow).graph.nodes)  # the detailed view still shows every op


# -- roles, not op names ---------------------------------------------------------------------

class _Stub:
    name = "anything"
    dequantizes = is_prior = stochastic = False


def test_op_role_reads_the_declared_role():
    for role in ("transform", "dequantize", "augment", "reshape", "prior"):
        assert op_role(type("Declared", (_Stub,), {"role": role})()) == role
    for op in ops():
        assert op_role(op) in ("transform", "dequantize", "augment", "reshape", "prior")


def _registry_with(name: str, role: str):
    """A new op, not named like any built-in one, that declares `role`."""
    base = type(ops().get("actnorm"))
    return ops().with_items([type(f"Stub_{name}", (base,), {"name": name, "role": role})()])


ROLES = """
flowgraph: 1
name: roles
inputs:
  x: {shape: [3, 4, 4]}
templates:
  unit:
    nodes:
      - {id: noise, op: jitter, in: x}
      - {id: norm, op: actnorm, in: noise}
  shuffle:
    nodes:
      - {id: a, op: reorder, in: x}
      - {id: b, op: reorder, in: a}
nodes:
  - id: block
    in: x
    body:
      - {id: u, repeat: 2, use: unit, in: "${input}"}
  - {id: mix, use: shuffle, in: block}
  - {id: lone, op: jitter, in: mix}
outputs:
  z: {from: lone}
"""


def test_roles_decide_how_ops_are_drawn():
    registry = _registry_with("jitter", "augment").with_items(
        [type("Stub_reorder", (type(ops().get("actnorm")),),
              {"name": "reorder", "role": "reshape"})()])
    d = parse_dot(to_dot(analysis_of(ROLES, registry=registry)))
    dots = {n for n, a in d.nodes.items() if a.get("shape") == "circle"}
    assert dots == {"block.u0.noise", "block.u1.noise", "lone"}  # pulled out of their units
    assert all(d.nodes[n]["fillcolor"] == COND_COLOR and d.nodes[n]["label"] == ""
               for n in dots)
    assert d.cluster_of["block.u1.noise"] == ("cluster_block",)
    assert d.nodes["block.u1"]["label"] == "u1\nunit: 1 op"
    assert ("block.u0", "block.u1.noise") in {(s, t) for s, t, _ in d.edges}
    mix = d.nodes["mix"]  # a use made only of reshape-role ops: a dotted square
    assert mix["shape"] == "square" and "dotted" in mix["style"]
    assert mix["label"] == "mix\nreorder"
    detailed = parse_dot(to_dot(analysis_of(ROLES, registry=registry), "detailed"))
    assert "dotted" in detailed.nodes["mix.a"]["style"]


def test_scopes_fall_back_to_id_prefixes_when_a_trail_does_not_parse(dense, monkeypatch):
    from flowgraph.draw.structure import scope_tree

    by_trail = scope_tree(dense.graph)
    block1 = by_trail.scopes()[0]
    assert (block1.id, block1.template, [s.id for s in block1.scopes()]) == (
        "block1", "dense_block", ["block1.u0", "block1.u1", "block1.u2", "block1.u3"])
    for node in dense.graph.ops():
        monkeypatch.setattr(node, "trail", tuple(f"<{t}>" for t in node.trail))
    by_id = scope_tree(dense.graph)
    block1 = by_id.scopes()[0]
    assert (block1.id, block1.template) == ("block1", None)
    assert [s.id for s in block1.scopes()] == ["block1.u0", "block1.u1", "block1.u2",
                                               "block1.u3"]


def _strings_and_comments(path: Path) -> list[tuple[int, str]]:
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    return [(t.start[0], t.string) for t in tokens
            if t.type in (tokenize.STRING, tokenize.COMMENT)]


def test_draw_code_names_no_op():
    """Drawing knows ops by role only."""
    files = sorted((ROOT / "flowgraph" / "draw").glob("*.py")) + [
        ROOT / "flowgraph" / "cli" / "draw_cmd.py"]
    names = re.compile(r"\b(" + "|".join(map(re.escape, ops().names())) + r")\b",
                       re.IGNORECASE)
    found = []
    for path in files:
        for lineno, text in _strings_and_comments(path):
            found += [f"{path.relative_to(ROOT)}:{lineno}: {m}" for m in names.findall(text)]
    assert not found, found


# -- detailed view ---------------------------------------------------------------------------

def test_detailed_view_shows_every_op_in_nested_clusters(dense):
    g = dense.graph
    d = parse_dot(to_dot(dense, "detailed"))
    assert set(d.nodes) == set(g.nodes)
    for node in g.nodes.values():
        a = d.nodes[node.id]
        parts = node.id.split(".")
        if node.kind == "op":
            assert a["label"].split("\n")[0] == parts[-1]
            assert a["label"].split("\n")[-1] == node.op_name
            assert d.cluster_of[node.id] == tuple(
                "cluster_" + ".".join(parts[:k]) for k in range(1, len(parts)))
        else:
            assert d.cluster_of[node.id] == ()
    assert d.nodes["z1"]["shape"] == "ellipse"
    assert not [e for e in d.edges if g.nodes[e[0]].kind == "latent"]  # latents are sinks
    assert {"cluster_block1", "cluster_block1.u2", "cluster_block1.u2.m1", "cluster_t1"} \
        <= set(d.clusters)


def test_detailed_view_styles_condition_edges_apart_from_data_edges(dense):
    g = dense.graph
    d = parse_dot(to_dot(dense, "detailed"))
    n_data = sum(len(g.data_inputs(n)) for n in g.nodes)
    n_cond = sum(len(g.condition_inputs(n)) for n in g.nodes)
    assert (len(d.data_edges()), len(d.cond_edges())) == (n_data, n_cond)
    assert n_cond == 1 + 2 + 3 + 1
    for _, _, a in d.cond_edges():
        assert a["style"] == "dashed" and a["color"] == COND_COLOR and "label" not in a
    for _, _, a in d.data_edges():
        assert "color" not in a and "style" not in a
        assert SHAPE.match(a["label"].split(": ")[-1])
    by_pair = {(s, t): a for s, t, a in d.edges}
    assert by_pair[("t1.split", "z1")]["label"] == "second: 36×2×2"
    assert by_pair[("block1.u0.m1.swap", "block1.u2.aug")]["style"] == "dashed"
    t = parse_dot(to_dot(analysis_of(TOY), "detailed"))
    assert {(s, d) for s, d, _ in t.cond_edges()} == {("c", f"layer{k}.coupling")
                                                      for k in range(3)}


# -- determinism and errors ------------------------------------------------------------------

@pytest.mark.parametrize("view", ["blocks", "detailed"])
def test_dot_is_deterministic(view):
    a, b = analysis_of(DENSE), analysis_of(DENSE)
    assert to_dot(a, view) == to_dot(b, view)
    assert to_dot(a, view, rankdir="TB") == to_dot(b, view, rankdir="TB")
    assert "rankdir=TB" in to_dot(a, view, rankdir="TB")


def test_bad_view_rankdir_and_format_are_draw_errors(dense, tmp_path):
    with pytest.raises(DrawError, match="unknown view"):
        to_dot(dense, "fancy")  # type: ignore[arg-type]
    with pytest.raises(DrawError, match="rankdir"):
        to_dot(dense, rankdir="XY")
    with pytest.raises(DrawError, match="unknown format"):
        render(to_dot(dense), tmp_path / "out.jpeg2000")
    with pytest.raises(DrawError, match="does not exist"):
        render(to_dot(dense), tmp_path / "missing" / "out.svg")


def test_missing_dot_says_how_to_install_graphviz(dense, tmp_path, monkeypatch):
    source = to_dot(dense)
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` anywhere: graphviz.ExecutableNotFound
    with pytest.raises(DrawError, match="apt-get install graphviz"):
        render(source, tmp_path / "out.svg")
    assert not (tmp_path / "out.svg").exists()
    for suffix in ("dot", "gv"):  # the source needs no graphviz
        assert render(source, tmp_path / f"out.{suffix}").read_text() == source


def test_missing_graphviz_package_is_a_draw_error(dense, monkeypatch):
    monkeypatch.setitem(sys.modules, "graphviz", None)  # `import graphviz` raises ImportError
    with pytest.raises(DrawError, match=r"pip install 'flowgraph\[draw\]'"):
        to_dot(dense)


@needs_dot
def test_dot_errors_are_draw_errors(tmp_path):
    with pytest.raises(DrawError, match="graphviz `dot` failed"):
        render("digraph { a -> }\n", tmp_path / "out.svg")


# -- real renders ----------------------------------------------------------------------------

def check_file(path: Path, fmt: str) -> None:
    data = path.read_bytes()
    assert data, path
    if fmt == "svg":
        text = data.decode("utf-8")
        assert text.startswith("<?xml") or "<svg" in text
        assert "<svg" in text and text.rstrip().endswith("</svg>")
    elif fmt == "png":
        assert data.startswith(PNG_MAGIC)
    else:
        assert data.startswith(b"%PDF")


def test_there_are_specs_to_render():
    assert SPECS, "specs/ holds no *.yaml"


@needs_dot
@pytest.mark.parametrize("spec_path", SPECS, ids=[str(p.relative_to(ROOT)) for p in SPECS])
def test_every_spec_renders_to_svg_and_png(spec_path, tmp_path):
    spec, smap = read_spec(spec_path)
    start = time.perf_counter()
    source = to_dot(analyze(spec, smap))
    for fmt in ("svg", "png"):
        check_file(render(source, tmp_path / f"{spec_path.stem}.{fmt}"), fmt)
    assert time.perf_counter() - start < 60


@needs_dot
@pytest.mark.parametrize("body", [DENSE, GLOW, TOY], ids=["dense", "glow", "toy"])
@pytest.mark.parametrize("view", ["blocks", "detailed"])
def test_inline_specs_render_in_both_views(body, view, tmp_path):
    source = to_dot(analysis_of(body), view)
    for fmt in ("svg", "png", "pdf"):
        check_file(render(source, tmp_path / f"out.{fmt}"), fmt)
    check_file(render(source, tmp_path / "forced.out", fmt="svg"), "svg")


# -- CLI -------------------------------------------------------------------------------------

@pytest.fixture
def dense_file(tmp_path):
    path = tmp_path / "dense.yaml"
    path.write_text(textwrap.dedent(DENSE).strip() + "\n")
    return path


@needs_dot
def test_cli_draw_writes_the_file(dense_file, tmp_path, capsys):
    out = tmp_path / "d.svg"
    assert main(["draw", str(dense_file), "-o", str(out)]) == 0
    check_file(out, "svg")
    png = tmp_path / "d.png"
    assert main(["draw", str(dense_file), "-o", str(png), "--view", "detailed",
                 "--set", "units=[3, 2]", "--rankdir", "TB"]) == 0
    check_file(png, "png")
    assert "wrote" in capsys.readouterr().out
    source = tmp_path / "d.txt"  # --format dot: the DOT source, whatever the suffix
    assert main(["draw", str(dense_file), "-o", str(source), "--format", "dot"]) == 0
    assert parse_dot(source.read_text()).clusters


def test_cli_draw_dot_prints_the_source(dense_file, capsys):
    assert main(["draw", str(dense_file), "--dot", "--set", "units=[2, 2]"]) == 0
    text = capsys.readouterr().out
    d = parse_dot(text)
    assert set(d.clusters) == {"cluster_block1", "cluster_block2"}
    assert "block1.u2" not in d.nodes and "block1.u1.aug" in d.nodes


def test_cli_draw_rejects_an_invalid_spec(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent(DENSE).replace("op: conv1x1", "op: conv9x9"))
    assert main(["draw", str(bad), "-o", str(tmp_path / "bad.svg")]) == 2
    err = capsys.readouterr().err
    assert "spec is invalid" in err and "conv9x9" in err
    assert not (tmp_path / "bad.svg").exists()


def test_cli_draw_usage_errors(dense_file, tmp_path, capsys):
    assert main(["draw", str(dense_file)]) == 2
    assert "-o FILE" in capsys.readouterr().err
    assert main(["draw", str(dense_file), "-o", str(tmp_path / "x.bmpx")]) == 2
    assert "unknown format" in capsys.readouterr().err
    assert main(["draw", str(dense_file), "--set", "nope=1", "--dot"]) == 2
