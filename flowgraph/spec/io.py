r"""Reading and writing spec files: YAML (safe) -> dict -> `FlowSpec`, with YAML line numbers.

`read_spec` returns the spec together with a `SourceMap` (key path -> file and line) so that
every later check can point at the YAML line. `extends: other.yaml` merges a base spec: `args`
and `templates` are merged key by key, every other key replaces the base's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from flowgraph.errors import Issue, Location, SpecError
from flowgraph.spec.models import FlowSpec

__all__ = ["SourceMap", "dump_spec", "load_spec", "parse_spec", "read_spec"]

_MERGED_KEYS = ("args", "templates")
_MAX_EXTENDS = 8


@dataclass
class SourceMap:
    """Key path (as in pydantic error locations) -> (file, line)."""

    lines: dict[tuple, tuple[str, int]] = field(default_factory=dict)
    file: str | None = None

    def locate(self, path: tuple) -> Location:
        path = tuple(path)
        for cut in range(len(path), -1, -1):
            hit = self.lines.get(path[:cut])
            if hit is not None:
                return Location(path=path, file=hit[0], line=hit[1])
        return Location(path=path, file=self.file)

    def update(self, other: SourceMap, only_missing: bool) -> None:
        for k, v in other.lines.items():
            if not only_missing or k not in self.lines:
                self.lines[k] = v


def _walk(node: yaml.Node, path: tuple, file: str, out: SourceMap, issues: list[Issue]) -> None:
    out.lines.setdefault(path, (file, node.start_mark.line + 1))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            k = key.value
            if k in seen:
                issues.append(Issue("yaml", f"duplicate key {k!r}", location=Location(
                    path + (k,), file, key.start_mark.line + 1)))
            seen.add(k)
            out.lines[path + (k,)] = (file, key.start_mark.line + 1)
            _walk(value, path + (k,), file, out, issues)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, path + (i,), file, out, issues)


def _load_yaml(text: str, file: str) -> tuple[Any, SourceMap]:
    smap = SourceMap(file=file)
    issues: list[Issue] = []
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(e, "problem", None) or str(e)
        raise SpecError([Issue("yaml", f"not valid YAML: {problem}",
                               location=Location((), file, line))]) from None
    if root is not None:
        _walk(root, (), file, smap, issues)
    if issues:
        raise SpecError(issues)
    if not isinstance(data, Mapping):
        raise SpecError([Issue("schema", "a spec file is a YAML mapping",
                               location=Location((), file, 1), found=type(data).__name__)])
    return dict(data), smap


def _merge(base: dict, child: dict) -> dict:
    out = dict(base)
    for k, v in child.items():
        if k in _MERGED_KEYS and isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def _read_raw(path: Path, depth: int = 0) -> tuple[dict, SourceMap]:
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError([Issue("file", f"cannot read spec file: {e.strerror}",
                               location=Location((), file))]) from None
    data, smap = _load_yaml(text, file)
    parent = data.pop("extends", None)
    if parent is None:
        return data, smap
    if depth >= _MAX_EXTENDS or not isinstance(parent, str):
        raise SpecError([Issue("extends", "'extends' must name one spec file, with at most "
                               f"{_MAX_EXTENDS} levels", location=smap.locate(("extends",)),
                               found=repr(parent))])
    base, base_map = _read_raw((path.parent / parent).resolve(), depth + 1)
    smap.update(base_map, only_missing=True)
    return _merge(base, data), smap


def _validate(data: Mapping, smap: SourceMap) -> FlowSpec:
    try:
        return FlowSpec.model_validate(data)
    except ValidationError as e:
        issues = []
        for err in e.errors(include_url=False):
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
            found = err.get("input")
            found_s = None if isinstance(found, (dict, list)) else repr(found)
            issues.append(Issue("schema", err["msg"], location=smap.locate(loc), found=found_s))
        raise SpecError(issues) from None


def apply_overrides(data: dict, overrides: Mapping[str, Any] | None, smap: SourceMap) -> dict:
    if not overrides:
        return data
    args = dict(data.get("args") or {})
    unknown = [k for k in overrides if k not in args]
    if unknown:
        raise SpecError([Issue("override", f"--set {k}: the spec has no argument {k!r}",
                               location=smap.locate(("args",)),
                               hint=f"arguments: {', '.join(sorted(args)) or '(none)'}")
                         for k in unknown])
    args.update(overrides)
    return {**data, "args": args}


def read_spec(path: str | Path, overrides: Mapping[str, Any] | None = None
              ) -> tuple[FlowSpec, SourceMap]:
    """Load a spec file (resolving `extends`, applying `--set` overrides to its `args`)."""
    data, smap = _read_raw(Path(path))
    return _validate(apply_overrides(data, overrides, smap), smap), smap


def load_spec(path: str | Path, overrides: Mapping[str, Any] | None = None) -> FlowSpec:
    return read_spec(path, overrides)[0]


def parse_spec(text: str, name: str = "<spec>") -> tuple[FlowSpec, SourceMap]:
    """Parse spec YAML from a string (no `extends`)."""
    data, smap = _load_yaml(text, name)
    if "extends" in data:
        raise SpecError([Issue("extends", "'extends' needs a spec file, not a string",
                               location=smap.locate(("extends",)))])
    return _validate(data, smap), smap


def dump_spec(spec: FlowSpec) -> str:
    """YAML text of a spec; ``load(dump(spec)) == spec``."""
    data = spec.model_dump(by_alias=True, exclude_defaults=True, mode="json")
    data = {"flowgraph": spec.flowgraph, **data}
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
