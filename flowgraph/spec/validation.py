r"""pydantic `ValidationError` -> located `Issue`s, with "did you mean" for unknown keys.

Used for the spec models here and for op parameters in `flowgraph.graph.ir`: an unknown key
(pydantic's ``extra_forbidden``) is reported as ``unknown key 'grwoth'`` with the closest
field names of the model at that place as the hint.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from flowgraph.errors import Issue, Location, close_matches, suggest

__all__ = ["clip", "model_keys", "validation_issues"]


def clip(text: str, n: int = 80) -> str:
    """`text` cut to `n` characters: error messages never echo a huge value."""
    return text if len(text) <= n else text[: n - 3] + "..."


def _members(tp: Any) -> list[Any]:
    """The alternatives of a (possibly Annotated, Optional or Union) type."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _members(typing.get_args(tp)[0])
    if origin is typing.Union or origin is types.UnionType:
        return [m for a in typing.get_args(tp) for m in _members(a)]
    return [tp]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _field(model: type[BaseModel], key: str) -> Any:
    for name, f in model.model_fields.items():
        if key in (name, f.alias):
            return f
    return None


def _step(types_: list[Any], part: str | int) -> list[Any]:
    out: list[Any] = []
    for tp in types_:
        args, origin = typing.get_args(tp), typing.get_origin(tp)
        if isinstance(part, int) and origin in (list, tuple, set, frozenset) and args:
            out += _members(args[0])
        elif isinstance(part, str) and _is_model(tp) and _field(tp, part) is not None:
            out += _members(_field(tp, part).annotation)
        elif isinstance(part, str) and origin is dict and len(args) == 2:
            out += _members(args[1])
    if out:
        return out
    # a discriminated union puts the tag in the path: keep the members carrying it
    tagged = [tp for tp in types_ if _is_model(tp) and any(
        part in typing.get_args(f.annotation) for f in tp.model_fields.values()
        if typing.get_origin(f.annotation) is typing.Literal)]
    return tagged or types_


def model_keys(model: type[BaseModel] | None, path: tuple) -> list[str]:
    """The keys allowed in the mapping at `path` inside `model` (empty if not a model)."""
    if model is None:
        return []
    types_ = [model]
    for part in path:
        types_ = _step(types_, part)
    keys: list[str] = []
    for tp in types_:
        if _is_model(tp):
            keys += [f.alias or name for name, f in tp.model_fields.items()]
    return sorted(set(keys))


def validation_issues(error: ValidationError, model: type[BaseModel] | None,
                      locate: Callable[[tuple], Location], rule: str = "schema",
                      prefix: tuple = (), node: str | None = None, label: str = "",
                      max_issues: int = 100) -> list[Issue]:
    """One `Issue` per pydantic error; `prefix` is where the validated value sits in the spec.

    `locate` maps a spec path to a `Location` (e.g. `SourceMap.locate`); `label` starts each
    message (an op name, say). At most `max_issues` are kept (plus one saying so).
    """
    issues: list[Issue] = []
    errors = error.errors(include_url=False)
    if len(errors) > max_issues:
        more = len(errors) - max_issues
        errors = errors[:max_issues]
        issues.append(Issue(rule, f"{label + ': ' if label else ''}{more:,} more problems "
                            "like the ones below are not listed", node=node,
                            location=locate(prefix)))
    typos = set()  # `nmae: x` also makes `name` missing: report the typo only
    for err in errors:
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        if err["type"] == "extra_forbidden" and loc:
            for close in close_matches(loc[-1], model_keys(model, loc[:-1]), n=1):
                typos.add(loc[:-1] + (close,))
    for err in errors:
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        if err["type"] == "missing" and loc in typos:
            continue
        where = locate(prefix + loc)
        head = f"{label}: " if label else ""
        if err["type"] == "extra_forbidden" and loc:
            keys = model_keys(model, loc[:-1])
            hint = suggest(loc[-1], keys) or (f"keys here: {', '.join(keys)}" if keys else None)
            issues.append(Issue(rule, f"{head}unknown key {clip(repr(loc[-1]))}", node=node,
                                location=where, hint=hint))
            continue
        found = err.get("input")
        found_s = None if isinstance(found, (dict, list)) else clip(repr(found))
        msg = err["msg"].removeprefix("Value error, ")  # our own validators' messages
        issues.append(Issue(rule, f"{head}{msg}", node=node, location=where, found=found_s))
    return issues
