r"""`SpecLimits`: the one policy bounding the time and memory spent reading a spec.

Every reader of spec input (`flowgraph.spec.io`, the expression evaluator, expansion, `--set`
values) asks `active_limits()` unless it is given a `SpecLimits` explicitly. A refusal is a
located `SpecError` (rule ``limit``) naming the limit and how to raise it. Defaults are far
above any real spec (the shipped ones are < 5 KB and < 1,000 nodes) and far below what would
take seconds or gigabytes. See docs/limits.md.

Raise a limit with, in order of precedence: an explicit ``limits=`` argument, the context
manager `use_limits`, the CLI option ``--limit NAME=VALUE``, or the environment variable
``FLOWGRAPH_SPEC_LIMITS="NAME=VALUE,NAME=VALUE"``.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass

from flowgraph.errors import Issue, Location, SpecError, suggest

__all__ = ["DEFAULT_SPEC_LIMITS", "ENV_VAR", "SpecLimits", "active_limits", "limit_issue",
           "use_limits"]

ENV_VAR = "FLOWGRAPH_SPEC_LIMITS"


@dataclass(frozen=True)
class SpecLimits:
    """Bounds on spec input. Each is checked where the input is produced, never after."""

    max_file_bytes: int = 1_000_000       # one spec file (and a spec text from a checkpoint)
    max_extends: int = 8                  # `extends:` chain length
    max_depth: int = 64                   # YAML nesting, counted through aliases
    max_yaml_nodes: int = 50_000          # YAML values after alias expansion (shipped: < 1,000)
    max_aliases: int = 10_000             # `*alias` uses in one file
    max_int_digits: int = 18              # every integer: |n| < 10**18 (fits int64)
    max_str_len: int = 100_000            # one string, in YAML or computed
    max_seq_len: int = 100_000            # one list computed by an expression
    max_expr_chars: int = 2_000           # source of one `${...}`
    max_expr_nodes: int = 500             # syntax-tree nodes of one `${...}`
    max_expr_depth: int = 32              # syntax-tree nesting of one `${...}`
    max_expr_steps: int = 250_000         # evaluation steps of all `${...}` of a spec (shipped: ~3 per node)
    max_nodes: int = 30_000               # entries created by expansion (shipped: < 600)
    max_issues: int = 200                 # problems reported before giving up

    def replace(self, **changes: int) -> SpecLimits:
        """A copy with some limits changed; unknown names are a `SpecError` with a suggestion."""
        names = [f.name for f in dataclasses.fields(self)]
        issues = []
        for key, value in changes.items():
            if key not in names:
                hint = suggest(key, names) or f"limits: {', '.join(names)}"
                issues.append(Issue("limit", f"unknown limit {key!r}", hint=hint))
            elif not isinstance(value, int) or isinstance(value, bool) or value < 1:
                issues.append(Issue("limit", f"limit {key} is a positive integer",
                                    found=repr(value)))
        if issues:
            raise SpecError(issues)
        return dataclasses.replace(self, **changes)

    def parse(self, text: str, source: str = ENV_VAR) -> SpecLimits:
        """``"NAME=VALUE,NAME=VALUE"`` (as in the environment variable) applied to a copy."""
        changes: dict[str, int] = {}
        for item in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = item.partition("=")
            try:
                changes[key.strip()] = int(value.replace("_", "")) if len(value) < 20 else -1
            except ValueError:
                changes[key.strip()] = -1
            if not sep:
                raise SpecError([Issue("limit", f"{source} expects NAME=VALUE items",
                                       found=repr(item))])
        try:
            return self.replace(**changes)
        except SpecError as e:
            raise SpecError([dataclasses.replace(i, message=f"{source}: {i.message}")
                             for i in e.issues]) from None


DEFAULT_SPEC_LIMITS = SpecLimits()

_ACTIVE: contextvars.ContextVar[SpecLimits | None] = contextvars.ContextVar(
    "flowgraph_spec_limits", default=None)


def active_limits() -> SpecLimits:
    """The limits in force: `use_limits`, else the environment variable, else the defaults."""
    limits = _ACTIVE.get()
    if limits is not None:
        return limits
    env = os.environ.get(ENV_VAR)
    return DEFAULT_SPEC_LIMITS.parse(env) if env else DEFAULT_SPEC_LIMITS


@contextlib.contextmanager
def use_limits(limits: SpecLimits) -> Iterator[SpecLimits]:
    """Make `limits` the default for every spec read or expanded inside the block."""
    token = _ACTIVE.set(limits)
    try:
        yield limits
    finally:
        _ACTIVE.reset(token)


def limit_issue(name: str, what: str, location: Location | None, found: str | None = None,
                limits: SpecLimits | None = None) -> Issue:
    """The refusal of one limit: what exceeded it, the limit, and how to raise it."""
    value = getattr(limits or active_limits(), name)
    return Issue("limit", f"{what}; the limit is {value:,} ({name})", location=location,
                 found=found, hint=f"if this is intended, raise it: --limit {name}=N, or "
                 f"{ENV_VAR}={name}=N, or SpecLimits(...).replace({name}=N)")
