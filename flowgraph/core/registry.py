r"""Registries of ops and conditioner networks, filled by discovery.

The built-in ones are every `OpDef` / `NetDef` subclass that sets its `name` / `kind` in a
module of `flowgraph.ops` / `flowgraph.nn`; third-party packages add theirs through the entry
point groups ``flowgraph.ops`` and ``flowgraph.nets`` (each entry names a module, whose
subclasses are collected the same way, or one class). Adding an op is writing its file.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import pkgutil
from collections.abc import Iterable, Iterator
from importlib.metadata import entry_points
from types import ModuleType
from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, WrapValidator

from flowgraph.core.net import NetDef, NetParams
from flowgraph.core.op import OpDef

__all__ = ["NetSpec", "OpRegistry", "Registry", "nets", "ops", "refresh"]

T = TypeVar("T", OpDef, NetDef)

_BUILTIN = {"flowgraph.ops": "flowgraph.ops", "flowgraph.nets": "flowgraph.nn"}


class Registry(Generic[T]):
    """An immutable name -> definition mapping; `origin` records where each came from."""

    def __init__(self, what: str, items: Iterable[tuple[T, str]] = ()):
        self.what = what
        self._items: dict[str, T] = {}
        self.origin: dict[str, str] = {}
        for item, origin in items:
            key = _key(item)
            if key in self._items:
                raise ValueError(f"{what} {key!r} is defined twice: by {self.origin[key]} "
                                 f"and by {origin}")
            self._items[key] = item
            self.origin[key] = origin

    def with_items(self, items: Iterable[T], origin: str = "local") -> Registry[T]:
        return Registry(self.what, [*((v, self.origin[k]) for k, v in self._items.items()),
                                    *((i, origin) for i in items)])

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[T]:
        return iter(self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> list[str]:
        return sorted(self._items)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(self.unknown_message(name)) from None

    def suggestions(self, name: str) -> list[str]:
        return difflib.get_close_matches(str(name), list(self._items), n=3, cutoff=0.5)

    def unknown_message(self, name: str) -> str:
        close = self.suggestions(name)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown {self.what} {name!r}.{hint}"


OpRegistry = Registry[OpDef]


def _key(item: OpDef | NetDef) -> str:
    return item.name if isinstance(item, OpDef) else item.kind


def _defined_in(module: ModuleType, base: type) -> list[Any]:
    """Instances of the concrete `base` subclasses a module defines (name/kind set on the class
    itself, so abstract family bases without one are skipped)."""
    attr = "name" if base is OpDef else "kind"
    found = []
    for _, cls in inspect.getmembers(module, inspect.isclass):
        if issubclass(cls, base) and cls.__module__ == module.__name__ and attr in vars(cls):
            found.append(cls())
    return found


def _from_package(package: str, base: type) -> list[Any]:
    pkg = importlib.import_module(package)
    items = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        items += _defined_in(importlib.import_module(f"{package}.{info.name}"), base)
    return items


def _load(group: str, base: type) -> list[tuple[Any, str]]:
    items = [(i, "flowgraph") for i in _from_package(_BUILTIN[group], base)]
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        if ep.value.split(":")[0] == _BUILTIN[group]:
            continue  # our own package, already walked
        origin = f"{ep.dist.name if ep.dist else '?'} (entry point {ep.name!r})"
        obj = ep.load()
        if isinstance(obj, ModuleType):
            items += [(i, origin) for i in _defined_in(obj, base)]
        elif isinstance(obj, type) and issubclass(obj, base):
            items.append((obj(), origin))
        else:
            raise TypeError(f"entry point {ep.name!r} in group {group!r} gives {obj!r}: "
                            f"expected a module or a {base.__name__} subclass")
    return items


@functools.cache
def ops() -> Registry[OpDef]:
    """Every op: the built-in ones and those of installed plugins."""
    return Registry("op", _load("flowgraph.ops", OpDef))


@functools.cache
def nets() -> Registry[NetDef]:
    """Every conditioner network: the built-in ones and those of installed plugins."""
    return Registry("conditioner kind", _load("flowgraph.nets", NetDef))


def refresh() -> None:
    """Forget the discovered registries (after installing a plugin in a running process)."""
    ops.cache_clear()
    nets.cache_clear()


def _validate_net(value: Any, handler: Any) -> NetParams:
    if isinstance(value, NetParams):
        return value
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if not isinstance(value, dict) or "kind" not in value:
        raise ValueError(f"a conditioner is a mapping with a `kind` (one of: "
                         f"{', '.join(nets().names())})")
    kind = value["kind"]
    if kind not in nets():
        raise ValueError(nets().unknown_message(kind))
    params = nets().get(kind).Params
    allowed = {f.alias or name for name, f in params.model_fields.items()}
    for key in value:
        if key not in allowed:  # pydantic alone would say "extra inputs are not permitted"
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; keys: {', '.join(sorted(allowed))}"
            raise ValueError(f"unknown key {key!r} for conditioner {kind!r}{hint}")
    return params.model_validate(value)


#: The type of a ``net:`` field: any registered conditioner's parameters, chosen by `kind`.
NetSpec = Annotated[Any, WrapValidator(_validate_net)]
