"""The condition language of spec files.

Conditions are Python-looking expressions (``vcpus[0].mode == IN_GUEST_MODE``)
parsed with :mod:`ast` and evaluated by a small tree walker over a whitelist
of node types. Nothing is ever passed to ``eval``: a spec file is data, and a
KVM engineer must be able to read every construct it can contain.

Allowed: literals (numbers, strings, True/False/None, tuples, lists, sets),
names, attribute access, indexing, arithmetic and bit operators, comparisons
(including ``in`` and chained ones), ``and``/``or``/``not``, ``x if c else y``,
generator expressions inside calls (``all(v.mode == 0 for v in vcpus)``) and
calls of the functions in :data:`FUNCTIONS`.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import EvalError, ExprError


def _count(iterable: Any) -> int:
    return sum(1 for x in iterable if x)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "all": all,
    "any": any,
    "len": len,
    "count": _count,
    "sum": sum,
    "min": min,
    "max": max,
    "abs": abs,
    "set": frozenset,
    "sorted": sorted,
    "zip": zip,
    "range": range,
    "enumerate": enumerate,
}

_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.BitAnd: operator.and_,
    ast.BitOr: operator.or_,
    ast.BitXor: operator.xor,
    ast.LShift: operator.lshift,
    ast.RShift: operator.rshift,
}

_CMPOPS: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}

_UNARY: dict[type, Callable[[Any], Any]] = {
    ast.Not: operator.not_,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
    ast.Invert: operator.invert,
}

_ALLOWED = (
    ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.BinOp, ast.UnaryOp,
    ast.Compare, ast.IfExp, ast.Call, ast.Name, ast.Load, ast.Store,
    ast.Constant, ast.Attribute, ast.Subscript, ast.Tuple, ast.List, ast.Set,
    ast.GeneratorExp, ast.comprehension, ast.Slice,
    *_BINOPS, *_CMPOPS, *_UNARY,
)

ALLOWED_SYNTAX = (
    "literals, names, a.b, a[i], + - * // % & | ^ << >>, comparisons and 'in', "
    "and/or/not, 'x if c else y', generator expressions, and the functions "
    + ", ".join(sorted(FUNCTIONS))
)


@dataclass(frozen=True)
class Expr:
    """A parsed, validated condition; call :meth:`evaluate` with a namespace."""

    source: str
    tree: ast.Expression
    names: frozenset[str]

    def evaluate(self, env: Mapping[str, Any]) -> Any:
        try:
            return _eval(self.tree.body, env)
        except EvalError:
            raise
        except Exception as exc:  # any runtime fault of the condition itself
            raise EvalError(f"{type(exc).__name__}: {exc}") from None

    def __str__(self) -> str:
        return self.source


def parse(source: str, known: Callable[[str], bool] | None = None) -> Expr:
    """Parse and check ``source``; ``known(name)`` says which free names exist."""
    if not isinstance(source, str) or not source.strip():
        raise ExprError("a condition must be a non-empty string")
    try:
        # Parenthesised so that a condition may span several lines of a TOML string.
        tree = ast.parse(f"(\n{source.strip()}\n)", mode="eval")
    except SyntaxError as exc:
        raise ExprError(f"syntax error in {source!r}: {exc.msg}") from None
    free: set[str] = set()
    _check(tree.body, frozenset(), free)
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            raise ExprError(
                f"{type(node).__name__} is not allowed in {source!r}; allowed: {ALLOWED_SYNTAX}"
            )
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            raise ExprError(f"private attribute {node.attr!r} is not allowed in {source!r}")
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                raise ExprError(
                    f"only these functions can be called: {', '.join(sorted(FUNCTIONS))} "
                    f"(in {source!r})"
                )
            if node.keywords:
                raise ExprError(f"keyword arguments are not allowed (in {source!r})")
    if known is not None:
        unknown = sorted(n for n in free if n not in FUNCTIONS and not known(n))
        if unknown:
            raise ExprError(f"unknown name {unknown[0]!r} in {source!r}")
    return Expr(source.strip(), tree, frozenset(free))


def _check(node: ast.AST, bound: frozenset[str], free: set[str]) -> None:
    """Collect the free names of ``node``, honouring generator-bound names."""
    if isinstance(node, ast.Name):
        if node.id not in bound:
            free.add(node.id)
        return
    if isinstance(node, ast.GeneratorExp):
        inner = bound
        for gen in node.generators:
            _check(gen.iter, inner, free)
            inner = inner | _targets(gen.target)
            for cond in gen.ifs:
                _check(cond, inner, free)
        _check(node.elt, inner, free)
        return
    for child in ast.iter_child_nodes(node):
        _check(child, bound, free)


def _targets(target: ast.AST) -> frozenset[str]:
    if isinstance(target, ast.Name):
        return frozenset([target.id])
    if isinstance(target, ast.Tuple):
        out: frozenset[str] = frozenset()
        for elt in target.elts:
            out |= _targets(elt)
        return out
    raise ExprError("a generator may only bind names or tuples of names")


def _eval(node: ast.AST, env: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in env:
            return env[node.id]
        if node.id in FUNCTIONS:
            return FUNCTIONS[node.id]
        raise EvalError(f"name {node.id!r} has no value here")
    if isinstance(node, ast.BoolOp):
        if isinstance(node.op, ast.And):
            value: Any = True
            for v in node.values:
                value = _eval(v, env)
                if not value:
                    return value
            return value
        value = False
        for v in node.values:
            value = _eval(v, env)
            if value:
                return value
        return value
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_eval(node.operand, env))
    if isinstance(node, ast.BinOp):
        return _BINOPS[type(node.op)](_eval(node.left, env), _eval(node.right, env))
    if isinstance(node, ast.Compare):
        left = _eval(node.left, env)
        for op, comp in zip(node.ops, node.comparators):
            right = _eval(comp, env)
            if not _CMPOPS[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        return _eval(node.body if _eval(node.test, env) else node.orelse, env)
    if isinstance(node, ast.Attribute):
        base = _eval(node.value, env)
        if isinstance(base, Mapping):
            if node.attr in base:
                return base[node.attr]
            raise EvalError(f"no field {node.attr!r} (fields: {', '.join(sorted(map(str, base)))})")
        try:
            return getattr(base, node.attr)
        except AttributeError:
            raise EvalError(f"{type(base).__name__} has no field {node.attr!r}") from None
    if isinstance(node, ast.Subscript):
        base = _eval(node.value, env)
        if isinstance(node.slice, ast.Slice):
            s = node.slice
            return base[slice(*(None if p is None else _eval(p, env) for p in (s.lower, s.upper, s.step)))]
        return base[_eval(node.slice, env)]
    if isinstance(node, ast.Tuple):
        return tuple(_eval(e, env) for e in node.elts)
    if isinstance(node, ast.List):
        return [_eval(e, env) for e in node.elts]
    if isinstance(node, ast.Set):
        return frozenset(_eval(e, env) for e in node.elts)
    if isinstance(node, ast.Call):
        func = FUNCTIONS[node.func.id]  # type: ignore[attr-defined]
        args = [
            _generator(a, env) if isinstance(a, ast.GeneratorExp) else _eval(a, env)
            for a in node.args
        ]
        return func(*args)
    if isinstance(node, ast.GeneratorExp):
        return _generator(node, env)
    raise EvalError(f"cannot evaluate {type(node).__name__}")


def _generator(node: ast.GeneratorExp, env: Mapping[str, Any]) -> list[Any]:
    out: list[Any] = []

    def loop(i: int, scope: Mapping[str, Any]) -> None:
        if i == len(node.generators):
            out.append(_eval(node.elt, scope))
            return
        gen = node.generators[i]
        for item in _eval(gen.iter, scope):
            inner = dict(scope)
            _bind(gen.target, item, inner)
            if all(_eval(c, inner) for c in gen.ifs):
                loop(i + 1, inner)

    loop(0, env)
    return out


def _bind(target: ast.AST, value: Any, scope: dict[str, Any]) -> None:
    if isinstance(target, ast.Name):
        scope[target.id] = value
        return
    values = tuple(value)
    elts = target.elts  # type: ignore[attr-defined]
    if len(values) != len(elts):
        raise EvalError(f"cannot unpack {len(values)} values into {len(elts)} names")
    for t, v in zip(elts, values):
        _bind(t, v, scope)
