"""Spec fuzzing: deterministic mutants of the shipped specs, hostile YAML, and one case runner.

Shared by tests/test_fuzz_specs.py (a bounded, seeded sample) and tests/fuzz_long.py (the long
mode). A case is a file written next to the shipped specs (in a private copy, so `extends`
resolves) plus `--set` items. `run_case` classifies it:

- ``compiled``: the static checks pass (tiny specs are also built and run both ways);
- ``spec-error``: a `SpecError` with at least one located issue (file, and line when known);
- ``usage-error``: a malformed ``--set`` item (the CLI's usage error, exit status 2);
- ``unlocated``: a `SpecError` none of whose issues says where;
- ``unhandled``: any other exception (a bug: the traceback is kept);
- ``slow``: finished, but over the per-case budget of CPU time (CPU, not wall-clock time, so
  that a busy machine does not make cases fail; the runner's watchdog adds ``hang``).
"""

from __future__ import annotations

import contextlib
import random
import re
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SPEC_DIRS = ("", "ablations")  # specs/train holds training configs, not flow specs
TIME_BUDGET_S = 2.0
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
TINY_PARAMS = 50_000


def shipped_specs() -> list[str]:
    """Flow specs under specs/ and specs/ablations, relative to specs/."""
    out = []
    for d in SPEC_DIRS:
        for p in sorted((ROOT / "specs" / d).glob("*.yaml")):
            data = yaml.safe_load(p.read_text())
            if isinstance(data, dict) and ("flowgraph" in data or "extends" in data):
                out.append(str(p.relative_to(ROOT / "specs")))
    return out


@dataclass
class Case:
    name: str
    rel_dir: str  # where the file goes, relative to the specs copy
    data: bytes
    overrides: list[str] = field(default_factory=list)


# -- hostile material --------------------------------------------------------------------------

HOSTILE_EXPRS = [
    "'a' * 10**9", "[0] * 10**9", "10 ** 64 ** 64", "2.0 ** 10000", "int(1e308 * 10)",
    "-" * 3000 + "1", "(" * 150 + "1" + ")" * 150, "[" * 150 + "]" * 150,
    "[[i for i in range(100000)] for j in range(100000)]", "sum([[1] * 1000] * 1000, [])",
    "[x for x in range(100000)]", "'%999999999d' % 1", "9" * 5000, "10 ** 18", "range(10**9)",
    "{'a': 1}['b']", "1 / 0", "[]", "nosuch", "earlier", "history[-1]", "prev", "input",
    "(1,) * 100000", "min()", "max([])", "len(1)", "abs('a')", "1e308 * 10", "-(2 ** 63)",
    "[1][5]", "'a'[::0]", "i * 10**17", "int('9' * 4000)", "int(1e300) * int(1e300)",
    "[i for i in range(10**5)][::-1]", "{1: 2, **{}}", "x.__class__", "(lambda: 1)()",
    "[y for y in [1, 2] for z in [3]]", "'x' * 100000 + 'y'", "10 ** 64 * 10 ** 64",
    "1 if 0 else", "${x}", "count ** count ** count", "[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]",
]
HOSTILE_SCALARS = [
    "0", "-1", "1", "2147483648", "9223372036854775808", "1" + "0" * 30, "9" * 5000, "1e308",
    "-1e308", ".inf", "-.inf", ".nan", "1e-320", "0x" + "f" * 40, "0o777", "1_000", "190:20:30",
    "true", "null", "~", "''", '"\\0"', "[]", "{}", "[1, [2, [3]]]", "x" * 300, "2001-13-45",
    "!!binary aGVsbG8=", "!!set {a, b}", "!!python/object/apply:os.system [echo hi]",
    "!!float nan", "!!int 12345678901234567890123", "*undefined", "&a [*a]",
]
HOSTILE_PATHS = ["/dev/zero", "/dev/urandom", "/dev/stdin", "/dev/null", ".", "..", "/",
                 "nosuch.yaml", "a\0b.yaml", "x" * 5000, "/proc/self/mem", "fifo", "big.yaml",
                 "self.yaml", "../glow.yaml", "../../README.md"]
REPEATS = [10**8, 10**5, 20001, 1000, -1, 1.5, "x", True, [], [{}] * 3, [1, 2],
           "${10**8}", "${-1}", "${[{}] * 100000}", "${i}", {"a": 1}]


def _deep(n: int, flow: bool) -> str:
    if flow:
        return "[" * n + "]" * n
    return "".join("  " * i + "- \n" for i in range(n)) + "  " * n + "x"


def _bomb(width: int, levels: int, shape: str) -> str:
    lines = [f"l0: &l0 [{', '.join(['x'] * width)}]"]
    for i in range(1, levels):
        refs = ", ".join([f"*l{i - 1}"] * width)
        if shape == "map":
            refs = ", ".join(f"k{j}: *l{i - 1}" for j in range(width))
            lines.append(f"l{i}: &l{i} {{{refs}}}")
        else:
            lines.append(f"l{i}: &l{i} [{refs}]")
    return "\n".join(lines)


def hostile_documents() -> list[tuple[str, bytes]]:
    """Whole hostile files (not spec-shaped): nesting, aliases, encodings, sizes."""
    spec_head = "flowgraph: 1\nname: h\ninputs: {x: {shape: [2]}}\noutputs: {z: {from: x}}\n"
    docs = {
        "deep-flow-1000": "a: " + _deep(1000, True),
        "deep-flow-100k": "a: " + _deep(100_000, True),
        "deep-block-1000": "a:\n" + _deep(1000, False),
        "deep-map": "a: " + "{a: " * 2000 + "1" + "}" * 2000,
        "recursive-seq": "a: &a [*a]\n",
        "recursive-map": "a: &a {b: *a}\n",
        "recursive-deep": "a: &a [[[[[*a]]]]]\n",
        "bomb-classic": _bomb(10, 10, "seq"),
        "bomb-map": _bomb(10, 10, "map"),
        "bomb-wide": _bomb(1000, 3, "seq"),
        "bomb-merge": "a: &a {x: 1, y: 2}\n" + "\n".join(
            f"b{i}: &b{i} {{<<: [{', '.join(['*a'] + [f'*b{j}' for j in range(i)])}]}}"
            for i in range(30)),
        "bomb-args": spec_head + "args:\n  " + _bomb(10, 9, "seq").replace("\n", "\n  ")
        + "\nnodes: [{id: n, op: actnorm, in: x, params: {scale: \"${l8}\"}}]\n",
        "bomb-nodes": spec_head.replace("outputs: {z: {from: x}}\n", "") + "t: &t "
        "{id: n, op: actnorm, in: x}\nnodes: &n [*t, *t]\n" + "".join(
            f"k{i}: &n{i} [*n{i - 1 if i else ''}, *n{i - 1 if i else ''}]\n" for i in range(25)
        ) + "outputs: {z: {from: n}}\n",
        "aliases-many": "a: &a 1\nb: [" + ", ".join(["*a"] * 20000) + "]\n",
        "int-5000": "a: " + "9" * 5000,
        "int-4301": "flowgraph: " + "1" * 4301,
        "str-huge": "a: " + "x" * 900_000,
        "two-docs": "a: 1\n---\nb: 2\n",
        "tabs": "a:\n\t- 1\n",
        "control": "a: \x07\x1b",
        "nul": "a: \x00",
        "python-tag": "a: !!python/object/apply:os.system [echo pwned]\n",
        "bad-date": "a: 2001-13-45\n",
        "list-key": "? [a, b]\n: 1\n",
        "map-key": "{{a: 1}: 2}\n",
        "empty": "",
        "only-comment": "# nothing\n",
        "scalar": "42\n",
        "list": "- a\n- b\n",
        "null-doc": "~\n",
        "dup-keys": "a: 1\na: 2\n",
        "undefined-alias": "a: *nope\n",
        "long-line": "a: [" + ", ".join(["1"] * 150_000) + "]\n",
        "many-keys": "\n".join(f"k{i}: {i}" for i in range(60_000)) + "\n",
    }
    out = [(k, v.encode("utf-8", "surrogatepass")) for k, v in docs.items()]
    out += [
        ("latin1", b"flowgraph: 1\nname: caf\xe9\n"),
        ("bytes-ff", b"\xff\xfe\xfd"),
        ("utf16-bom", "flowgraph: 1\nname: a\n".encode("utf-16")),
        ("utf8-bom", b"\xef\xbb\xbfflowgraph: 1\n"),
        ("surrogate", b"a: \xed\xa0\x80\n"),
        ("huge-file", b"a: " + b"x" * 10_000_000),
        ("random-bytes", bytes(random.Random(7).randrange(256) for _ in range(4000))),
    ]
    return out


# -- mutations -----------------------------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,}")
_NUMBER = re.compile(r"(?<![\w.])-?\d+(\.\d+)?(?![\w.])")


def _typo(word: str, rng: random.Random) -> str:
    i = rng.randrange(len(word))
    kind = rng.randrange(4)
    if kind == 0 and len(word) > 1:  # swap two neighbours
        i = min(i, len(word) - 2)
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind == 1:
        return word[:i] + word[i + 1:]
    if kind == 2:
        return word[:i] + rng.choice("abcdefghijklmnopqrstuvwxyz") + word[i:]
    return word[:i] + rng.choice("aeiou") + word[i + 1:]


def _text_mutation(text: str, rng: random.Random) -> tuple[str, str]:
    lines = text.split("\n")
    kind = rng.choice(["drop-line", "dup-line", "swap-lines", "typo", "number", "chars",
                       "truncate", "indent", "snippet", "expr"])
    n = len(lines)
    if kind == "drop-line":
        del lines[rng.randrange(n)]
    elif kind == "dup-line":
        i = rng.randrange(n)
        lines.insert(i, lines[i])
    elif kind == "swap-lines":
        i, j = rng.randrange(n), rng.randrange(n)
        lines[i], lines[j] = lines[j], lines[i]
    elif kind == "typo":
        words = list(_WORD.finditer(text))
        m = rng.choice(words)
        return kind, text[: m.start()] + _typo(m.group(), rng) + text[m.end():]
    elif kind == "number":
        nums = list(_NUMBER.finditer(text))
        if nums:
            m = rng.choice(nums)
            return kind, text[: m.start()] + rng.choice(HOSTILE_SCALARS) + text[m.end():]
    elif kind == "chars":
        pos = rng.randrange(len(text) + 1)
        junk = "".join(rng.choice(["{", "}", "[", "]", ":", "-", "&a ", "*a", "${", "}", "'",
                                   '"', "\t", "\\", "#", "!", "|", ">", "%", "@", "`", "\u00e9",
                                   "\udcff", "\x00", " ", "\n"]) for _ in range(rng.randint(1, 4)))
        return kind, text[:pos] + junk + text[pos:]
    elif kind == "truncate":
        return kind, text[: rng.randrange(len(text) + 1)]
    elif kind == "indent":
        i = rng.randrange(n)
        lines[i] = (" " * rng.choice([1, 2, 4]) + lines[i]) if rng.random() < 0.5 else \
            lines[i].lstrip()
    elif kind == "snippet":
        _, doc = rng.choice(hostile_documents()[:20])
        snippet = doc.decode("utf-8", "surrogatepass")[:20_000]
        lines.insert(rng.randrange(n + 1), snippet.replace("\n", "\n" + " " * rng.choice([0, 2])))
    elif kind == "expr":
        strings = list(re.finditer(r"\$\{[^}]*\}", text))
        expr = "${" + rng.choice(HOSTILE_EXPRS) + "}"
        if strings:
            m = rng.choice(strings)
            return kind, text[: m.start()] + expr + text[m.end():]
        words = list(_NUMBER.finditer(text))
        if words:
            m = rng.choice(words)
            return kind, text[: m.start()] + f'"{expr}"' + text[m.end():]
    return kind, "\n".join(lines)


def _paths(root: Any, limit: int = 5000) -> list[tuple]:
    """Key paths of a loaded document, breadth first, at most `limit` (mutants can be bombs)."""
    out: list[tuple] = []
    todo = [((), root)]
    while todo and len(out) < limit:
        path, node = todo.pop(0)
        out.append(path)
        if len(path) < 40 and isinstance(node, dict):
            todo += [(path + (k,), v) for k, v in node.items()]
        elif len(path) < 40 and isinstance(node, list):
            todo += [(path + (i,), v) for i, v in enumerate(node)]
    return out


def _get(node: Any, path: tuple) -> Any:
    for p in path:
        node = node[p]
    return node


def _hostile_value(rng: random.Random) -> Any:
    kind = rng.randrange(6)
    if kind == 0:
        return "${" + rng.choice(HOSTILE_EXPRS) + "}"
    if kind == 1:
        return yaml.safe_load(rng.choice(HOSTILE_SCALARS[:12] + HOSTILE_SCALARS[19:26]))
    if kind == 2:
        return rng.choice([10**8, 2**63, -2**63, 10**30, 1e308, float("inf"), float("nan"),
                           -1, 0, 3, 1.5, True, None, "", "x", [], {}, [0] * 5, {"k": 1}])
    if kind == 3:
        return rng.choice(REPEATS)
    if kind == 4:
        return {"kind": rng.choice(["mlp", "glow", "dense", "nosuch"]), "hidden": rng.choice(
            [[8], [-1], [10**9], "${[8] * 1000}"])}
    return rng.choice(["${earlier}", "${history}", "${prev}", "${input}", "x:out", "a.b:c",
                       "${[prev, prev]}", "${i}", "${count}"])


def _tree_mutation(data: dict, rng: random.Random) -> tuple[str, dict, list[str]]:
    kind = rng.choice(["set-leaf", "delete-key", "rename-key", "add-key", "repeat", "when",
                       "extends", "override", "args", "wrap"])
    paths = [p for p in _paths(data) if p]
    overrides: list[str] = []
    path = rng.choice(paths)
    parent, key = _get(data, path[:-1]), path[-1]
    if kind == "set-leaf":
        parent[key] = _hostile_value(rng)
    elif kind == "delete-key":
        del parent[key]
    elif kind == "rename-key" and isinstance(parent, dict) and isinstance(key, str):
        parent[_typo(key, rng)] = parent.pop(key)
    elif kind == "add-key" and isinstance(parent, dict) and isinstance(key, str):
        parent[_typo(key, rng)] = _hostile_value(rng)
    elif kind in ("repeat", "when"):
        entries = [p for p in paths if len(p) >= 2 and p[-2] == "nodes" and isinstance(
            _get(data, p), dict)]
        if entries:
            entry = _get(data, rng.choice(entries))
            if kind == "repeat":
                entry["repeat"] = rng.choice(REPEATS)
                if rng.random() < 0.3 and "body" in entry:
                    for sub in entry["body"]:
                        if isinstance(sub, dict):
                            sub["repeat"] = rng.choice([10**4, 1000, 100])
            else:
                entry["when"] = rng.choice([False, "${i > 0}", "${nosuch}", "${[]}", 0, "x"])
    elif kind == "extends":
        data["extends"] = rng.choice(HOSTILE_PATHS)
    elif kind == "override":
        args = list(data.get("args") or {}) or ["size"]
        name = rng.choice(args)
        name = _typo(name, rng) if rng.random() < 0.5 else name
        value = rng.choice(HOSTILE_SCALARS + ["[" * 100 + "]" * 100, "{a: " * 80 + "1" + "}" * 80,
                                              "${10**8}", "'${earlier}'", "=", ""])
        overrides.append(f"{name}={value}")
    elif kind == "args":
        data["args"] = rng.choice([[1, 2], "x", 5, None, {"grwoth": 10}, {"a": "${b}", "b": "${a}"},
                                   {f"a{i}": f"${{[a{i - 1}]}}" if i else 1 for i in range(120)}])
    elif kind == "wrap":
        parent[key] = [parent[key]] if rng.random() < 0.5 else {"x": parent[key]}
    return kind, data, overrides


def make_case(seed: int) -> Case:
    """Mutant number `seed` (deterministic): a shipped spec, mutated once to three times."""
    rng = random.Random(seed)
    specs = shipped_specs()
    rel = rng.choice(specs)
    text = (ROOT / "specs" / rel).read_text()
    kinds: list[str] = []
    overrides: list[str] = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        if rng.random() < 0.5:
            try:  # the harness's own reading of a mutant may fail in any way
                data = yaml.load(text, Loader=_LOADER)
            except Exception:  # noqa: BLE001
                data = None
            if isinstance(data, dict) and data:
                try:
                    kind, data, more = _tree_mutation(data, rng)
                except Exception:  # noqa: BLE001 - a mutant too odd to mutate further
                    kinds.append("tree-skipped")
                    continue
                overrides += more
                with contextlib.suppress(Exception):  # keep the text if it cannot be dumped
                    text = yaml.dump(data, Dumper=_DUMPER, sort_keys=False, allow_unicode=True)
                kinds.append(kind)
                continue
        kind, text = _text_mutation(text, rng)
        kinds.append(kind)
    rel_dir = str(Path(rel).parent) if str(Path(rel).parent) != "." else ""
    return Case(f"{rel}:{'+'.join(kinds)}#{seed}", rel_dir,
                text.encode("utf-8", "surrogatepass"), overrides)


def hostile_cases() -> list[Case]:
    """The fixed list: hostile documents, plus spec-shaped cases from the fuzzer's report."""
    cases = [Case(f"hostile:{name}", "", data) for name, data in hostile_documents()]
    head = ("flowgraph: 1\nname: h\nargs: {n: 3}\ninputs: {x: {shape: [4]}}\n"
            "outputs: {z: {from: r}}\n")
    node = "{id: r, op: actnorm, in: x}"
    shaped = {
        "repeat-1e8": "nodes:\n  - {id: r, repeat: 100000000, op: actnorm, in: x}\n",
        "repeat-nested": "nodes:\n  - id: r\n    repeat: 10000\n    in: x\n    body:\n"
                         "      - {id: a, repeat: 10000, op: actnorm, in: \"${input}\"}\n",
        "repeat-nested3": "nodes:\n  - id: r\n    repeat: 1000\n    in: x\n    body:\n"
                          "      - id: g\n        repeat: 1000\n        in: \"${input}\"\n"
                          "        body: [{id: a, repeat: 1000, op: actnorm, in: \"${input}\"}]\n",
        "repeat-earlier": "nodes:\n  - {id: r, repeat: 20000, op: actnorm, in: x,"
                          " params: {}, condition: \"${earlier}\"}\n",
        "args-list": "nodes: [" + node + "]\n",
        "skipped-chain": "nodes:\n" + "".join(
            f"  - {{id: e{i}, op: actnorm, in: e{i - 1}, when: false}}\n" if i else
            "  - {id: e0, op: actnorm, in: x}\n" for i in range(300))
        + "  - {id: r, op: actnorm, in: e299}\n",
        "reverse-chain": "nodes:\n  - {id: r, op: actnorm, in: g0}\n" + "".join(
            f"  - {{id: g{i}, in: g{i + 1}, body: [{{id: a, op: actnorm, in: \"${{input}}\"}}]}}\n"
            for i in range(300)) + "  - {id: g300, op: actnorm, in: x}\n",
        "template-fanout": "templates:\n" + "".join(
            f"  t{i}:\n    nodes: [" + ", ".join(f"{{id: u{j}, use: t{i + 1}, in: x}}"
                                                   for j in range(10)) + "]\n"
            for i in range(8)) + "  t8: {nodes: [{id: a, op: actnorm, in: x}]}\n"
        "nodes: [{id: r, use: t0, in: x}]\n",
        "template-self": "templates:\n  t: {nodes: [{id: a, use: t, in: x}]}\n"
                         "nodes: [{id: r, use: t, in: x}]\n",
        "args-chain": "nodes: [" + node + "]\n",
        "expr-deep-unary": "nodes: [{id: r, op: actnorm, in: x, when: \"${" + "-" * 5000
                           + "1}\"}]\n",
        "expr-repeat-str": "nodes: [{id: r, op: actnorm, in: x, when: \"${'a' * 10**9}\"}]\n",
        "expr-float": "nodes: [{id: r, op: actnorm, in: x, when: \"${2.0 ** 10000}\"}]\n",
        "expr-int-inf": "nodes: [{id: r, op: actnorm, in: x, when: \"${int(1e308 * 10)}\"}]\n",
        "expr-comp": "nodes: [{id: r, op: actnorm, in: x, when: \"${[[i for i in range(100000)]"
                     " for j in range(100000)]}\"}]\n",
        "expr-huge-int-shape": "nodes: [" + node + "]\n",
        "node-key-typo": "nodes: [{id: r, op: actnorm, in: x, conditon: x}]\n",
        "param-typo": "nodes: [{id: r, op: actnorm, in: x, params: {sacle: 1}}]\n",
    }
    for name, body in shaped.items():
        text = head + body
        if name == "args-list":
            text = text.replace("args: {n: 3}", "args: [1, 2]")
        if name == "args-chain":
            text = text.replace("args: {n: 3}", "args:\n" + "".join(
                f"  a{i}: \"${{[a{i - 1}]}}\"\n" if i else "  a0: 1\n" for i in range(200)))
        if name == "expr-huge-int-shape":
            text = text.replace("shape: [4]", "shape: [\"${10**17}\", \"${10**17}\", 99]")
        cases.append(Case(f"hostile:{name}", "", text.encode()))
    base = "extends: glow.yaml\nname: child\n"
    for p in HOSTILE_PATHS:
        cases.append(Case(f"hostile:extends:{p[:20]!r}", "",
                          (f"extends: {p!r}\n" if "\0" not in p else 'extends: "a\\0b"\n').encode()))
    cases.append(Case("hostile:extends-args-typo", "", (base + "args: {grwoth: 10}\n").encode()))
    for value in ["[" * 200 + "]" * 200, "9" * 5000, "{a: " * 100 + "1" + "}" * 100, "\x07",
                  "*a", "&a [*a]", "1e999999", "'" + "x" * 2_000_000 + "'"]:
        cases.append(Case(f"hostile:set={value[:12]!r}", "", (ROOT / "specs" / "glow.yaml")
                          .read_bytes(), [f"steps={value}"]))
    cases.append(Case("hostile:set-typo", "", (ROOT / "specs" / "glow.yaml").read_bytes(),
                      ["setps=2"]))
    return cases


# -- running one case ------------------------------------------------------------------------------


def prepare_tree(tmp: Path) -> Path:
    """A private copy of specs/ (plus a FIFO and a large file for `extends` to point at)."""
    specs = tmp / "specs"
    if not specs.exists():
        shutil.copytree(ROOT / "specs", specs)
        for d in SPEC_DIRS:
            import os

            fifo = specs / d / "fifo"
            if hasattr(os, "mkfifo") and not fifo.exists():
                os.mkfifo(fifo)
            (specs / d / "big.yaml").write_bytes(b"a: " + b"x" * 3_000_000)
    return specs


def write_case(case: Case, specs: Path) -> Path:
    path = specs / case.rel_dir / "self.yaml"  # `extends: self.yaml` is a loop
    path.write_bytes(case.data)
    return path


@dataclass
class Outcome:
    kind: str
    seconds: float
    detail: str = ""
    params: int | None = None


def _located(issue: Any) -> bool:
    loc = issue.location
    return loc is not None and loc.file is not None


def run_case(case: Case, specs: Path, build: bool = True) -> Outcome:
    """Read, check and (when tiny) build and run one case; never raises."""
    from flowgraph.cli.common import CliUsageError, parse_overrides
    from flowgraph.errors import SpecError
    from flowgraph.graph import check_spec
    from flowgraph.spec.io import read_spec

    path = write_case(case, specs)
    t0 = time.process_time()
    params = None
    try:
        try:
            spec, smap = read_spec(path, parse_overrides(case.overrides))
            analysis, issues = check_spec(spec, smap)
            if issues:
                raise SpecError(issues)
        except CliUsageError as e:  # a malformed --set item: exit status 2, names the option
            return Outcome("usage-error", time.process_time() - t0, str(e)[:300])
        except SpecError as e:
            dt = time.process_time() - t0
            if not any(_located(i) for i in e.issues):
                return Outcome("unlocated", dt, str(e)[:2000])
            return Outcome("slow" if dt > TIME_BUDGET_S else "spec-error", dt,
                           str(e.issues[0])[:300])
        params = analysis.totals.params
        if build and params < TINY_PARAMS:
            round_trip(analysis)
    except Exception:  # noqa: BLE001 - classifying every failure is the point
        return Outcome("unhandled", time.process_time() - t0, traceback.format_exc()[-4000:],
                       params)
    dt = time.process_time() - t0
    return Outcome("slow" if dt > TIME_BUDGET_S else "compiled", dt, "", params)


def round_trip(analysis: Any) -> None:
    """Build a tiny compiled spec and run it both ways (no exception is caught here)."""
    import torch

    from flowgraph.compile import build_flow

    flow = build_flow(analysis, seed=0)
    g = analysis.graph
    data = g.data_input().out_types["out"]
    gen = torch.Generator().manual_seed(0)
    if data.bits:
        x = torch.randint(0, 2 ** data.bits, (3, *data.shape), generator=gen).float()
    else:
        x = torch.randn(3, *data.shape, generator=gen)
    ctx = g.context_input()
    context = (torch.randn(3, *ctx.out_types["out"].shape, generator=gen)
               if ctx is not None else None)
    with torch.no_grad():
        z, logdet = flow(x, context)
        back = flow.inverse(z, context)
        sampled = flow.sample(3, 0.5, context)  # the generation path of the same schedule
    assert back.shape == x.shape == sampled.shape, (back.shape, x.shape, sampled.shape)
    assert torch.isfinite(logdet).all() and torch.isfinite(z).all()
    if not data.bits and flow.noise_dim == 0:
        assert torch.allclose(back, x, atol=1e-3, rtol=1e-3), (back - x).abs().max()


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Files under `root` with size and mtime: a case must not create or change any."""
    out = {}
    for p in root.rglob("*"):
        if p.name == "self.yaml" or not p.is_file():
            continue
        st = p.stat()
        out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out
