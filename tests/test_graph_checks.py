"""Static graph checks: every rule, positive and negative, reported all at once with locations."""

from __future__ import annotations

import textwrap

import pytest
import torch

from flowgraph.errors import SpecError
from flowgraph.graph import analyze, check_spec
from flowgraph.spec import parse_spec


def check(body: str):
    spec, smap = parse_spec(textwrap.dedent(body).strip() + "\n", "g.yaml")
    return check_spec(spec, smap)


def rules(body: str) -> list[str]:
    return [i.rule for i in check(body)[1]]


GOOD = """
    flowgraph: 1
    name: good
    inputs:
      x: {shape: [4, 8, 8], bits: 8}
    nodes:
      - {id: deq, op: dequantize_uniform, in: x}
      - {id: sq, op: squeeze, in: deq}
      - {id: c1, op: affine_coupling, in: sq, params: {net: {kind: glow, hidden: 8}}}
      - {id: sp, op: split, in: c1}
      - {id: aug, op: cross_unit_coupling, in: "sp:first", condition: [sq], params: {growth: 2}}
      - {id: c2, op: affine_coupling, in: aug, condition: ["sp:second"], params: {net: {kind: glow, hidden: 8}}}
    outputs:
      z1: {from: "sp:second"}
      z: {from: c2, prior: {dist: channel_normal}}
"""


def test_valid_graph_passes_with_shapes_counts_and_dims():
    analysis, issues = check(GOOD)
    assert issues == []
    g = analysis.graph
    assert g.nodes["sq"].out_types["out"].shape == (16, 4, 4)
    assert g.nodes["aug"].out_types["out"].shape == (10, 4, 4)
    t = analysis.totals
    assert (t.data_dims, t.noise_dims, t.latent_dims) == (256, 32, 288)
    assert t.params == sum(n.param_count for n in g.nodes.values()) > 0
    # a condition from a factored-out latent is legal for a bijective node
    assert g.forward_order.index("c2") > g.forward_order.index("aug")
    assert g.inverse_order.index("z1") < g.inverse_order.index("c2")


def test_cycle_is_reported_with_the_cycle():
    body = GOOD.replace("in: sq, params: {net: {kind: glow, hidden: 8}}}",
                        "in: sq, condition: [c2], params: {net: {kind: glow, hidden: 8}}}")
    analysis, issues = check(body)
    cyc = [i for i in issues if i.rule == "cycle"]
    assert analysis is None and cyc
    assert "c1" in cyc[0].found and "c2" in cyc[0].found and "->" in cyc[0].found


def test_tensor_consumed_twice_and_dangling():
    body = GOOD.replace("z1: {from: \"sp:second\"}", "z1: {from: sq}")
    got = rules(body)
    assert "consumed-twice" in got and "unconsumed" in got
    issues = check(body)[1]
    dangling = next(i for i in issues if i.rule == "unconsumed")
    assert "sp:second" in dangling.message and dangling.hint


def test_condition_edge_that_breaks_invertibility_is_explained():
    body = GOOD.replace('condition: ["sp:second"]', "condition: [sq]")
    analysis, issues = check(body)
    bad = [i for i in issues if i.rule == "condition-not-invertible"]
    assert analysis is None and len(bad) == 1
    assert bad[0].node == "c2" and "'sq'" in bad[0].message
    assert "augmentation" in bad[0].message  # the rule is explained
    assert bad[0].location.line is not None


def test_augmentation_may_condition_on_any_earlier_tensor():
    # `sq` is an earlier forward tensor consumed by c1: illegal for a coupling (above) but
    # legal for the cross-unit coupling, whose inverse only drops channels
    assert "condition-not-invertible" not in rules(GOOD)


def test_context_input_is_condition_only():
    body = """
        flowgraph: 1
        name: ctx
        inputs:
          x: {shape: [4]}
          y: {shape: [3], role: context}
        nodes:
          - {id: c, op: affine_coupling, in: x, condition: [y], params: {net: {kind: mlp, hidden: [8]}}}
        outputs: {z: {from: c}}
    """
    assert rules(body) == []
    misuse = body.replace("in: x, condition: [y]", "in: x").replace(
        "outputs: {z: {from: c}}", "outputs: {z: {from: c}, w: {from: y}}")
    assert "context" in rules(misuse)


def test_shape_rules_and_discrete_data():
    odd = GOOD.replace("shape: [4, 8, 8]", "shape: [4, 7, 8]")
    issues = check(odd)[1]
    shape = [i for i in issues if i.rule == "shape"]
    assert shape and shape[0].node == "sq" and "7" in (shape[0].found or "")
    raw = GOOD.replace("in: deq}", "in: x}").replace("{id: deq, op: dequantize_uniform, in: x}",
                                                     "{id: deq, op: actnorm, in: x}")
    assert "discrete" in rules(raw)


def test_unknown_op_with_suggestion_and_bad_params_with_lines():
    body = GOOD.replace("op: squeeze", "op: sqeeze").replace("hidden: 8}}}\n      - {id: sp",
                                                            "hidden: eight}}}\n      - {id: sp")
    issues = check(body)[1]
    unknown = next(i for i in issues if i.rule == "unknown-op")
    assert "squeeze" in unknown.hint and unknown.location.line == 7
    param = next(i for i in issues if i.rule == "param")
    assert param.node == "c1" and param.location.path_str().endswith("hidden")
    assert param.location.line == 8


def test_ports_must_be_named_for_multi_output_ops():
    body = GOOD.replace('in: "sp:first"', "in: sp")
    issues = check(body)[1]
    assert any(i.rule == "port" and "first, second" in i.message for i in issues)
    body = GOOD.replace('in: "sp:first"', 'in: "sp:left"')
    assert "port" in rules(body)


def test_absurd_sizes_are_errors_not_allocations():
    body = GOOD.replace("hidden: 8}}}\n      - {id: sp", "hidden: 50000000}}}\n      - {id: sp")
    issues = check(body)[1]
    size = [i for i in issues if i.rule == "size"]
    assert size and ("TB" in size[0].message or "GB" in size[0].message)
    huge = GOOD.replace("shape: [4, 8, 8]", "shape: [4, 65536, 65536]")
    assert "size" in rules(huge)


def test_every_problem_is_reported_at_once():
    body = GOOD.replace("op: squeeze", "op: sqeeze").replace('condition: ["sp:second"]',
                                                            "condition: [nowhere]")
    body = body.replace("growth: 2", "growth: -1")
    got = rules(body)
    assert {"unknown-op", "reference", "param"} <= set(got)


def test_reserved_and_clashing_ids():
    body = GOOD.replace("{id: c1,", "{id: forward,").replace("in: c1}", "in: forward}")
    assert "id" in rules(body)


def test_analyze_raises_spec_error_with_every_issue():
    with pytest.raises(SpecError) as e:
        analyze(*parse_spec(textwrap.dedent(GOOD).replace("op: squeeze", "op: sqeeze")))
    assert e.value.issues and "sqeeze" in str(e.value)


# -- invertibility by construction: the check and the generated inverse share one schedule ------
VEC = """
    flowgraph: 1
    name: vec
    inputs:
      x: {shape: [4]}
    nodes:
      - {id: a, op: affine_coupling, in: x, params: {net: {kind: mlp, hidden: [8]}}}
      - {id: p, op: permute, in: a, params: {kind: reverse}}
      - {id: b, op: affine_coupling, in: p, params: {net: {kind: mlp, hidden: [8]}}}
    outputs:
      z: {from: b}
"""


def _not_invertible(body: str):
    analysis, issues = check(body)
    bad = [i for i in issues if i.rule == "condition-not-invertible"]
    assert analysis is None and len(bad) == 1, issues
    assert bad[0].location.line is not None
    return bad[0]


def test_coupling_conditioned_on_the_tensor_it_transforms_is_refused():
    bad = _not_invertible(VEC.replace("in: p, params", "in: p, condition: [p], params"))
    assert bad.node == "b" and "'p'" in bad.message and "own input" in bad.message


def test_prior_conditioned_on_the_latent_it_scores_is_refused():
    body = VEC.replace("z: {from: b}", "z: {from: b, condition: [b], "
                                       "prior: {dist: conditional_normal}}")
    bad = _not_invertible(body)
    assert bad.node == "z" and "the very tensor this latent scores" in bad.message


def test_coupling_conditioned_on_the_data_input_is_refused_with_the_reason():
    bad = _not_invertible(VEC.replace("in: p, params", "in: p, condition: [x], params"))
    assert bad.node == "b" and "data input" in bad.message and "'a'" in bad.message


def test_augmentation_conditioned_on_the_data_input_works_in_every_direction():
    from flowgraph.compile import compile_spec

    body = VEC.replace("{id: p, op: permute, in: a, params: {kind: reverse}}",
                       "{id: p, op: cross_unit_coupling, in: a, condition: [x], "
                       "params: {growth: 2, g: {kind: mlp, hidden: [8]}}}")
    spec, smap = parse_spec(textwrap.dedent(body).strip() + "\n", "g.yaml")
    flow = compile_spec(spec, smap=smap, seed=0).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    z, _ = flow(x)
    assert z.shape == (3, 6) and torch.allclose(flow.inverse(z), x, atol=1e-12)
    assert flow.sample(2).shape == (2, 4) and "assert context" not in flow.code


def test_reserved_names_are_refused_at_every_id_segment():
    body = """
        flowgraph: 1
        name: res
        inputs:
          x: {shape: [4]}
        templates:
          t:
            nodes:
              - {id: state_dict, op: affine_coupling, in: x, params: {net: {kind: mlp}}}
        nodes:
          - {id: g, use: t, in: x}
        outputs: {z: {from: g}}
    """
    issues = check(body)[1]
    bad = [i for i in issues if i.rule == "id"]
    assert bad and bad[0].node == "g.state_dict" and "'state_dict'" in bad[0].message


def test_generated_variables_are_named_after_nodes_and_never_clash():
    from flowgraph.compile import compile_spec

    body = VEC.replace("id: a,", "id: ld,").replace("in: a,", "in: ld,").replace(
        "id: p,", "id: z,").replace("in: p,", "in: z,").replace("z: {from: b}", "out: {from: b}")
    spec, smap = parse_spec(textwrap.dedent(body).strip() + "\n", "g.yaml")
    flow = compile_spec(spec, smap=smap, seed=0)
    assert "ld_, _ld = self.ld(x, [], None)" in flow.code  # not the log-det total `ld`
    assert "z_, _ld = self.z(ld_, [], None)" in flow.code  # not the latent `z`
    x = torch.randn(3, 4)
    assert torch.allclose(flow.inverse(flow(x)[0]), x, atol=1e-5)
