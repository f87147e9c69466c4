r"""`${...}` expressions in specs: a small, safe subset of Python evaluated over spec variables.

A string that is exactly ``${expr}`` becomes the value of `expr` (any type: int, bool, list, a
mapping, a tensor reference); a string with ``${expr}`` inside other text is interpolated.
Allowed: literals, names, lists/tuples/dicts, arithmetic, comparisons, ``and/or/not``,
``a if c else b``, subscripts and slices, list comprehensions, and the calls ``min``, ``max``,
``len``, ``range``, ``int``, ``abs``, ``sum``. Nothing else (no attributes, no imports), so a
spec can never run code.

Evaluation is bounded by `SpecLimits`: source length, syntax-tree size and depth, integer
digits, string and list lengths, and a step budget (syntax nodes visited plus items built)
that one expansion shares across all its expressions. Exceeding one raises `ExprLimitError`.
"""

from __future__ import annotations

import ast
import functools
import math
import operator
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from flowgraph.errors import suggest
from flowgraph.spec.limits import SpecLimits, active_limits

__all__ = ["Budget", "ExprError", "ExprLimitError", "Prefix", "evaluate", "has_expr",
           "substitute"]

_FULL = re.compile(r"^\$\{(.*)\}$", re.DOTALL)
_PART = re.compile(r"\$\{([^{}]*)\}")

_BINOPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_CMPOPS = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
_UNOPS = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}
_CALLS = ("abs", "int", "len", "max", "min", "range", "sum")
_MAX_POW = 64
_MAX_RANGE = 100_000
_ITEMS_PER_STEP = 8
_SCALARS = frozenset({int, float, bool, type(None)})  # building an item in C costs far less than visiting a syntax node


class ExprError(ValueError):
    """An expression could not be parsed or evaluated; the message says why."""


class ExprLimitError(ExprError):
    """An expression exceeded one of the `SpecLimits`; `limit` names it."""

    def __init__(self, limit: str, what: str):
        self.limit, self.what = limit, what
        super().__init__(what)


class Budget:
    """Evaluation steps left; one expansion shares one budget across all its expressions."""

    def __init__(self, limits: SpecLimits):
        self.limits = limits
        self.left = limits.max_expr_steps

    def spend(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise ExprLimitError("max_expr_steps", "expressions take more evaluation steps "
                                 "than allowed")


class Prefix(Sequence):
    """The first `n` items of a shared, append-only list: `${earlier}` without a copy."""

    __slots__ = ("_items", "_n")

    def __init__(self, items: list, n: int):
        self._items, self._n = items, n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return self._items[: self._n][i]
        if not -self._n <= i < self._n:
            raise IndexError("list index out of range")
        return self._items[i % self._n]

    def __iter__(self) -> Iterator:
        return iter(self._items[: self._n])

    def __eq__(self, other: object) -> bool:
        return list(self) == (list(other) if isinstance(other, Prefix) else other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(list(self))


def has_expr(value: Any) -> bool:
    return isinstance(value, str) and "${" in value


def substitute(value: Any, scope: Mapping[str, Any], budget: Budget | None = None,
               views: bool = False) -> Any:
    """Recursively replace ``${...}`` in strings of `value` (lists and mappings walked).

    `views`: a `Prefix` value may stay a view (binding a variable, not building a node), so
    passing ``${earlier}`` on costs nothing until a node actually lists it.
    """
    kind = type(value)
    if kind is str:
        if "${" not in value:
            return value
        budget = budget or Budget(active_limits())
        full = _FULL.match(value)
        if full and "${" not in full.group(1):
            result = evaluate(full.group(1), scope, budget)
            return result if views and isinstance(result, Prefix) else _plain(result, budget)
        text = _PART.sub(lambda m: _to_text(evaluate(m.group(1), scope, budget)), value)
        if len(text) > budget.limits.max_str_len:
            raise ExprLimitError("max_str_len", "an interpolated string is longer than allowed")
        return text
    if kind in _SCALARS:  # the common case, before the slower checks below
        return value
    if kind is list or (kind is not dict and isinstance(value, list)):
        return [substitute(v, scope, budget, views) for v in value]
    if kind is dict or isinstance(value, Mapping):
        return {k: substitute(v, scope, budget, views) for k, v in value.items()}
    if isinstance(value, str):
        return substitute(str(value), scope, budget, views)
    return value


def _plain(value: Any, budget: Budget) -> Any:
    """A result leaving the evaluator: views become lists; nesting depth is bounded."""
    if isinstance(value, Prefix):
        budget.spend(len(value) // _ITEMS_PER_STEP)
        return list(value)
    if isinstance(value, (list, tuple, dict)):
        todo, limit = [(value, 1)], budget.limits.max_depth
        while todo:
            v, depth = todo.pop()
            if depth > limit:
                raise ExprLimitError("max_depth", "an expression's value nests deeper than "
                                     "allowed")
            budget.spend(1 + len(v) // _ITEMS_PER_STEP)
            items = v.values() if isinstance(v, dict) else v
            todo += [(x, depth + 1) for x in items if isinstance(x, (list, tuple, dict))]
    return value


def _to_text(v: Any) -> str:
    if isinstance(v, (list, tuple, dict, Prefix)):
        raise ExprError(f"cannot interpolate a {type(v).__name__} inside text; "
                        "use the whole string '${...}' to insert a list or mapping")
    return str(v)


@functools.lru_cache(maxsize=4096)
def _parse(source: str, max_chars: int, max_nodes: int, max_depth: int) -> ast.expr:
    """The checked syntax tree of an expression (cached: repeats evaluate the same text)."""
    if len(source) > max_chars:
        raise ExprLimitError("max_expr_chars", "an expression is longer than allowed")
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as e:
        raise ExprError(f"invalid expression ${{{_short(source)}}}: {e.msg}") from None
    except (RecursionError, MemoryError, ValueError):  # nesting beyond the parser's own limit
        raise ExprLimitError("max_expr_depth", "an expression nests deeper than allowed"
                             ) from None
    count, todo = 0, [(tree.body, 1)]
    while todo:
        node, depth = todo.pop()
        count += 1
        if count > max_nodes:
            raise ExprLimitError("max_expr_nodes", "an expression is larger than allowed")
        if depth > max_depth:
            raise ExprLimitError("max_expr_depth", "an expression nests deeper than allowed")
        todo += [(c, depth + 1) for c in ast.iter_child_nodes(node)]
    return tree.body


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def evaluate(source: str, scope: Mapping[str, Any], budget: Budget | None = None) -> Any:
    """The value of one expression (the text inside ``${...}``) over the names in `scope`."""
    budget = budget or Budget(active_limits())
    lim = budget.limits
    tree = _parse(source, lim.max_expr_chars, lim.max_expr_nodes, lim.max_expr_depth)
    try:
        return _Eval(scope, budget).visit(tree)
    except ExprError:
        raise
    except (TypeError, ZeroDivisionError, IndexError, KeyError, ValueError,
            OverflowError) as e:
        raise ExprError(f"expression ${{{_short(source)}}} failed: {type(e).__name__}: "
                        f"{_short(str(e), 120)}") from None


class _Eval(ast.NodeVisitor):
    def __init__(self, scope: Mapping[str, Any], budget: Budget):
        self.scopes: list[Mapping[str, Any]] = [scope]
        self.budget, self.limits = budget, budget.limits
        self.int_bound = 10 ** self.limits.max_int_digits

    def visit(self, node: ast.AST) -> Any:
        self.budget.spend(1)
        return self.check(super().visit(node))

    def check(self, v: Any) -> Any:
        """Every value built is checked at once, before anything can grow it further."""
        if isinstance(v, int) and not isinstance(v, bool):
            if v >= self.int_bound or -v >= self.int_bound:
                raise ExprLimitError("max_int_digits", "an expression computes an integer "
                                     "larger than allowed")
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise ExprError("an expression computes a number that is not finite "
                                "(overflow, inf or nan)")
        elif isinstance(v, complex):
            raise ExprError("an expression computes a complex number")
        elif isinstance(v, str):
            if len(v) > self.limits.max_str_len:
                raise ExprLimitError("max_str_len", "an expression computes a string longer "
                                     "than allowed")
        elif isinstance(v, (list, tuple, dict)):
            if len(v) > self.limits.max_seq_len:
                raise ExprLimitError("max_seq_len", "an expression computes a list longer "
                                     "than allowed")
            self.budget.spend(len(v) // _ITEMS_PER_STEP)
        return v

    def generic_visit(self, node: ast.AST) -> Any:
        raise ExprError(f"'{type(node).__name__}' is not allowed in spec expressions")

    def visit_Constant(self, node: ast.Constant) -> Any:
        if not isinstance(node.value, (int, float, str, bool, type(None))):
            raise ExprError(f"{type(node.value).__name__} literals are not allowed")
        return node.value

    def visit_Name(self, node: ast.Name) -> Any:
        for scope in reversed(self.scopes):
            if node.id in scope:
                return scope[node.id]
        if node.id in ("true", "false"):
            return node.id == "true"
        known = sorted({k for s in self.scopes for k in s})
        hint = suggest(node.id, known)
        raise ExprError(f"unknown name {node.id!r} in expression; "
                        + (hint or f"known: {', '.join(known)}"))

    def visit_List(self, node: ast.List) -> Any:
        return [self.visit(e) for e in node.elts]

    visit_Tuple = visit_List

    def visit_Dict(self, node: ast.Dict) -> Any:
        if any(k is None for k in node.keys):
            raise ExprError("'**' in a mapping is not allowed in spec expressions")
        return {self.visit(k): self.visit(v) for k, v in zip(node.keys, node.values, strict=True)}

    def visit_BinOp(self, node: ast.BinOp) -> Any:
        op = _BINOPS.get(type(node.op))
        if op is None:
            raise ExprError(f"operator {type(node.op).__name__} is not allowed")
        left, right = self.visit(node.left), self.visit(node.right)
        return self.binop(op, left, right)

    def binop(self, op: Any, left: Any, right: Any) -> Any:
        """`op` after checking that its result stays within the limits (size known first)."""
        seqs = (str, list, tuple, Prefix)
        left = list(left) if isinstance(left, Prefix) else left
        right = list(right) if isinstance(right, Prefix) else right
        if op is operator.mod and isinstance(left, str):
            raise ExprError("'%' formatting of strings is not allowed; use '${...}' inside text")
        if op is operator.mul and isinstance(left, int) and isinstance(right, seqs):
            left, right = right, left
        if op is operator.mul and isinstance(left, seqs) and isinstance(right, int):
            self.size_check(left, len(left) * max(right, 0))
        if op is operator.add and isinstance(left, seqs) and isinstance(right, seqs):
            self.size_check(left, len(left) + len(right))
        if op is operator.pow and isinstance(right, (int, float)):
            if abs(right) > _MAX_POW:
                raise ExprError(f"exponent {right} is too large")
            if isinstance(left, int) and isinstance(right, int) and right > 0 and (
                    (abs(left).bit_length() - 1) * right > 3.33 * self.limits.max_int_digits):
                raise ExprLimitError("max_int_digits", "an expression computes an integer "
                                     "larger than allowed")
        return op(left, right)

    def size_check(self, like: Any, n: int) -> None:
        name = "max_str_len" if isinstance(like, str) else "max_seq_len"
        if n > getattr(self.limits, name):
            kind = "string" if isinstance(like, str) else "list"
            raise ExprLimitError(name, f"an expression computes a {kind} longer than allowed")
        self.budget.spend(n // _ITEMS_PER_STEP)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> Any:
        return _UNOPS[type(node.op)](self.visit(node.operand))

    def visit_BoolOp(self, node: ast.BoolOp) -> Any:
        if isinstance(node.op, ast.And):
            value = True
            for v in node.values:
                value = self.visit(v)
                if not value:
                    return value
            return value
        value = False
        for v in node.values:
            value = self.visit(v)
            if value:
                return value
        return value

    def visit_Compare(self, node: ast.Compare) -> Any:
        left = self.visit(node.left)
        for op, comp in zip(node.ops, node.comparators, strict=True):
            right = self.visit(comp)
            if not _CMPOPS[type(op)](left, right):
                return False
            left = right
        return True

    def visit_IfExp(self, node: ast.IfExp) -> Any:
        return self.visit(node.body) if self.visit(node.test) else self.visit(node.orelse)

    def visit_Subscript(self, node: ast.Subscript) -> Any:
        return self.visit(node.value)[self.visit(node.slice)]

    def visit_Slice(self, node: ast.Slice) -> Any:
        part = [None if p is None else self.visit(p) for p in (node.lower, node.upper, node.step)]
        return slice(*part)

    def visit_Call(self, node: ast.Call) -> Any:
        if not isinstance(node.func, ast.Name) or node.func.id not in _CALLS or node.keywords:
            raise ExprError(f"only the calls {', '.join(_CALLS)} are allowed")
        if any(isinstance(a, ast.Starred) for a in node.args):
            raise ExprError("'*' arguments are not allowed in spec expressions")
        args = [self.visit(a) for a in node.args]
        name = node.func.id
        if name == "range":
            if not args or len(args) > 3 or not all(
                    isinstance(a, int) and not isinstance(a, bool) for a in args):
                raise ExprError("range() takes one to three integers")
            items = range(*args)
            if len(items) > _MAX_RANGE:
                raise ExprError(f"range() is limited to {_MAX_RANGE} items in specs")
            self.size_check(items, len(items))
            return list(items)
        if name == "sum":
            if not 1 <= len(args) <= 2:
                raise ExprError("sum() takes an iterable and an optional start")
            total = args[1] if len(args) == 2 else 0
            for item in self.iterate(args[0]):
                total = self.check(self.binop(operator.add, total, item))
            return total
        if name in ("min", "max"):
            if len(args) == 1:
                args = list(self.iterate(args[0]))
            return (min if name == "min" else max)(args)
        fn = {"abs": abs, "int": int, "len": len}[name]
        if len(args) != 1:
            raise ExprError(f"{name}() takes one argument")
        return fn(args[0])

    def iterate(self, value: Any) -> Iterator:
        if isinstance(value, (str, list, tuple, dict, Prefix)):
            return iter(value)
        raise ExprError(f"cannot iterate over a {type(value).__name__}")

    def visit_ListComp(self, node: ast.ListComp) -> Any:
        if len(node.generators) != 1 or node.generators[0].is_async:
            raise ExprError("only single-loop list comprehensions are allowed")
        gen = node.generators[0]
        if not isinstance(gen.target, ast.Name):
            raise ExprError("comprehension targets must be plain names")
        out: list = []
        for item in self.iterate(self.visit(gen.iter)):
            self.scopes.append({gen.target.id: item})
            try:
                if all(self.visit(cond) for cond in gen.ifs):
                    out.append(self.visit(node.elt))
            finally:
                self.scopes.pop()
            if len(out) > self.limits.max_seq_len:
                self.check(out)
        return out
