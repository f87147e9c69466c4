r"""State-dict mappings: declarative rules from flowgraph keys to another implementation's keys.

A mapping file (``specs/<name>.official.yaml``, next to the spec it serves) holds:

- ``requires``: spec arguments (dotted paths into ``args``) and the value the other code has,
  each with the reason; a spec with another value is refused;
- ``rules``: ``{to, from, convert}``. ``to`` is a flowgraph key where ``{name}`` matches one
  dot-free segment and binds it (an int when it is a number); ``from`` is the source key, a
  string with ``${expr}`` spec expressions over the bound names and the spec's arguments;
  ``convert`` is ``copy`` (same shape), ``squeeze`` (same elements) or ``flag`` (a float
  counter of shape (1,) becomes a () uint8 flag);
- ``derived``: flowgraph keys fixed by the spec itself (kept as compiled);
- ``constants``: source keys (``{name}`` patterns) that hold fixed values; they are checked.

Example:
    >>> rule = Rule.parse({"to": "block{b}.u{u}.conv.weight",
    ...                    "from": "transforms.${2 * b + 1}.blocks.${u}.weight"})
    >>> rule.source_key("block2.u3.conv.weight", {})
    'transforms.5.blocks.3.weight'
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from flowgraph.errors import FlowgraphError
from flowgraph.spec.expr import ExprError, substitute

__all__ = ["MAPPING_SUFFIX", "Constant", "MappingError", "Requirement", "Rule", "StateMapping",
           "key_pattern", "load_mapping", "mapping_for_spec"]

MAPPING_SUFFIX = ".official.yaml"
Convert = Literal["copy", "squeeze", "flag"]
_CONVERTS = ("copy", "squeeze", "flag")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_]\w*)\}")


class MappingError(FlowgraphError):
    """A mapping file is missing or malformed (exit status 2)."""

    usage = True


def key_pattern(template: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    """``a.{i}.b`` -> a regex matching whole keys, and the placeholder names in order."""
    names: list[str] = []
    out, pos = "", 0
    for m in _PLACEHOLDER.finditer(template):
        out += re.escape(template[pos:m.start()])
        name = m.group(1)
        out += f"(?P={name})" if name in names else f"(?P<{name}>[^.]+)"
        if name not in names:
            names.append(name)
        pos = m.end()
    out += re.escape(template[pos:])
    return re.compile(out + r"\Z"), tuple(names)


def _bind(m: re.Match[str]) -> dict[str, Any]:
    return {k: int(v) if v.isdigit() else v for k, v in m.groupdict().items()}


@dataclass(frozen=True)
class Rule:
    """One flowgraph key template and the source key it reads."""

    to: str
    from_: str
    convert: Convert = "copy"
    pattern: re.Pattern[str] = field(default=re.compile(""), compare=False, repr=False)

    @classmethod
    def parse(cls, entry: Mapping[str, Any]) -> Rule:
        unknown = set(entry) - {"to", "from", "convert"}
        if unknown or not isinstance(entry.get("to"), str) or not isinstance(entry.get("from"),
                                                                             str):
            raise MappingError("a rule is {to: KEY, from: KEY, convert?: copy|squeeze|flag}. "
                               f"Got {dict(entry)!r}.")
        convert = entry.get("convert", "copy")
        if convert not in _CONVERTS:
            raise MappingError(f"rule for {entry['to']!r}: convert must be one of "
                               f"{', '.join(_CONVERTS)}. Got {convert!r}.")
        return cls(entry["to"], entry["from"], convert, key_pattern(entry["to"])[0])

    def match(self, key: str) -> dict[str, Any] | None:
        m = self.pattern.match(key)
        return None if m is None else _bind(m)

    def source_key(self, key: str, args: Mapping[str, Any]) -> str:
        bound = self.match(key)
        if bound is None:
            raise ValueError(f"{key!r} does not match {self.to!r}")
        try:
            return str(substitute(self.from_, {**args, **bound}))
        except ExprError as e:
            raise MappingError(f"rule {self.to!r} -> {self.from_!r} for {key!r}: {e}") from None


@dataclass(frozen=True)
class Requirement:
    """A spec argument whose value must equal the source implementation's."""

    arg: str
    value: Any
    why: str

    def check(self, args: Mapping[str, Any]) -> str | None:
        """None when `args` satisfies it, else the reason for refusing."""
        cur: Any = args
        for part in self.arg.split("."):
            if not isinstance(cur, Mapping) or part not in cur:
                return (f"the spec has no argument {self.arg!r}, which selects whether it "
                        f"matches the authors' code ({self.why})")
            cur = cur[part]
        if cur != self.value:
            return f"{self.arg} is {cur!r} but must be {self.value!r}: {self.why}"
        return None


@dataclass(frozen=True)
class Constant:
    """A source buffer with a fixed value (checked, never copied)."""

    from_: str
    value: float
    why: str
    pattern: re.Pattern[str] = field(default=re.compile(""), compare=False, repr=False)


@dataclass(frozen=True)
class StateMapping:
    """A parsed mapping file; see the module docstring."""

    path: Path
    spec: str
    source: str
    requires: tuple[Requirement, ...]
    rules: tuple[Rule, ...]
    derived: tuple[re.Pattern[str], ...]
    constants: tuple[Constant, ...]
    dequantizer: str | None = None

    def rule_for(self, key: str) -> Rule | None:
        for rule in self.rules:
            if rule.pattern.match(key):
                return rule
        return None

    def is_derived(self, key: str) -> bool:
        return any(p.match(key) for p in self.derived)

    def constant_for(self, source_key: str) -> Constant | None:
        for c in self.constants:
            if c.pattern.match(source_key):
                return c
        return None

    def refusals(self, args: Mapping[str, Any]) -> list[str]:
        """Why a spec with these arguments does not compute what the source code computes."""
        return [r for r in (req.check(args) for req in self.requires) if r is not None]


def mapping_for_spec(spec_path: str | Path) -> Path:
    """``specs/x.yaml`` -> ``specs/x.official.yaml`` (the mapping lives next to its spec)."""
    p = Path(spec_path)
    return p.with_name(p.name.removesuffix(".yaml").removesuffix(".yml") + MAPPING_SUFFIX)


def load_mapping(path: str | Path) -> StateMapping:
    """Read and check a mapping file; errors name the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise MappingError(f"no weight mapping at {str(path)!r} ({e.strerror}): importing "
                           "official weights needs a <spec>.official.yaml next to the spec"
                           ) from None
    except yaml.YAMLError as e:
        raise MappingError(f"{str(path)!r} is not valid YAML: {e}") from None
    if not isinstance(data, Mapping) or data.get("mapping") != 1:
        raise MappingError(f"{str(path)!r} is not a weight mapping (expected `mapping: 1`).")
    try:
        requires = tuple(Requirement(str(k), v["value"], str(v.get("why", "")))
                         for k, v in (data.get("requires") or {}).items())
        rules = tuple(Rule.parse(r) for r in data.get("rules") or [])
        derived = tuple(key_pattern(str(t))[0] for t in data.get("derived") or [])
        constants = tuple(Constant(str(c["from"]), float(c["value"]), str(c.get("why", "")),
                                   key_pattern(str(c["from"]))[0])
                          for c in data.get("constants") or [])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise MappingError(f"{str(path)!r}: malformed entry ({type(e).__name__}: {e})"
                           ) from None
    if not rules:
        raise MappingError(f"{str(path)!r} has no rules.")
    return StateMapping(path, str(data.get("spec", "")), str(data.get("source", "")), requires,
                        rules, derived, constants, data.get("dequantizer"))
