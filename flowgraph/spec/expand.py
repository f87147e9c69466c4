r"""Expansion: templates, groups, repeats and `${...}` resolved into a flat list of op nodes.

Expansion is deterministic: node ids are the entry ids joined by dots along the instantiation
path (``block1.u3.m2.coupling``), with a repeat's iteration index appended to its id. Those ids
become module names and `state_dict` keys.

Inside a repeat, these variables are defined: the loop variable (``as``, default ``i``),
``count``, ``first``, ``last``, ``input`` (the chain input), ``prev`` (the previous iteration's
output, or the chain input), ``earlier`` (the chain input and every iteration output before
``prev``) and ``history`` (``earlier`` plus ``prev``). DenseFlow's cross-unit coupling reads
``${earlier}``: the block input and every earlier unit output except the one it augments.
A list given as ``repeat`` runs one iteration per item, with the item's keys as variables.

Expansion is linear in its output: ``earlier``/``history`` are views of one shared list, and
variables are layered (`ChainMap`) rather than copied. Its size is bounded by `SpecLimits`
(`max_nodes` counts entries, instances and iterations as they are created, so a nested repeat
of 10**8 is refused after ~`max_nodes` steps), as is expression work (one step budget).
"""

from __future__ import annotations

import keyword
import re
from collections import ChainMap
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flowgraph.errors import Issue, suggest
from flowgraph.spec.expr import Budget, ExprError, ExprLimitError, Prefix, substitute
from flowgraph.spec.io import SourceMap
from flowgraph.spec.limits import SpecLimits, active_limits, limit_issue
from flowgraph.spec.models import FlowSpec, NodeEntry, TemplateSpec
from flowgraph.spec.validation import clip

__all__ = ["InputDecl", "LatentDecl", "NodeDecl", "Program", "Ref", "expand"]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAX_DEPTH = 24


@dataclass(frozen=True)
class Ref:
    """A tensor: output `port` of node (or input) `node`; port None means the default port."""

    node: str
    port: str | None = None

    def __str__(self) -> str:
        return self.node if self.port is None else f"{self.node}:{self.port}"


@dataclass(frozen=True)
class InputDecl:
    name: str
    shape: tuple[int, ...]
    bits: int | None
    role: str
    path: tuple


@dataclass(frozen=True)
class NodeDecl:
    id: str
    op: str
    params: Mapping[str, Any]
    inputs: tuple[Ref, ...]
    conditions: tuple[Ref, ...]
    path: tuple
    trail: tuple[str, ...] = ()


@dataclass(frozen=True)
class LatentDecl:
    name: str
    source: Ref
    dist: str
    params: Mapping[str, Any]
    conditions: tuple[Ref, ...]
    path: tuple


@dataclass
class Program:
    """The expanded spec: concrete inputs, op nodes in spec order, and latents."""

    name: str
    inputs: dict[str, InputDecl]
    nodes: list[NodeDecl]
    latents: list[LatentDecl]
    args: dict[str, Any] = field(default_factory=dict)


class _Skip(Exception):
    """An entry cannot be expanded; its issue has been recorded."""


class _Stop(Exception):
    """Expansion gives up (a limit was reached); its issue has been recorded."""


def _holds_expr(value: Any) -> bool:
    todo = [value]
    while todo:
        v = todo.pop()
        if isinstance(v, str):
            if "${" in v:
                return True
        elif isinstance(v, Mapping):
            todo += list(v.keys()) + list(v.values())
        elif isinstance(v, (list, tuple)):
            todo += v
    return False


def _path_str(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


@dataclass
class _Entry:
    entry: NodeEntry
    id: str
    active: bool
    path: tuple


class _Scope:
    """The entries of one node list, with its variables, bound names and id prefix."""

    def __init__(self, ex: _Expander, entries: list[NodeEntry], path: tuple, prefix: str,
                 vars: dict[str, Any], bindings: dict[str, Ref], parent: _Scope | None,
                 trail: tuple[str, ...], output: str | None, depth: int):
        self.ex, self.path, self.prefix, self.vars = ex, path, prefix, vars
        self.bindings, self.parent, self.trail, self.depth = bindings, parent, trail, depth
        self.output_name = output
        self.local: dict[str, _Entry] = {}
        self.order: list[_Entry] = []
        self._memo: dict[tuple, Any] = {}
        self._busy: set[tuple] = set()
        ex.count(max(len(entries), 1), path, trail)
        for i, e in enumerate(entries):
            epath = path + (i,)
            try:
                eid = self.sub(e.id, epath + ("id",))
                active = self.sub(e.when, epath + ("when",))
            except _Skip:
                continue
            if not isinstance(eid, str) or not _IDENT.match(eid) or keyword.iskeyword(eid):
                ex.issue("id", "node ids are identifiers (letters, digits, _; no dots)", epath,
                         found=clip(repr(eid)))
                continue
            if eid in self.local:
                ex.issue("duplicate-id", f"id {eid!r} is used twice in this node list", epath,
                         node=prefix + eid, hint=f"first use: {_path_str(self.local[eid].path)}")
                continue
            info = _Entry(e, eid, bool(active), epath)
            self.local[eid] = info
            self.order.append(info)

    # -- helpers ----------------------------------------------------------------------------
    def sub(self, value: Any, path: tuple) -> Any:
        if value is True or (type(value) is str and "${" not in value):
            return value  # most ids, ops and `when`s: skip the calls below
        return self.ex.sub(value, self.vars, path, self.trail)

    def visible(self) -> list[str]:
        names = set(self.local) | set(self.bindings) | set(self.ex.inputs)
        return sorted(names | (set(self.parent.visible()) if self.parent else set()))

    def resolve(self, value: Any, path: tuple) -> list[Ref]:
        """References (strings, Ref values or lists of them) -> concrete Refs."""
        value = self.sub(value, path)
        items = value if isinstance(value, list) else [value]
        out: list[Ref] = []
        for item in items:
            if isinstance(item, Ref):
                out.append(item)
            elif isinstance(item, list) and all(isinstance(v, Ref) for v in item):
                out.extend(item)
            elif isinstance(item, str) and item:
                name, _, port = item.partition(":")
                out.append(self.lookup(name, port or None, path))
            else:
                self.ex.issue("reference", "a reference is a node or input name, optionally "
                              "with ':port'", path, found=clip(repr(item)), trail=self.trail)
                raise _Skip
        return out

    def _find(self, name: str, port: str | None, path: tuple) -> Ref | None:
        head, dot, _ = name.partition(".")
        if dot:  # a node inside an instance or group: `t1.split:second`
            if head in self.local:
                return Ref(self.prefix + name, port)
            return self.parent._find(name, port, path) if self.parent is not None else None
        if name in self.local:
            return self.entry_output(self.local[name], port)
        if name in self.bindings:
            bound = self.bindings[name]
            if port is not None and bound.port is not None:
                self.ex.issue("reference", f"{name!r} is bound to {bound}, which already "
                              "names a port", path, found=f"{name}:{port}", trail=self.trail)
                raise _Skip
            return Ref(bound.node, port or bound.port)
        if self.parent is not None:
            return self.parent._find(name, port, path)
        if name in self.ex.inputs:
            return Ref(name, port)
        return None

    def lookup(self, name: str, port: str | None, path: tuple) -> Ref:
        ref = self._find(name, port, path)
        if ref is None:
            visible = self.visible()
            self.ex.issue("reference", f"unknown reference {clip(repr(name))}", path,
                          found=clip(repr(name)),
                          hint=suggest(name, visible) or
                          f"visible here: {clip(', '.join(visible) or '(nothing)', 300)}",
                          trail=self.trail)
            raise _Skip
        return ref

    def output(self, port: str | None) -> Ref:
        name = self.output_name or (self.order[-1].id if self.order else None)
        if name is None:
            self.ex.issue("reference", "an empty node list has no output", self.path,
                          trail=self.trail)
            raise _Skip
        base, _, own_port = name.partition(":")
        if own_port and port:
            self.ex.issue("reference", f"output {name!r} already names a port", self.path,
                          found=port, trail=self.trail)
            raise _Skip
        return self.lookup(base, own_port or port, self.path)

    # -- entry outputs (lazy, memoised, cycle-safe) ------------------------------------------
    def entry_output(self, e: _Entry, port: str | None) -> Ref:
        key = (e.id, port)
        if key in self._memo:
            return self._memo[key]
        if key in self._busy:
            self.ex.issue("cycle", f"references loop back to {e.id!r} while resolving it",
                          e.path, node=self.prefix + e.id, trail=self.trail)
            raise _Skip
        ex = self.ex
        if ex.resolving >= ex.limits.max_depth:  # bounds the recursion of lazy resolution
            ex.limit("max_depth", "references resolve through more nested, chained or skipped "
                     "entries than allowed", e.path, self.trail)
            raise _Skip
        self._busy.add(key)
        ex.resolving += 1
        try:
            ref = self._entry_output(e, port)
        finally:
            ex.resolving -= 1
            self._busy.discard(key)
        self._memo[key] = ref
        return ref

    def _entry_output(self, e: _Entry, port: str | None) -> Ref:
        ent = e.entry
        if not e.active:  # a skipped entry passes its first data input through
            first = self.resolve(ent.in_, e.path + ("in",))
            if not first:
                self.ex.issue("reference", "a skipped entry needs an 'in' to pass through",
                              e.path, trail=self.trail)
                raise _Skip
            return first[0] if port is None else Ref(first[0].node, port)
        if ent.repeat is not None:
            its = self.iterations(e)
            if not its:
                return self.resolve(ent.in_, e.path + ("in",))[0]
            last = its[-1]
            return Ref(last, port) if isinstance(last, str) else last.output(port)
        if ent.op is not None:
            return Ref(self.prefix + e.id, port)
        return self.child(e).output(port)

    def child(self, e: _Entry) -> _Scope:
        """The scope of a (non-repeated) instance or group, built once."""
        key = ("child", e.id)
        if key not in self._memo:
            self._memo[key] = (self.instance(e, self.vars, None, e.id) if e.entry.use
                               else self.group(e, self._group_vars(e), e.id))
        return self._memo[key]

    # -- children -----------------------------------------------------------------------------
    def instance(self, e: _Entry, vars: dict, chain_in: Ref | None, name: str) -> _Scope:
        ex, ent = self.ex, e.entry
        if self.depth >= _MAX_DEPTH:
            ex.issue("template", f"templates nest deeper than {_MAX_DEPTH} levels "
                     "(a template probably uses itself)", e.path, trail=self.trail)
            raise _Skip
        tpl: TemplateSpec | None = ex.spec.templates.get(ent.use)
        if tpl is None:
            names = sorted(ex.spec.templates)
            ex.issue("unknown-template", f"no template named {clip(repr(ent.use))}",
                     e.path + ("use",), hint=suggest(ent.use, names) or
                     f"templates: {clip(', '.join(names) or '(none)', 300)}", trail=self.trail)
            raise _Skip
        unknown = sorted(set(ent.with_) - set(tpl.args))
        if unknown:
            for k in unknown:
                ex.issue("template-args", f"template {ent.use!r} has no argument "
                         f"{clip(repr(k))}", e.path + ("with", k),
                         hint=suggest(k, tpl.args) or
                         f"arguments: {clip(', '.join(sorted(tpl.args)) or '(none)', 300)}",
                         trail=self.trail)
            raise _Skip
        targs: dict[str, Any] = {}
        tvars = ChainMap(targs, ex.global_vars)
        tpath = ("templates", ent.use)
        for k, v in tpl.args.items():
            targs[k] = self._sub_in(v, tvars, tpath + ("args", k))
        for k, v in ent.with_.items():
            targs[k] = self._sub_in(v, vars, e.path + ("with", k))
        ins = [chain_in] if chain_in is not None else self._resolve_in(e, vars)
        if len(ins) != len(tpl.inputs):
            ex.issue("template-args", f"template {ent.use!r} takes {len(tpl.inputs)} input(s) "
                     f"({', '.join(tpl.inputs)})", e.path + ("in",), found=f"{len(ins)}",
                     trail=self.trail)
            raise _Skip
        trail = self.trail + (f"{_path_str(e.path)} {self.prefix + name!r} (use {ent.use})",)
        return _Scope(ex, tpl.nodes, tpath + ("nodes",), f"{self.prefix}{name}.", tvars,
                      dict(zip(tpl.inputs, ins, strict=True)), None, trail, tpl.output,
                      self.depth + 1)

    def group(self, e: _Entry, vars: dict, name: str) -> _Scope:
        trail = self.trail + (f"{_path_str(e.path)} {self.prefix + name!r}",)
        return _Scope(self.ex, e.entry.body or [], e.path + ("body",), f"{self.prefix}{name}.",
                      vars, {}, self, trail, e.entry.output, self.depth + 1)

    def _group_vars(self, e: _Entry) -> dict:
        """A group given an `in` sees it as ${input} (and ${prev}), like a repeat body."""
        if not e.entry.in_:
            return self.vars
        ref = self.resolve(e.entry.in_, e.path + ("in",))[0]
        return ChainMap({"input": ref, "prev": ref}, self.vars)

    def _sub_in(self, value: Any, vars: Mapping, path: tuple) -> Any:
        return self.ex.sub(value, vars, path, self.trail, bind=True)

    def _resolve_in(self, e: _Entry, vars: dict) -> list[Ref]:
        saved, self.vars = self.vars, vars
        try:
            return self.resolve(e.entry.in_, e.path + ("in",)) if e.entry.in_ else []
        finally:
            self.vars = saved

    def iterations(self, e: _Entry) -> list:
        """Per iteration: a node id (op repeats) or a child scope; built once, in order."""
        key = ("iterations", e.id)
        if key in self._memo:
            return self._memo[key]
        ent, ex = e.entry, self.ex
        spec = self.sub(ent.repeat, e.path + ("repeat",))
        items: list[dict] = spec if isinstance(spec, list) else None
        n = len(items) if items is not None else spec
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            ex.issue("repeat", "repeat is a count (0 or more) or a list of mappings",
                     e.path + ("repeat",), found=clip(repr(spec)), trail=self.trail)
            raise _Skip
        if items is not None and not all(isinstance(it, Mapping) for it in items):
            ex.issue("repeat", "a repeat list holds one mapping of variables per iteration",
                     e.path + ("repeat",), found=clip(repr(spec)), trail=self.trail)
            raise _Skip
        ex.count(n, e.path + ("repeat",), self.trail)
        chain_in = self.resolve(ent.in_, e.path + ("in",))[0] if ent.in_ else None
        outs: list = []
        history: list[Ref] = [chain_in] if chain_in is not None else []
        for k in range(n):
            prev = history[-1] if history else None
            own = {**(items[k] if items is not None else {}), ent.as_: k, "count": n,
                   "first": k == 0, "last": k == n - 1, "input": chain_in, "prev": prev,
                   "earlier": Prefix(history, max(len(history) - 1, 0)),
                   "history": Prefix(history, len(history))}
            ivars = ChainMap(own, self.vars)
            name = f"{e.id}{k}"
            if ent.op is not None:
                it: Any = self.prefix + name
                out = Ref(it)
            elif ent.use is not None:
                it = self.instance(e, ivars, prev, name)
                out = it.output(None)
            else:
                it = self.group(e, ivars, name)
                out = it.output(None)
            outs.append(it)
            self._memo[("vars", e.id, k)] = ivars
            history.append(out)
        self._memo[key] = outs
        return outs

    # -- emission -------------------------------------------------------------------------------
    def emit(self) -> None:
        for e in self.order:
            if not e.active:
                continue
            try:
                self._emit(e)
            except _Skip:
                continue

    def _emit(self, e: _Entry) -> None:
        ent = e.entry
        if ent.repeat is None:
            if ent.op is not None:
                self._emit_op(e, self.prefix + e.id, self.vars, None)
            else:
                self.child(e).emit()
            return
        its = self.iterations(e)
        for k, it in enumerate(its):
            if isinstance(it, str):
                prev = self._memo[("vars", e.id, k)]["prev"]
                self._emit_op(e, it, self._memo[("vars", e.id, k)], prev)
            else:
                it.emit()

    def _emit_op(self, e: _Entry, node_id: str, vars: Mapping, chain_in: Ref | None) -> None:
        ent = e.entry
        saved, self.vars = self.vars, vars
        try:
            inputs = [chain_in] if chain_in is not None else self.resolve(ent.in_,
                                                                          e.path + ("in",))
            conds = self.resolve(ent.condition, e.path + ("condition",)) if ent.condition else []
            op = self.sub(ent.op, e.path + ("op",))
            params = self.sub(ent.params, e.path + ("params",))
        finally:
            self.vars = saved
        self.ex.nodes.append(NodeDecl(node_id, str(op), params, tuple(inputs), tuple(conds),
                                      e.path, self.trail))


class _Expander:
    def __init__(self, spec: FlowSpec, smap: SourceMap | None, limits: SpecLimits):
        self.spec, self.smap, self.limits = spec, smap or SourceMap(), limits
        self.budget = Budget(limits)
        self.issues: list[Issue] = []
        self._seen: set[Issue] = set()
        self.nodes: list[NodeDecl] = []
        self.inputs: dict[str, InputDecl] = {}
        self.global_vars: dict[str, Any] = {}
        self.created = 0  # entries, instances and iterations so far (bounded by max_nodes)
        self.resolving = 0  # depth of lazy output resolution
        self._static_memo: dict[int, tuple[Any, bool]] = {}

    def issue(self, rule: str, message: str, path: tuple, node: str | None = None,
              found: str | None = None, hint: str | None = None, trail: tuple = ()) -> None:
        ctx = tuple(f"in {t}" for t in trail)
        issue = Issue(rule, message, node=node, location=self.smap.locate(path), found=found,
                      hint=hint, context=ctx)
        if issue in self._seen:  # a lazily resolved entry may be visited twice
            return
        self._seen.add(issue)
        self.issues.append(issue)
        if len(self.issues) >= self.limits.max_issues:
            self.issues.append(limit_issue("max_issues", "expansion stopped after this many "
                                           "problems", None, limits=self.limits))
            raise _Stop

    def limit(self, name: str, what: str, path: tuple, trail: tuple = ()) -> None:
        issue = limit_issue(name, what, self.smap.locate(path), limits=self.limits)
        self.issues.append(Issue(issue.rule, issue.message, location=issue.location,
                                 hint=issue.hint, context=tuple(f"in {t}" for t in trail)))

    def count(self, n: int, path: tuple, trail: tuple = ()) -> None:
        """Charge `n` created entries or iterations; refuses before the work is done."""
        self.created += n
        if self.created > self.limits.max_nodes:
            self.limit("max_nodes", "the spec expands to more nodes, instances and "
                       "repeat iterations than allowed", path, trail)
            raise _Stop

    def sub(self, value: Any, vars: Mapping, path: tuple, trail: tuple = (),
            bind: bool = False) -> Any:
        """`substitute` with every failure recorded at `path` (a limit stops expansion).

        `bind`: the value becomes a variable (template argument), so views stay views.
        """
        if type(value) in (dict, list) and self._static(value):
            return value  # e.g. params without `${...}`: shared, never copied per node
        try:
            return substitute(value, vars, self.budget, views=bind)
        except ExprLimitError as err:
            self.limit(err.limit, err.what, path, trail)
            raise _Stop from None
        except ExprError as err:
            self.issue("expression", str(err), path, trail=trail)
            raise _Skip from None

    def _static(self, value: dict | list) -> bool:
        """Whether `value` holds no `${...}` at all (checked once per spec object)."""
        key = id(value)
        if key not in self._static_memo:
            self._static_memo[key] = (value, not _holds_expr(value))  # keeps the id valid
        return self._static_memo[key][1]

    def run(self) -> Program:
        try:
            return self._run()
        except _Stop:
            # a partial expansion would only flood the later checks
            return Program(self.spec.name, self.inputs, [], [], dict(self.global_vars))

    def _run(self) -> Program:
        spec = self.spec
        for k, v in spec.args.items():
            try:
                self.global_vars[k] = self.sub(v, self.global_vars, ("args", k))
            except _Skip:
                continue
        for name, decl in spec.inputs.items():
            self._input(name, decl)
        top = _Scope(self, spec.nodes, ("nodes",), "", self.global_vars, {}, None, (),
                     None, 0)
        top.emit()
        latents = []
        for name, lat in spec.outputs.items():
            path = ("outputs", name)
            try:
                src = top.resolve(lat.from_, path + ("from",))
                conds = top.resolve(lat.condition, path + ("condition",)) if lat.condition else []
                prior = lat.prior or spec.base
                params = self.sub(prior.params, self.global_vars, path + ("prior",))
            except _Skip:
                continue
            latents.append(LatentDecl(name, src[0], prior.dist, params, tuple(conds), path))
        return Program(spec.name, self.inputs, self.nodes, latents, dict(self.global_vars))

    def _input(self, name: str, decl: Any) -> None:
        path = ("inputs", name)
        try:
            shape = self.sub(decl.shape, self.global_vars, path)
            bits = self.sub(decl.bits, self.global_vars, path)
        except _Skip:
            return
        if not _IDENT.match(name):
            self.issue("id", "input names are identifiers", path, found=clip(repr(name)))
            return
        ok = (isinstance(shape, list) and 1 <= len(shape) <= 3
              and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape))
        if not ok:
            self.issue("shape", "an input shape is [D] or [C, H, W] of positive integers",
                       path + ("shape",), found=clip(repr(shape)))
            return
        if bits is not None and (not isinstance(bits, int) or not 1 <= bits <= 16):
            self.issue("shape", "bits is an integer in 1..16", path + ("bits",),
                       found=clip(repr(bits)))
            return
        self.inputs[name] = InputDecl(name, tuple(shape), bits, decl.role, path)


def expand(spec: FlowSpec, smap: SourceMap | None = None, *, limits: SpecLimits | None = None
           ) -> tuple[Program, list[Issue]]:
    """Expand templates and repeats; returns the program and every issue found.

    Bounded by `limits` (default: `active_limits()`): a spec too large to expand yields a
    ``limit`` issue, not a long wait.
    """
    ex = _Expander(spec, smap, limits or active_limits())
    program = ex.run()
    return program, ex.issues
