"""The spec language: YAML loading with locations, expressions, templates, repeats, extends."""

from __future__ import annotations

import textwrap

import pytest
from conftest import SPEC_FILES

from flowgraph.errors import SpecError
from flowgraph.graph import check_spec
from flowgraph.spec import dump_spec, load_spec, parse_spec, read_spec
from flowgraph.spec.expand import expand
from flowgraph.spec.expr import ExprError, evaluate, substitute

SPECS = SPEC_FILES


def spec_text(body: str) -> str:
    return textwrap.dedent(body).strip() + "\n"


VECTOR = spec_text("""
    flowgraph: 1
    name: vec
    args: {steps: 3}
    inputs:
      x: {shape: [4]}
    templates:
      step:
        args: {hidden: 8}
        nodes:
          - {id: norm, op: actnorm, in: x}
          - {id: cpl, op: affine_coupling, in: norm, params: {net: {kind: mlp, hidden: ["${hidden}"]}}}
          - {id: flip, op: permute, in: cpl, params: {kind: reverse}}
    nodes:
      - {id: s, repeat: "${steps}", use: step, in: x, with: {hidden: "${4 * 4}"}}
    outputs:
      z: {from: s}
""")


def test_round_trip_of_every_spec_file():
    assert SPECS, "specs/ should hold example specs"
    for path in SPECS:
        spec = load_spec(path)
        again, _ = parse_spec(dump_spec(spec))
        assert again == spec, path


def test_expansion_ids_are_stable_and_hierarchical():
    spec, smap = parse_spec(VECTOR)
    program, issues = expand(spec, smap)
    assert issues == []
    ids = [n.id for n in program.nodes]
    assert ids[:3] == ["s0.norm", "s0.cpl", "s0.flip"]
    assert ids[-1] == "s2.flip" and len(ids) == 9
    # the chain: each iteration reads the previous one's output
    assert str(program.nodes[3].inputs[0]) == "s0.flip"
    assert program.nodes[1].params["net"]["hidden"] == [16]
    assert str(program.latents[0].source) == "s2.flip"
    # expansion is deterministic
    again, _ = expand(spec, smap)
    assert [n.id for n in again.nodes] == ids


def test_repeat_variables_earlier_history_and_when():
    text = spec_text("""
        flowgraph: 1
        name: dense
        inputs: {x: {shape: [2, 4, 4]}}
        nodes:
          - id: u
            repeat: 4
            in: x
            body:
              - {id: aug, op: cross_unit_coupling, in: "${prev}", condition: "${earlier}",
                 when: "${i > 0}", params: {growth: 2}}
              - {id: n, op: actnorm, in: aug}
        outputs: {z: {from: u}}
    """)
    program, issues = expand(*parse_spec(text))
    assert issues == []
    augs = [n for n in program.nodes if n.op == "cross_unit_coupling"]
    assert [n.id for n in augs] == ["u1.aug", "u2.aug", "u3.aug"]
    assert [[str(r) for r in n.conditions] for n in augs] == [
        ["x"], ["x", "u0.n"], ["x", "u0.n", "u1.n"]]
    # the skipped aug of iteration 0 passes its input through
    assert str(program.nodes[0].inputs[0]) == "x"


def test_repeat_over_a_list_of_variable_mappings():
    text = spec_text("""
        flowgraph: 1
        name: list
        inputs: {x: {shape: [6]}}
        nodes:
          - {id: a, repeat: [{k: reverse}, {k: swap_halves}], op: permute, in: x,
             params: {kind: "${k}"}}
        outputs: {z: {from: a}}
    """)
    program, issues = expand(*parse_spec(text))
    assert issues == []
    assert [n.params["kind"] for n in program.nodes] == ["reverse", "swap_halves"]


def test_unknown_key_is_reported_with_its_line():
    text = VECTOR.replace("name: vec", "name: vec\nnmae: typo")
    with pytest.raises(SpecError) as e:
        parse_spec(text, "t.yaml")
    (issue,) = e.value.issues
    assert issue.rule == "schema" and issue.location.line == 3
    assert "nmae" in issue.location.path_str()
    assert issue.message == "unknown key 'nmae'" and issue.hint == "did you mean 'name'?"


@pytest.mark.parametrize("old, new, path, close", [
    ("name: vec", "nmae: vec", "nmae", "name"),  # a typo of a required key: one issue, not two
    ("in: norm,", "in: norm, conditon: x,", "templates.step.nodes[1].conditon", "condition"),
    ("args: {hidden: 8}", "args: {hidden: 8}\n    inptus: [x]", "templates.step.inptus",
     "inputs"),
    ("z: {from: s}", "z: {form: s}", "outputs.z.form", "from"),
    ("x: {shape: [4]}", "x: {shap: [4]}", "inputs.x.shap", "shape"),
])
def test_misspelt_spec_and_node_keys_get_a_suggestion(old, new, path, close):
    with pytest.raises(SpecError) as e:
        parse_spec(VECTOR.replace(old, new), "t.yaml")
    (issue,) = e.value.issues
    assert issue.location.path_str() == path and issue.location.line is not None
    assert issue.hint == f"did you mean {close!r}?"


def test_bad_yaml_and_duplicate_keys():
    with pytest.raises(SpecError) as e:
        parse_spec("flowgraph: 1\nname: [unclosed\n", "bad.yaml")
    assert e.value.issues[0].rule == "yaml" and e.value.issues[0].location.line is not None
    with pytest.raises(SpecError) as e:
        parse_spec("flowgraph: 1\nname: a\nname: b\n")
    assert e.value.issues[0].rule == "yaml" and "duplicate" in e.value.issues[0].message


def test_entry_forms_are_validated():
    bad = VECTOR.replace("- {id: s, repeat:", "- {id: s, op: actnorm, repeat:")
    with pytest.raises(SpecError) as e:
        parse_spec(bad)
    assert "exactly one of" in str(e.value)


def test_expression_language_is_safe_and_useful():
    scope = {"a": 3, "xs": [1, 2, 3], "d": {"k": 5}}
    assert evaluate("a * 2 + 1", scope) == 7
    assert evaluate("xs[1:]", scope) == [2, 3]
    assert evaluate("d['k'] if a > 2 else 0", scope) == 5
    assert evaluate("[v * v for v in xs if v > 1]", scope) == [4, 9]
    assert substitute("u${a}", scope) == "u3"
    assert substitute("${xs}", scope) == [1, 2, 3]
    for evil in ("__import__('os')", "a.__class__", "open('/etc/passwd')", "(lambda: 1)()",
                 "2 ** 100000", "range(10**9)"):
        with pytest.raises(ExprError):
            evaluate(evil, scope)
    with pytest.raises(ExprError, match="unknown name 'b'"):
        evaluate("b + 1", scope)


def test_expression_errors_become_issues_with_location():
    bad = VECTOR.replace('repeat: "${steps}"', 'repeat: "${stepz}"')
    _, issues = expand(*parse_spec(bad, "v.yaml"))
    assert [i.rule for i in issues] == ["expression"]
    assert issues[0].location.line == 14 and "stepz" in issues[0].message


def test_reference_errors_suggest_close_names():
    bad = VECTOR.replace("in: norm,", "in: nrom,")
    _, issues = expand(*parse_spec(bad))
    assert issues and issues[0].rule == "reference"
    assert "norm" in issues[0].hint
    assert any("s0" in c for c in issues[0].context)  # which instance it happened in


def test_unknown_template_and_argument():
    _, issues = expand(*parse_spec(VECTOR.replace("use: step", "use: stp")))
    assert issues[0].rule == "unknown-template" and "step" in issues[0].hint
    _, issues = expand(*parse_spec(VECTOR.replace("with: {hidden:", "with: {hiden:")))
    assert issues[0].rule == "template-args" and issues[0].hint == "did you mean 'hidden'?"
    assert issues[0].location.path_str() == "nodes[0].with.hiden"


def test_misspelt_argument_of_an_extending_spec_is_an_error(tmp_path):
    (tmp_path / "base.yaml").write_text(VECTOR)
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\nname: child\nargs: {setps: 5}\n")
    with pytest.raises(SpecError) as e:
        read_spec(child)
    (issue,) = e.value.issues
    assert issue.rule == "unknown-arg" and issue.hint == "did you mean 'steps'?"
    assert (issue.location.file, issue.location.line) == (str(child), 3)
    # a new argument that the child itself uses is fine
    child.write_text("extends: base.yaml\nname: child\nargs: {n2: 2}\n"
                     "nodes:\n  - {id: s, repeat: \"${n2}\", use: step, in: x}\n")
    assert read_spec(child)[0].args["n2"] == 2


def test_op_parameter_typos_are_reported_with_a_suggestion_and_their_line():
    text = spec_text("""
        flowgraph: 1
        name: typo
        inputs: {x: {shape: [4]}}
        nodes:
          - {id: c, op: affine_coupling, in: x, params: {net: {kind: mlp, hiden: [8]}, sclae: exp}}
        outputs: {z: {from: c}}
    """)
    issues = check_spec(*parse_spec(text, "f.yaml"))[1]
    by_key = {i.location.path[-1]: i for i in issues}
    assert by_key["sclae"].message == "affine_coupling: unknown key 'sclae'"
    assert by_key["sclae"].hint == "did you mean 'scale'?" and by_key["sclae"].node == "c"
    assert "did you mean 'hidden'?" in by_key["net"].message
    assert {i.location.line for i in issues} == {5}


def test_extends_and_overrides(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(VECTOR)
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\nname: child\nargs: {steps: 5}\n")
    spec, smap = read_spec(child)
    assert spec.name == "child" and spec.args["steps"] == 5 and "step" in spec.templates
    program, _ = expand(spec, smap)
    assert len(program.nodes) == 15
    spec2 = load_spec(child, {"steps": 2})
    assert spec2.args["steps"] == 2
    with pytest.raises(SpecError, match="no argument 'stepz'"):
        load_spec(child, {"stepz": 2})
    # locations of inherited entries point at the base file
    _, smap = read_spec(child)
    assert smap.locate(("templates", "step")).file == str(base)


def test_json_schema_lists_the_format_and_ops():
    from flowgraph.cli.schema_cmd import full_schema

    schema = full_schema()
    assert schema["title"].startswith("flowgraph spec")
    assert {"inputs", "nodes", "outputs", "templates"} <= set(schema["properties"])
    assert "affine_coupling" in schema["x-ops"] and "net" in str(schema["x-ops"]["affine_coupling"])
    assert "hidden" in str(schema["x-nets"]["glow"])


def test_group_with_an_input_and_dotted_references():
    text = spec_text("""
        flowgraph: 1
        name: group
        inputs: {x: {shape: [2, 4, 4]}}
        nodes:
          - id: g
            in: x
            body:
              - {id: sq, op: squeeze, in: "${input}"}
              - {id: sp, op: split, in: sq}
            output: "sp:first"
          - {id: n, op: actnorm, in: g}
        outputs:
          z1: {from: "g.sp:second"}
          z: {from: n}
    """)
    program, issues = expand(*parse_spec(text))
    assert issues == []
    assert [str(r) for r in program.nodes[0].inputs] == ["x"]
    assert str(program.nodes[2].inputs[0]) == "g.sp:first"
    assert [str(lat.source) for lat in program.latents] == ["g.sp:second", "n"]
