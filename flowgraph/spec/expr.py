r"""`${...}` expressions in specs: a small, safe subset of Python evaluated over spec variables.

A string that is exactly ``${expr}`` becomes the value of `expr` (any type: int, bool, list, a
mapping, a tensor reference); a string with ``${expr}`` inside other text is interpolated.
Allowed: literals, names, lists/tuples/dicts, arithmetic, comparisons, ``and/or/not``,
``a if c else b``, subscripts and slices, list comprehensions, and the calls ``min``, ``max``,
``len``, ``range``, ``int``, ``abs``, ``sum``. Nothing else (no attributes, no imports), so a
spec can never run code.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["ExprError", "evaluate", "has_expr", "substitute"]

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
_FUNCS = {"min": min, "max": max, "len": len, "range": lambda *a: list(range(*a)), "int": int,
          "abs": abs, "sum": sum}
_MAX_POW = 64


class ExprError(ValueError):
    """An expression could not be parsed or evaluated; the message says why."""


def has_expr(value: Any) -> bool:
    return isinstance(value, str) and "${" in value


def substitute(value: Any, scope: Mapping[str, Any]) -> Any:
    """Recursively replace ``${...}`` in strings of `value` (lists and mappings walked)."""
    if isinstance(value, str):
        full = _FULL.match(value)
        if full and "${" not in full.group(1):
            return evaluate(full.group(1), scope)
        if "${" in value:
            return _PART.sub(lambda m: _to_text(evaluate(m.group(1), scope)), value)
        return value
    if isinstance(value, list):
        return [substitute(v, scope) for v in value]
    if isinstance(value, Mapping):
        return {k: substitute(v, scope) for k, v in value.items()}
    return value


def _to_text(v: Any) -> str:
    if isinstance(v, (list, tuple, dict)):
        raise ExprError(f"cannot interpolate a {type(v).__name__} inside text; "
                        "use the whole string '${...}' to insert a list or mapping")
    return str(v)


def evaluate(source: str, scope: Mapping[str, Any]) -> Any:
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as e:
        raise ExprError(f"invalid expression ${{{source}}}: {e.msg}") from None
    try:
        return _Eval(scope).visit(tree.body)
    except ExprError:
        raise
    except (TypeError, ZeroDivisionError, IndexError, KeyError, ValueError) as e:
        raise ExprError(f"expression ${{{source}}} failed: {type(e).__name__}: {e}") from None


class _Eval(ast.NodeVisitor):
    def __init__(self, scope: Mapping[str, Any]):
        self.scopes: list[Mapping[str, Any]] = [scope]

    def generic_visit(self, node: ast.AST) -> Any:
        raise ExprError(f"'{type(node).__name__}' is not allowed in spec expressions")

    def visit_Constant(self, node: ast.Constant) -> Any:
        return node.value

    def visit_Name(self, node: ast.Name) -> Any:
        for scope in reversed(self.scopes):
            if node.id in scope:
                return scope[node.id]
        if node.id in ("true", "false"):
            return node.id == "true"
        known = sorted({k for s in self.scopes for k in s})
        raise ExprError(f"unknown name {node.id!r} in expression; known: {', '.join(known)}")

    def visit_List(self, node: ast.List) -> Any:
        return [self.visit(e) for e in node.elts]

    visit_Tuple = visit_List

    def visit_Dict(self, node: ast.Dict) -> Any:
        return {self.visit(k): self.visit(v) for k, v in zip(node.keys, node.values, strict=True)}

    def visit_BinOp(self, node: ast.BinOp) -> Any:
        op = _BINOPS.get(type(node.op))
        if op is None:
            raise ExprError(f"operator {type(node.op).__name__} is not allowed")
        left, right = self.visit(node.left), self.visit(node.right)
        if op is operator.pow and isinstance(right, (int, float)) and abs(right) > _MAX_POW:
            raise ExprError(f"exponent {right} is too large")
        return op(left, right)

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
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCS or node.keywords:
            raise ExprError(f"only the calls {', '.join(sorted(_FUNCS))} are allowed")
        args = [self.visit(a) for a in node.args]
        if node.func.id == "range" and args and max(abs(int(a)) for a in args) > 100_000:
            raise ExprError("range() is limited to 100000 items in specs")
        return _FUNCS[node.func.id](*args)

    def visit_ListComp(self, node: ast.ListComp) -> Any:
        if len(node.generators) != 1 or node.generators[0].is_async:
            raise ExprError("only single-loop list comprehensions are allowed")
        gen = node.generators[0]
        if not isinstance(gen.target, ast.Name):
            raise ExprError("comprehension targets must be plain names")
        out = []
        for item in self.visit(gen.iter):
            self.scopes.append({gen.target.id: item})
            try:
                if all(self.visit(cond) for cond in gen.ifs):
                    out.append(self.visit(node.elt))
            finally:
                self.scopes.pop()
        return out
