r"""Errors and the `Issue` record that every spec and graph check reports."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["FlowgraphError", "Issue", "Location", "ShapeError", "SpecError", "close_matches",
           "suggest"]


def close_matches(name: object, candidates: Iterable[object], n: int = 3) -> list[str]:
    """Candidates that look like `name` (a typo), best first."""
    if not isinstance(name, str):
        return []
    return difflib.get_close_matches(name, [str(c) for c in candidates], n=n, cutoff=0.6)


def suggest(name: object, candidates: Iterable[object]) -> str | None:
    """``"did you mean 'growth'?"`` for a misspelt `name`, or None when nothing is close."""
    close = close_matches(name, candidates)
    return f"did you mean {' or '.join(map(repr, close))}?" if close else None


@dataclass(frozen=True)
class Location:
    """Where something sits in the YAML: a key path, and the file line when known."""

    path: tuple[str | int, ...] = ()
    file: str | None = None
    line: int | None = None

    def path_str(self) -> str:
        out = ""
        for part in self.path:
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
        return out

    def __str__(self) -> str:
        where = f"{self.file or '<spec>'}:{self.line}" if self.line else (self.file or "<spec>")
        return f"{where} ({self.path_str()})" if self.path else where


@dataclass(frozen=True)
class Issue:
    """One problem found in a spec: the rule broken, where, and what was found."""

    rule: str
    message: str
    node: str | None = None
    location: Location | None = None
    found: str | None = None
    hint: str | None = None
    context: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        head = str(self.location) if self.location else "<spec>"
        who = f" node {self.node!r}:" if self.node else ""
        text = f"{head}: [{self.rule}]{who} {self.message}"
        if self.found is not None:
            text += f" Got {self.found}."
        for line in self.context:
            text += f"\n    {line}"
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text

    def to_dict(self) -> dict:
        loc = self.location or Location()
        return {
            "rule": self.rule,
            "message": self.message,
            "node": self.node,
            "file": loc.file,
            "line": loc.line,
            "path": loc.path_str() or None,
            "found": self.found,
            "hint": self.hint,
            "context": list(self.context),
        }


class FlowgraphError(Exception):
    """Base class of every error flowgraph raises on purpose."""


class SpecError(FlowgraphError):
    """A spec is invalid; carries every issue found, not only the first."""

    def __init__(self, issues: list[Issue]):
        self.issues = list(issues)
        super().__init__(self._render())

    def _render(self) -> str:
        n = len(self.issues)
        lines = [f"spec is invalid: {n} problem{'s' if n != 1 else ''}"]
        lines += [str(i) for i in self.issues]
        return "\n".join(lines)


class ShapeError(FlowgraphError):
    """Raised by an op's shape rule; the graph pass turns it into an Issue."""

    def __init__(self, message: str, found: str | None = None, hint: str | None = None,
                 rule: str = "shape"):
        self.message, self.found, self.hint, self.rule = message, found, hint, rule
        super().__init__(message if found is None else f"{message} Got {found}.")
