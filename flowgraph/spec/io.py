r"""Reading and writing spec files: YAML (safe) -> dict -> `FlowSpec`, with YAML line numbers.

`read_spec` returns the spec together with a `SourceMap` (key path -> file and line) so that
every later check can point at the YAML line. `extends: other.yaml` merges a base spec: `args`
and `templates` are merged key by key, every other key replaces the base's.

Every way in (`read_spec` for files, `parse_spec_text` for text from a checkpoint or a
string, `parse_value_text` for a `--set` value) goes through the same bounded reader
(`flowgraph.spec.yamlread`) under the active `SpecLimits`, so hostile input is refused with a
located `SpecError` in bounded time and memory.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from flowgraph.errors import Issue, Location, SpecError, suggest
from flowgraph.spec.limits import SpecLimits, active_limits, limit_issue
from flowgraph.spec.models import FlowSpec
from flowgraph.spec.validation import clip, validation_issues
from flowgraph.spec.yamlread import compose_text, construct, decode_text, read_file_bytes

__all__ = ["SourceMap", "apply_overrides", "dump_spec", "load_spec", "parse_spec",
           "parse_spec_text", "parse_value_text", "read_spec"]

_MERGED_KEYS = ("args", "templates")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
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


def _walk(root: yaml.Node, file: str, out: SourceMap, issues: list[Issue]) -> None:
    """Lines of every key path; iterative (the composer bounded depth and expanded size)."""
    todo: list[tuple[yaml.Node, tuple]] = [(root, ())]
    while todo:
        node, path = todo.pop()
        out.lines.setdefault(path, (file, node.start_mark.line + 1))
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                line = key.start_mark.line + 1
                if not isinstance(key, yaml.ScalarNode):
                    issues.append(Issue("yaml", "a mapping key is a plain name, not a list or "
                                        "mapping", location=Location(path, file, line)))
                    continue
                k = key.value
                if k in seen:
                    issues.append(Issue("yaml", f"duplicate key {clip(repr(k))}",
                                        location=Location(path + (k,), file, line)))
                seen.add(k)
                out.lines[path + (k,)] = (file, line)
                todo.append((value, path + (k,)))
        elif isinstance(node, yaml.SequenceNode):
            todo += [(item, path + (i,)) for i, item in enumerate(node.value)]


def _load_yaml(text: str, file: str, limits: SpecLimits) -> tuple[Any, SourceMap, yaml.Node]:
    loader, root = compose_text(text, file, limits)
    smap = SourceMap(file=file)
    issues: list[Issue] = []
    if root is not None:
        _walk(root, file, smap, issues)
    if issues:
        loader.dispose()
        raise SpecError(issues)
    return construct(loader, root, text, file, limits), smap, root


def _load_mapping(text: str, file: str, limits: SpecLimits) -> tuple[dict, SourceMap]:
    data, smap, _ = _load_yaml(text, file, limits)
    if not isinstance(data, Mapping):
        raise SpecError([Issue("schema", "a spec file is a YAML mapping",
                               location=Location((), file, 1), found=type(data).__name__)])
    return dict(data), smap


def _check_text(text: str, name: str, limits: SpecLimits) -> str:
    if len(text) > limits.max_file_bytes:
        raise SpecError([limit_issue("max_file_bytes", "the spec text is larger than allowed",
                                     Location((), name), limits=limits)])
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as e:
        line = text[: e.start].count("\n") + 1
        raise SpecError([Issue("encoding", "a spec is UTF-8 text",
                               location=Location((), name, line),
                               found=f"an unpaired surrogate at offset {e.start}")]) from None
    if len(data) > limits.max_file_bytes:
        raise SpecError([limit_issue("max_file_bytes", "the spec text is larger than allowed",
                                     Location((), name), limits=limits)])
    return text.removeprefix("\ufeff")


def _names_used(value: Any, out: set[str]) -> None:
    """Identifiers appearing inside `${...}` strings anywhere in `value` (iterative)."""
    todo = [value]
    seen: set[int] = set()
    while todo:
        v = todo.pop()
        if isinstance(v, str):
            if "${" in v:
                out.update(_NAME.findall(v))
        elif isinstance(v, (list, tuple, Mapping)) and id(v) not in seen:
            seen.add(id(v))  # aliases share objects: visit each once
            todo += list(v.values()) + list(v.keys()) if isinstance(v, Mapping) else list(v)


def _merge(base: dict, child: dict, smap: SourceMap) -> dict:
    out = dict(base)
    for k, v in child.items():
        if k in _MERGED_KEYS and isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    base_args, child_args = base.get("args") or {}, child.get("args")
    if isinstance(base_args, Mapping) and isinstance(child_args, Mapping):
        new = [k for k in child_args if k not in base_args]
        if new:
            used: set[str] = set()
            _names_used({k: v for k, v in out.items() if k != "args"}, used)
            _names_used(list(out["args"].values()), used)
            issues = [Issue("unknown-arg", f"the base spec has no argument {clip(repr(k))} "
                            "and nothing here uses it", location=smap.locate(("args", k)),
                            hint=suggest(k, base_args) or
                            f"arguments: {', '.join(sorted(map(str, base_args))) or '(none)'}")
                      for k in new if k not in used]
            if issues:
                raise SpecError(issues)
    return out


def _read_raw(path: Path, limits: SpecLimits, chain: tuple[str, ...] = ()
              ) -> tuple[dict, SourceMap]:
    file = str(path)
    text = decode_text(read_file_bytes(file, limits), file)
    data, smap = _load_mapping(text, file, limits)
    parent = data.pop("extends", None)
    if parent is None:
        return data, smap
    where = smap.locate(("extends",))
    if not isinstance(parent, str) or not parent:
        raise SpecError([Issue("extends", "'extends' names one spec file", location=where,
                               found=clip(repr(parent)))])
    if len(chain) >= limits.max_extends:
        raise SpecError([limit_issue("max_extends", "'extends' chains more files than allowed",
                                     where, limits=limits)])
    try:
        target = (path.parent / parent).resolve()
    except (OSError, ValueError, RuntimeError) as e:
        raise SpecError([Issue("extends", f"cannot resolve {clip(repr(parent))}: {e}",
                               location=where)]) from None
    if str(target) in chain + (str(path.resolve()),):
        raise SpecError([Issue("extends", "'extends' loops back to a file that extends it",
                               location=where, found=clip(repr(parent)))])
    try:
        base, base_map = _read_raw(target, limits, chain + (str(path.resolve()),))
    except SpecError as e:  # say which `extends:` led there
        raise SpecError([dataclasses.replace(i, context=i.context + (f"extended from {where}",))
                         for i in e.issues]) from None
    smap.update(base_map, only_missing=True)
    return _merge(base, data, smap), smap


def _validate(data: Mapping, smap: SourceMap) -> FlowSpec:
    try:
        return FlowSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(validation_issues(e, FlowSpec, smap.locate)) from None


def apply_overrides(data: dict, overrides: Mapping[str, Any] | None, smap: SourceMap) -> dict:
    """`--set` values replace spec arguments; every target must be an existing argument."""
    if not overrides:
        return data
    args = data.get("args") or {}
    if not isinstance(args, Mapping):
        raise SpecError([Issue("schema", "'args' is a mapping of argument names to values",
                               location=smap.locate(("args",)), found=type(args).__name__)])
    unknown = [k for k in overrides if k not in args]
    if unknown:
        names = sorted(map(str, args))
        raise SpecError([Issue("override", f"--set {clip(str(k))}: the spec has no argument "
                               f"{clip(repr(k))}", location=smap.locate(("args",)),
                               hint=suggest(k, names) or
                               f"arguments: {', '.join(names) or '(none)'}")
                         for k in unknown])
    return {**data, "args": {**args, **overrides}}


def read_spec(path: str | Path, overrides: Mapping[str, Any] | None = None, *,
              limits: SpecLimits | None = None) -> tuple[FlowSpec, SourceMap]:
    """Load a spec file (resolving `extends`, applying `--set` overrides to its `args`)."""
    limits = limits or active_limits()
    data, smap = _read_raw(Path(path), limits)
    return _validate(apply_overrides(data, overrides, smap), smap), smap


def load_spec(path: str | Path, overrides: Mapping[str, Any] | None = None, *,
              limits: SpecLimits | None = None) -> FlowSpec:
    return read_spec(path, overrides, limits=limits)[0]


def parse_spec_text(text: str, name: str = "<spec>", *, limits: SpecLimits | None = None
                    ) -> tuple[FlowSpec, SourceMap]:
    """Parse spec YAML from a string (a checkpoint's spec text, say); no `extends`.

    The same bounded reader and limits as `read_spec`; `name` is used in locations.
    """
    limits = limits or active_limits()
    if not isinstance(text, str):
        raise SpecError([Issue("file", "spec text must be a string", location=Location(
            (), name), found=type(text).__name__)])
    data, smap = _load_mapping(_check_text(text, name, limits), name, limits)
    if "extends" in data:
        raise SpecError([Issue("extends", "'extends' needs a spec file, not a string",
                               location=smap.locate(("extends",)))])
    return _validate(data, smap), smap


parse_spec = parse_spec_text  # the historical name


def parse_value_text(text: str, name: str = "<value>", *, limits: SpecLimits | None = None
                     ) -> Any:
    """One YAML value (a `--set` value, say) under the same limits as a spec file."""
    limits = limits or active_limits()
    data, _, _ = _load_yaml(_check_text(text, name, limits), name, limits)
    return data


def dump_spec(spec: FlowSpec) -> str:
    """YAML text of a spec; ``load(dump(spec)) == spec``."""
    data = spec.model_dump(by_alias=True, exclude_defaults=True, mode="json")
    data = {"flowgraph": spec.flowgraph, **data}
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
