"""`flowgraph compile`: the table for valid specs, every issue and exit 2 for broken ones, and
DenseFlow-74-10's numbers checked against the authors' implementation."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT

from flowgraph.cli.main import main
from flowgraph.graph import analyze
from flowgraph.report import group_rows
from flowgraph.spec import read_spec

DENSEFLOW = ROOT / "specs" / "denseflow-74-10.yaml"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([*map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_compile_prints_the_node_table_and_totals(capsys):
    code, out, err = run(capsys, "compile", ROOT / "specs" / "realnvp-2d.yaml")
    assert code == 0 and err == ""
    assert "s0.coupling" in out and "affine_coupling" in out
    assert "parameters:  35,348" in out and "latent dims: 2 = 2 data + 0 noise" in out


def test_compile_json_is_machine_readable(capsys):
    code, out, _ = run(capsys, "compile", ROOT / "specs" / "augmented-2d.yaml", "--json")
    data = json.loads(out)
    assert code == 0
    assert data["totals"] == {"params": 10304, "data_dims": 2, "noise_dims": 2,
                              "latent_dims": 4}
    aug = next(n for n in data["nodes"] if n["op"] == "cross_unit_coupling")
    assert aug["added_dims"] == 2 and aug["conditions"][0]["from"] == "a1.mix"


def test_broken_spec_exits_2_with_every_issue_and_no_traceback(capsys, tmp_path):
    text = (ROOT / "specs" / "realnvp-2d.yaml").read_text()
    text = text.replace("op: actnorm", "op: actnrm").replace("kind: reverse", "kind: backwards")
    text = text.replace("hidden: [64, 64]", "hidden: [64, -1]")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    code, out, err = run(capsys, "compile", bad)
    assert code == 2 and "Traceback" not in err
    assert "unknown-op" in err and "'actnorm'" in err  # suggestion
    assert "param" in err and "backwards" in err
    assert f"{bad}:" in err  # file:line locations
    code, out, _ = run(capsys, "compile", bad, "--json")
    issues = json.loads(out)["issues"]
    assert code == 2 and all(i["line"] for i in issues) and len(issues) >= 3


@pytest.mark.parametrize("text, rule", [
    ("flowgraph: 1\nname: [oops\n", "yaml"),
    ("- just\n- a list\n", "schema"),
    ("flowgraph: 2\nname: a\ninputs: {}\nnodes: []\noutputs: {}\n", "schema"),
])
def test_bad_files_are_reported(capsys, tmp_path, text, rule):
    f = tmp_path / "s.yaml"
    f.write_text(text)
    code, _, err = run(capsys, "compile", f)
    assert code == 2 and f"[{rule}]" in err


def test_missing_file_and_unknown_override(capsys, tmp_path):
    code, _, err = run(capsys, "compile", tmp_path / "nope.yaml")
    assert code == 2 and "cannot read spec file" in err
    code, _, err = run(capsys, "compile", DENSEFLOW, "--set", "sise=64")
    assert code == 2 and "sise" in err and "size" in err
    code, _, err = run(capsys, "compile", DENSEFLOW, "--set", "grwoth=10")
    assert code == 2 and "did you mean 'growth'?" in err and "Traceback" not in err
    assert "channels" not in err  # a suggestion, not the list of every argument


@pytest.mark.parametrize("text, rule", [
    ("a: &a [*a]\n", "yaml"),
    ("l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 10)), "limit"),
    ("flowgraph: " + "1" * 5000 + "\n", "limit"),
    ("extends: /dev/zero\n", "file"),
])
def test_hostile_files_exit_2_with_a_located_message(capsys, tmp_path, text, rule):
    f = tmp_path / "s.yaml"
    f.write_text(text)
    code, _, err = run(capsys, "compile", f)
    assert code == 2 and f"[{rule}]" in err and f"{f}" in err
    assert "Traceback" not in err and "internal error" not in err


def test_emit_code_and_print_spec(capsys):
    code, out, _ = run(capsys, "compile", ROOT / "specs" / "realnvp-2d.yaml", "--emit-code")
    assert code == 0 and "def _forward_terms" in out and "self.s7.coupling" in out
    code, out, _ = run(capsys, "compile", ROOT / "specs" / "realnvp-2d.yaml", "--print-spec")
    assert code == 0 and out.startswith("flowgraph: 1")


def test_denseflow_74_10_matches_the_official_implementation(capsys):
    code, out, _ = run(capsys, "compile", DENSEFLOW, "--depth", "1")
    assert code == 0
    assert "parameters:  130,647,294" in out
    assert "latent dims: 17,792 = 3,072 data + 14,720 noise" in out
    analysis = analyze(*read_spec(DENSEFLOW))
    blocks = {r.name: r.params for r in group_rows(analysis, 1)}
    assert blocks["deq"] == 2_395_784
    assert (blocks["block1"], blocks["block2"], blocks["block3"]) == (48_061_410, 46_453_404,
                                                                      33_736_080)
    assert blocks["z"] == 616
    g = analysis.graph
    unit_inputs = [g.nodes[f"{b}.u{u}.m0.actnorm"].in_types[0].shape[0]
                   for b, n in (("block1", 6), ("block2", 4), ("block3", 1)) for u in range(n)]
    assert unit_inputs == [12, 22, 32, 42, 52, 62, 124, 134, 144, 154, 308]
    g_inputs = [g.nodes[f"{b}.u{u}.aug"].cond_types for b, n in (("block1", 6), ("block2", 4))
                for u in range(1, n)]
    assert [sum(t.shape[0] for t in c) for c in g_inputs] == [12, 24, 46, 78, 120, 124, 248,
                                                               382]
    assert sum(1 for n in g.ops() if n.op.name == "affine_coupling") == 74


def test_denseflow_at_64_pixels_has_the_same_parameters(capsys):
    code, out, _ = run(capsys, "compile", DENSEFLOW, "--set", "size=64", "--depth", "1")
    assert code == 0 and "parameters:  130,647,294" in out
    assert "latent dims: 71,168 = 12,288 data + 58,880 noise" in out


def test_schema_command(capsys, tmp_path):
    code, out, _ = run(capsys, "schema")
    assert code == 0 and json.loads(out)["title"].startswith("flowgraph spec")


@pytest.mark.parametrize("overrides, params, g_channels", [
    ({}, 130_647_294, [12, 24, 46, 78, 120, 124, 248, 382]),
    ({"g_reads": "previous"}, None, [12, 22, 32, 42, 52, 124, 134, 144]),
    ({"g_reads": "history"}, None, [24, 46, 78, 120, 172, 248, 382, 526]),
    ({"g_norm": "batch"}, 130_647_294 + 2 * 4 * (12 + 24 + 46 + 78 + 120 + 124 + 248 + 382),
     None),
    ({"conv": "lu"}, 130_647_294, None),
    ({"coupling_net": {"kind": "dense_attention",
                       "attention": {"layout": "pixel", "softmax": "standard"}}},
     130_647_294, None),
])
def test_paper_variants_of_denseflow_are_one_override_away(overrides, params, g_channels):
    analysis = analyze(*read_spec(DENSEFLOW, overrides))
    if params is not None:
        assert analysis.totals.params == params
    if g_channels is not None:
        g = analysis.graph
        augs = [n for n in g.ops() if n.op.name == "cross_unit_coupling"]
        assert [sum(t.shape[0] for t in n.cond_types) for n in augs] == g_channels
