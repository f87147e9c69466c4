"""`SpecLimits`: each limit refuses with a located `SpecError` naming it, fast, and can be raised."""

from __future__ import annotations

import os
import textwrap
import time

import pytest

from flowgraph.cli.main import main
from flowgraph.errors import SpecError
from flowgraph.spec import SpecLimits, parse_spec_text, parse_value_text, read_spec, use_limits
from flowgraph.spec.expand import expand
from flowgraph.spec.expr import ExprError, ExprLimitError, evaluate, substitute
from flowgraph.spec.limits import ENV_VAR, active_limits

HEAD = "flowgraph: 1\nname: t\ninputs: {x: {shape: [4]}}\noutputs: {z: {from: r}}\n"


def refused(fn, *args, limit: str, **kw) -> SpecError:
    """`fn` raises a SpecError naming `limit`, with a file location and a way to raise it."""
    t0 = time.perf_counter()
    with pytest.raises(SpecError) as e:
        fn(*args, **kw)
    assert time.perf_counter() - t0 < 2.0
    issue = next(i for i in e.value.issues if i.rule == "limit")
    assert f"({limit})" in issue.message and f"--limit {limit}=N" in issue.hint
    assert issue.location is not None and issue.location.file is not None
    return e.value


def expand_issues(text: str, limits: SpecLimits | None = None) -> list:
    spec, smap = parse_spec_text(text, "t.yaml", limits=limits)
    return expand(spec, smap, limits=limits)[1]


# -- files and text ------------------------------------------------------------------------------

def test_file_size_is_refused_after_reading_at_most_the_limit(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_bytes(b"a: " + b"x" * 2_000_000)
    err = refused(read_spec, big, limit="max_file_bytes")
    assert str(big) in str(err)
    raised = SpecLimits().replace(max_file_bytes=3_000_000, max_str_len=3_000_000)
    with use_limits(raised), pytest.raises(SpecError, match="schema"):  # read: not a spec
        read_spec(big)
    refused(parse_spec_text, "a: " + "x" * 2_000_000, "ckpt", limit="max_file_bytes")


@pytest.mark.parametrize("target", ["/dev/zero", "/dev/null", "dir", "fifo"])
def test_only_regular_files_are_read(tmp_path, target):
    if target == "dir":
        target = str(tmp_path)
    elif target == "fifo":
        target = str(tmp_path / "fifo")
        os.mkfifo(target)
    elif not os.path.exists(target):
        pytest.skip(f"{target} missing")
    with pytest.raises(SpecError, match="regular file") as e:
        read_spec(target)
    assert e.value.issues[0].rule == "file"
    child = tmp_path / "child.yaml"
    child.write_text(f"extends: {target}\nname: c\n")
    with pytest.raises(SpecError, match="regular file") as e:  # names the extends line too
        read_spec(child)
    assert f"extended from {child}:1" in str(e.value)


def test_text_that_is_not_utf8_is_refused_at_its_line(tmp_path):
    f = tmp_path / "latin.yaml"
    f.write_bytes(b"flowgraph: 1\nname: caf\xe9\n")
    with pytest.raises(SpecError, match="UTF-8") as e:
        read_spec(f)
    assert e.value.issues[0].location.line == 2 and "0xe9" in e.value.issues[0].found
    with pytest.raises(SpecError, match="UTF-8"):
        parse_spec_text("name: \ud800\n", "ckpt")


# -- YAML structure ------------------------------------------------------------------------------

def test_nesting_depth():
    refused(parse_value_text, "[" * 100 + "]" * 100, limit="max_depth")
    refused(parse_value_text, "a:\n" + "".join("  " * i + "- \n" for i in range(1, 80)),
            limit="max_depth")
    # libyaml's own bound on deeper input is a located YAML error, never a RecursionError
    with pytest.raises(SpecError, match="YAML"):
        parse_value_text("[" * 100_000 + "]" * 100_000)
    # depth counts through aliases: a shallow alias of a deep value is deep
    deep = "a: &a " + "[" * 40 + "]" * 40 + "\nb: " + "[" * 30 + "*a" + "]" * 30
    refused(parse_value_text, deep, limit="max_depth")
    assert parse_value_text("[" * 60 + "]" * 60)  # below the limit


def test_recursive_aliases():
    for text in ("a: &a [*a]", "a: &a {b: *a}", "a: &a [[[{b: *a}]]]"):
        with pytest.raises(SpecError, match="recursive alias"):
            parse_value_text(text)


@pytest.mark.parametrize("shape", ["seq", "map", "wide", "merge"])
def test_alias_bombs_are_refused_before_anything_expands_them(shape):
    if shape == "merge":
        text = "a: &a {x: 1, y: 2}\n" + "\n".join(
            f"b{i}: &b{i} {{<<: [{', '.join(['*a'] + [f'*b{j}' for j in range(i)])}]}}"
            for i in range(30))
    else:
        width, levels = (1000, 3) if shape == "wide" else (10, 10)
        text = f"l0: &l0 [{', '.join(['x'] * width)}]\n"
        for i in range(1, levels):
            refs = [f"*l{i - 1}"] * width
            body = (f"{{{', '.join(f'k{j}: {r}' for j, r in enumerate(refs))}}}"
                    if shape == "map" else f"[{', '.join(refs)}]")
            text += f"l{i}: &l{i} {body}\n"
    refused(parse_value_text, text, limit="max_yaml_nodes")


def test_alias_count_and_value_count():
    refused(parse_value_text, "a: &a 1\nb: [" + ", ".join(["*a"] * 11_000) + "]",
            limit="max_aliases")
    refused(parse_value_text, "[" + ", ".join(["1"] * 60_000) + "]", limit="max_yaml_nodes")
    lim = SpecLimits().replace(max_yaml_nodes=100_000)
    assert len(parse_value_text("[" + ", ".join(["1"] * 60_000) + "]", limits=lim)) == 60_000


def test_integers_and_strings():
    refused(parse_value_text, "a: " + "9" * 5000, limit="max_int_digits")  # Python's 4300 too
    refused(parse_value_text, "a: 1234567890123456789", limit="max_int_digits")
    refused(parse_value_text, "a: 0x" + "f" * 16, limit="max_int_digits")
    assert parse_value_text("a: 123456789012345678") == {"a": 123456789012345678}
    assert parse_value_text("a: 1234567890123456789",
                            limits=SpecLimits().replace(max_int_digits=19))["a"] > 0
    refused(parse_value_text, "a: " + "x" * 200_000, limit="max_str_len")


def test_odd_yaml_values_are_located_errors():
    for text, match in [("a: 2001-13-45", "month"), ("? [a]\n: 1", "plain name"),
                        ("a: !!python/object/apply:os.system [ls]", "constructor"),
                        ("a: 1\n---\nb: 2", "one YAML document"), ("a: *nope", "undefined"),
                        ("a: \x07", "control characters")]:
        with pytest.raises(SpecError, match=match) as e:
            parse_value_text(text, "v.yaml")
        assert e.value.issues[0].location.line is not None, text


def test_extends_chain_and_loop(tmp_path):
    (tmp_path / "s0.yaml").write_text(HEAD + "nodes: [{id: r, op: actnorm, in: x}]\n")
    for i in range(1, 11):
        (tmp_path / f"s{i}.yaml").write_text(f"extends: s{i - 1}.yaml\nname: s{i}\n")
    assert read_spec(tmp_path / "s8.yaml")[0].name == "s8"
    refused(read_spec, tmp_path / "s10.yaml", limit="max_extends")
    assert read_spec(tmp_path / "s10.yaml", limits=SpecLimits().replace(max_extends=10))
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nname: b\n")
    with pytest.raises(SpecError, match="loops back"):
        read_spec(tmp_path / "a.yaml")


# -- expressions -------------------------------------------------------------------------------

@pytest.mark.parametrize("source, limit", [
    ("-" * 3000 + "1", "max_expr_chars"),
    ("-" * 900 + "1", "max_expr_depth"),
    ("[" * 40 + "1" + "]" * 40, "max_expr_depth"),
    ("[" + ",".join(["1"] * 600) + "]", "max_expr_nodes"),
    ("'a' * 10**9", "max_str_len"),
    ("[0] * 10**9", "max_seq_len"),
    ("(1,) * 200000", "max_seq_len"),
    ("10 ** 64 ** 64", "max_int_digits"),
    ("10 ** 20", "max_int_digits"),
    ("int('9' * 30)", "max_int_digits"),
    ("[[i for i in range(100000)] for j in range(100000)]", "max_expr_steps"),
    ("sum([[1] * 1000] * 1000, [])", "max_expr_steps"),  # quadratic concatenation
])
def test_expression_limits(source, limit):
    t0 = time.perf_counter()
    with pytest.raises(ExprLimitError) as e:
        evaluate(source, {})
    assert e.value.limit == limit and time.perf_counter() - t0 < 2.0


def test_expression_failures_are_expression_errors():
    for source in ("2.0 ** 10000", "int(1e308 * 10)", "1e308 * 10", "(-8) ** 0.5",
                   "'%999999999d' % 1", "int('9' * 5000)", "range(10**9)", "x.y", "{**{}}"):
        with pytest.raises(ExprError):
            evaluate(source, {"x": 1})
    # raising a limit lets a bigger (but bounded) computation through
    with use_limits(SpecLimits().replace(max_int_digits=40)):
        assert evaluate("10 ** 30", {}) == 10**30


def test_the_step_budget_is_shared_by_a_whole_expansion():
    text = HEAD + textwrap.dedent("""
        nodes:
          - {id: r, repeat: 2000, op: actnorm, in: x,
             params: {n: "${len([j for j in range(200)])}"}}
    """)
    issues = expand_issues(text)
    assert [i.rule for i in issues] == ["limit"] and "(max_expr_steps)" in issues[0].message
    assert issues[0].location.line is not None
    assert not expand_issues(text, SpecLimits().replace(max_expr_steps=10_000_000))


def test_interpolated_text_and_value_depth():
    with pytest.raises(ExprLimitError):
        substitute("${s}${s}", {"s": "x" * 60_000})
    with pytest.raises(ExprLimitError, match="nests deeper"):
        substitute("${[[[[[[[[[[a]]]]]]]]]]}", {"a": parse_value_text("[" * 60 + "]" * 60)})


# -- expansion ---------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    "  - {id: r, repeat: 100000000, op: actnorm, in: x}\n",
    ("  - id: r\n    repeat: 10000\n    in: x\n    body:\n"
     "      - {id: a, repeat: 10000, op: actnorm, in: \"${input}\"}\n"),
])
def test_node_count_is_refused_during_expansion(body):
    t0 = time.perf_counter()
    issues = expand_issues(HEAD + "nodes:\n" + body)
    assert time.perf_counter() - t0 < 2.0
    assert [i.rule for i in issues] == ["limit"] and "(max_nodes)" in issues[0].message
    assert issues[0].location.file == "t.yaml" and issues[0].location.line is not None


def test_template_fan_out_is_counted_too():
    tpl = "".join(f"  t{i}:\n    nodes: [" + ", ".join(
        f"{{id: u{j}, use: t{i + 1}, in: x}}" for j in range(10)) + "]\n" for i in range(8))
    text = (HEAD + "templates:\n" + tpl + "  t8: {nodes: [{id: a, op: actnorm, in: x}]}\n"
            "nodes: [{id: r, use: t0, in: x}]\n")
    issues = expand_issues(text)
    assert "(max_nodes)" in issues[-1].message


def test_raising_max_nodes_lets_a_big_spec_expand():
    text = HEAD + "nodes:\n  - {id: r, repeat: 30000, op: actnorm, in: x}\n"
    assert "(max_nodes)" in expand_issues(text)[0].message
    limits = SpecLimits().replace(max_nodes=40_000)
    spec, smap = parse_spec_text(text, limits=limits)
    program, issues = expand(spec, smap, limits=limits)
    assert not issues and len(program.nodes) == 30_000


def test_long_chains_of_skipped_entries_resolve_without_recursion_errors():
    forward = "".join(f"  - {{id: e{i}, op: actnorm, in: e{i - 1}, when: false}}\n"
                      for i in range(1, 300))
    text = HEAD + "nodes:\n  - {id: e0, op: actnorm, in: x}\n" + forward + \
        "  - {id: r, op: actnorm, in: e299}\n"
    issues = expand_issues(text)
    assert issues and "(max_depth)" in issues[0].message  # bounded, reported, located


def test_issue_count_is_capped():
    body = "".join(f"  - {{id: n{i}, op: actnorm, in: nosuch{i}}}\n" for i in range(500))
    issues = expand_issues(HEAD.replace("from: r", "from: n0") + "nodes:\n" + body)
    assert len(issues) == 201 and "(max_issues)" in issues[-1].message


def test_linear_expansion_of_ten_thousand_nodes():
    text = HEAD + textwrap.dedent("""
        templates:
          step:
            args: {seen: []}
            nodes:
              - {id: norm, op: actnorm, in: x}
              - {id: flip, op: permute, in: norm, params: {kind: reverse}}
        nodes:
          - {id: r, repeat: 5000, use: step, in: x, with: {seen: "${earlier}"}}
    """)
    t0 = time.perf_counter()
    program, issues = expand(*parse_spec_text(text))
    assert not issues and len(program.nodes) == 10_000
    assert time.perf_counter() - t0 < 5.0  # ~0.2 s on an idle core; generous for CI


# -- how limits are set --------------------------------------------------------------------------

def test_limits_come_from_arguments_context_environment_and_cli(monkeypatch, tmp_path, capsys):
    assert active_limits() == SpecLimits()
    monkeypatch.setenv(ENV_VAR, "max_nodes=123, max_depth=9")
    assert active_limits().max_nodes == 123 and active_limits().max_depth == 9
    with use_limits(SpecLimits().replace(max_nodes=7)):
        assert active_limits().max_nodes == 7
    monkeypatch.setenv(ENV_VAR, "max_nodse=1")
    with pytest.raises(SpecError, match="did you mean 'max_nodes'"):
        active_limits()
    monkeypatch.delenv(ENV_VAR)
    with pytest.raises(SpecError, match="positive integer"):
        SpecLimits().replace(max_nodes=0)
    spec = tmp_path / "s.yaml"
    spec.write_text(HEAD + "nodes:\n  - {id: r, repeat: 50, op: actnorm, in: x}\n")
    assert main(["--limit", "max_nodes=10", "compile", str(spec)]) == 2
    assert "(max_nodes)" in capsys.readouterr().err
    assert main(["--limit", "max_nodes=1000", "compile", str(spec)]) == 0
    capsys.readouterr()
    assert main(["--limit", "max_nods=1", "compile", str(spec)]) == 2
    assert "did you mean 'max_nodes'" in capsys.readouterr().err


@pytest.mark.parametrize("value, limit", [
    ("[" * 100 + "]" * 100, "max_depth"), ("9" * 5000, "max_int_digits"),
    ("x" * 200_000, "max_str_len"), ("{a: " * 80 + "1" + "}" * 80, "max_depth"),
])
def test_set_values_go_through_the_same_reader(value, limit, capsys):
    from conftest import ROOT

    code = main(["compile", str(ROOT / "specs" / "glow.yaml"), "--set", f"steps={value}"])
    err = capsys.readouterr().err
    assert code == 2 and f"({limit})" in err and "--set steps" in err
    assert "Traceback" not in err
