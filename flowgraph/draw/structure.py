r"""What a diagram is drawn from: the role each op declares and the scopes of the spec.

Drawing knows no op names. It reads two things:

- `op_role`: what a node is for (``transform``, ``dequantize``, ``augment``, ``reshape``,
  ``prior``), declared by its op;
- `scope_tree`: the spec's own structure. Every `use:` of a template, every group body and
  every iteration of a repeat of either is a *scope*; expansion records the scopes a node
  came from in its `trail`, outermost first, one entry each::

      nodes[3] 'block1' (use dense_block)
      templates.dense_block.nodes[0] 'block1.u3'

  (the spec entry that made the scope, the id prefix its nodes share, and the template a
  `use:` instantiated). The iterations of one repeat share their entry, which is how a run
  of them is recognised.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from flowgraph.core.op import Role
from flowgraph.graph import FlowGraph, GraphNode

__all__ = ["Role", "Scope", "op_role", "run_name", "runs", "scope_tree"]


_TRAIL = re.compile(r"^(?P<entry>.+) '(?P<id>[A-Za-z_][A-Za-z0-9_.]*)'"
                    r"(?: \(use (?P<template>.+)\))?$")


def op_role(op: Any) -> Role:
    """The role an op declares: what drawing (and reports) may know about a node."""
    return op.role


@dataclass(eq=False)
class Scope:
    """One instance of a template use, a group body or a repeat iteration of either.

    `id` is the prefix its nodes' ids share (``block1.u3``; "" for the spec itself), `entry`
    the spec entry that made it (shared by the iterations of one repeat) and `template` the
    template a `use:` instantiated (None for a group body). `children` are its sub-scopes and
    its own op nodes, in spec order.
    """

    id: str
    entry: str
    template: str | None
    parent: Scope | None = None
    children: list[Scope | GraphNode] = field(default_factory=list)

    @property
    def tail(self) -> str:
        return self.id.rsplit(".", 1)[-1]

    def scopes(self) -> list[Scope]:
        return [c for c in self.children if isinstance(c, Scope)]

    def ops(self) -> Iterator[GraphNode]:
        """Every op node inside, in spec order."""
        for c in self.children:
            if isinstance(c, Scope):
                yield from c.ops()
            else:
                yield c


def _trail_scopes(node: GraphNode) -> list[tuple[str, str, str | None]]:
    """(id, entry, template) of each scope a node came from, outermost first.

    A trail entry that does not read as expansion writes it falls back to the node's id
    prefixes (scope ids are always those prefixes; only template names and repeats are lost).
    """
    found = [_TRAIL.match(t) for t in node.trail]
    prefixes = node.id.split(".")[:-1]
    ids = [".".join(prefixes[:k]) for k in range(1, len(prefixes) + 1)]
    if all(found) and [m["id"] for m in found] == ids:  # type: ignore[index]
        return [(m["id"], m["entry"], m["template"]) for m in found]  # type: ignore[index]
    return [(i, i, None) for i in ids]


def scope_tree(graph: FlowGraph) -> Scope:
    """The spec's scopes with their op nodes (inputs and latents are not in any scope)."""
    root = Scope("", "", None)
    by_id: dict[str, Scope] = {"": root}
    for node in sorted(graph.ops(), key=lambda n: n.index):
        parent = root
        for sid, entry, template in _trail_scopes(node):
            scope = by_id.get(sid)
            if scope is None:
                scope = by_id[sid] = Scope(sid, entry, template, parent)
                parent.children.append(scope)
            parent = scope
        parent.children.append(node)
    return root


def _run_key(item: Scope | GraphNode) -> tuple:
    if isinstance(item, Scope):
        return ("scope", item.entry, item.template)
    return ("op", item.path, item.op_name)


def runs(children: list[Scope | GraphNode]) -> list[list[Scope | GraphNode]]:
    """Consecutive children made by the same spec entry: a repeat's iterations form one run."""
    out: list[list[Scope | GraphNode]] = []
    for item in children:
        if out and _run_key(out[-1][-1]) == _run_key(item):
            out[-1].append(item)
        else:
            out.append([item])
    return out


def run_name(run: list[Scope | GraphNode]) -> str:
    """What a run repeats: its template, op, or the id its iterations were numbered from."""
    first = run[0]
    if isinstance(first, GraphNode):
        return first.op_name
    if first.template is not None:
        return first.template
    stem = re.sub(r"\d+$", "", first.tail)  # a repeat appends the iteration index to its id
    return stem or first.tail
