"""Property-based tests of the static checks: random valid graphs pass; random mutations give
the expected issue; nothing ever escapes as an unhandled exception."""

from __future__ import annotations

import copy

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowgraph.errors import SpecError
from flowgraph.graph import check_spec
from flowgraph.spec import parse_spec

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
MLP = {"kind": "mlp", "hidden": [4]}


@st.composite
def valid_specs(draw) -> dict:
    """A random chain of vector ops with factor-outs, augmentations and a context."""
    dim = draw(st.integers(2, 6))
    nodes: list[dict] = []
    outputs: dict[str, dict] = {}
    cur, width = "x", dim
    earlier: list[str] = []  # tensors of the forward pass (legal augmentation conditions)
    latents: list[str] = []  # factored-out tensors (legal conditions for anything)
    for i in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["actnorm", "conv1x1", "permute", "coupling", "affine",
                                     "augment", "split"]))
        nid = f"n{i}"
        node: dict = {"id": nid, "in": cur}
        if kind == "actnorm" or kind == "conv1x1":
            node["op"] = kind
        elif kind == "permute":
            node |= {"op": "permute", "params": {"kind": draw(st.sampled_from(
                ["reverse", "swap_halves", "random"]))}}
        elif kind == "affine":
            node |= {"op": "scalar_affine", "params": {"scale": 2.0, "shift": 0.5}}
        elif kind == "coupling" and width >= 2:
            node |= {"op": "affine_coupling", "params": {"net": MLP}}
            conds = [c for c in ("ctx", *latents) if draw(st.booleans())]
            if conds:
                node["condition"] = conds
        elif kind == "augment":
            growth = draw(st.integers(1, 3))
            node |= {"op": "cross_unit_coupling", "params": {"growth": growth, "g": MLP},
                     "condition": [draw(st.sampled_from([*earlier, cur]))]}
            width += growth
        elif kind == "split" and width >= 2:
            node |= {"op": "split"}
            cut = draw(st.integers(1, width - 1))
            node["params"] = {"sizes": [cut, width - cut]}
            outputs[f"z{i}"] = {"from": f"{nid}:second"}
            latents.append(f"{nid}:second")
            earlier.append(cur)
            nodes.append(node)
            cur, width = f"{nid}:first", cut
            continue
        else:
            node["op"] = "actnorm"
        earlier.append(cur)
        nodes.append(node)
        cur = nid
    outputs["z"] = {"from": cur}
    return {"flowgraph": 1, "name": "random",
            "inputs": {"x": {"shape": [dim]}, "ctx": {"shape": [2], "role": "context"}},
            "nodes": nodes, "outputs": outputs}


def issues_of(data: dict) -> list:
    try:
        spec, smap = parse_spec(yaml.safe_dump(data, sort_keys=False))
    except SpecError as e:
        return e.issues
    return check_spec(spec, smap)[1]


@SETTINGS
@given(valid_specs())
def test_random_valid_graphs_pass(data):
    assert issues_of(data) == []


@SETTINGS
@given(valid_specs(), st.data())
def test_cycles_are_found(data, pick):
    nodes = data["nodes"]
    if len(nodes) < 2:
        return
    i = pick.draw(st.integers(0, len(nodes) - 2))
    j = pick.draw(st.integers(i + 1, len(nodes) - 1))
    bad = copy.deepcopy(data)
    bad["nodes"][i]["in"] = nodes[j]["id"] if nodes[j]["op"] != "split" else \
        f"{nodes[j]['id']}:first"
    assert "cycle" in {i.rule for i in issues_of(bad)}


@SETTINGS
@given(valid_specs(), st.data())
def test_dangling_and_doubly_consumed_tensors_are_found(data, pick):
    bad = copy.deepcopy(data)
    name = pick.draw(st.sampled_from(sorted(bad["outputs"])))
    del bad["outputs"][name]
    if not bad["outputs"]:
        return
    assert "unconsumed" in {i.rule for i in issues_of(bad)}
    twice = copy.deepcopy(data)
    twice["outputs"]["extra"] = {"from": "x"}
    assert "consumed-twice" in {i.rule for i in issues_of(twice)}


@SETTINGS
@given(valid_specs(), st.data())
def test_condition_on_an_earlier_tensor_breaks_invertibility(data, pick):
    chain = [n for n in data["nodes"] if n["op"] != "split"]
    if len(chain) < 2:
        return
    bad = copy.deepcopy(data)
    j = pick.draw(st.integers(1, len(chain) - 1))
    target = next(n for n in bad["nodes"] if n["id"] == chain[j]["id"])
    source = chain[pick.draw(st.integers(0, j - 1))]["in"]  # consumed before `target`
    target.clear()
    target |= {"id": chain[j]["id"], "op": "affine_coupling", "in": chain[j]["in"],
               "params": {"net": MLP}, "condition": [source]}
    rules = {i.rule for i in issues_of(bad)}
    # conditioning on the tensor that feeds the coupling itself is not a cycle in the
    # forward pass, but the inverse would need it before reconstructing it
    assert "condition-not-invertible" in rules or "shape" in rules


@SETTINGS
@given(valid_specs(), st.data())
def test_shape_mismatches_and_bad_params_are_found(data, pick):
    bad = copy.deepcopy(data)
    bad["nodes"].append({"id": "oops", "op": "split", "in": bad["outputs"]["z"]["from"],
                         "params": {"sizes": [1, 99]}})
    bad["outputs"]["z"] = {"from": "oops:first"}
    bad["outputs"]["zz"] = {"from": "oops:second"}
    assert "shape" in {i.rule for i in issues_of(bad)}
    typo = copy.deepcopy(data)
    n = pick.draw(st.integers(0, len(typo["nodes"]) - 1))
    typo["nodes"][n]["op"] = typo["nodes"][n]["op"] + "x"
    assert "unknown-op" in {i.rule for i in issues_of(typo)}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=20)


@SETTINGS
@given(valid_specs(), st.data())
def test_random_corruption_never_raises_anything_but_spec_error(data, pick):
    bad = copy.deepcopy(data)
    section = pick.draw(st.sampled_from(["nodes", "outputs", "inputs", "top"]))
    value = pick.draw(json_values)
    if section == "nodes" and bad["nodes"]:
        node = pick.draw(st.sampled_from(bad["nodes"]))
        node[pick.draw(st.sampled_from(["in", "op", "params", "condition", "id", "when",
                                        "repeat"]))] = value
    elif section == "outputs":
        bad["outputs"][pick.draw(st.sampled_from(sorted(bad["outputs"])))] = value
    elif section == "inputs":
        bad["inputs"]["x"]["shape"] = value
    else:
        bad[pick.draw(st.sampled_from(["name", "nodes", "outputs", "args"]))] = value
    issues_of(bad)  # must not raise


@SETTINGS
@given(st.text(max_size=200))
def test_arbitrary_text_is_a_spec_error_or_a_spec(text):
    try:
        parse_spec(text)
    except SpecError:
        pass
