"""Why a condition failed: the values of its sub-expressions, as pytest shows them for ``assert``.

Run on the failure path only: the condition is parsed again from its source and its parts are
evaluated one by one against the names it was judged with (through :func:`spec.expr.parse`, so
the condition language stays the evaluator's business). ``and`` shows the first false part,
``or`` every part, a comparison both sides, and ``all``/``any`` over a generator the first
element that decides it, with the loop variables of that element.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from typing import Any

from .spec.expr import FUNCTIONS, EvalError, ExprError, parse

#: Lines at most: an explanation is read, not scrolled.
MAX_LINES = 16
MAX_VALUE = 160


def explain(source: str, env: Mapping[str, Any], expected: bool,
            name_value: Callable[[str, Any], str] | None = None) -> list[str]:
    """Lines ``<sub-expression> = <value>`` saying why ``source`` was not ``expected``."""
    try:
        tree = ast.parse(f"(\n{source.strip()}\n)", mode="eval")
    except SyntaxError:
        return []
    shown: list[tuple[str, str]] = []
    _Explainer(env, shown, name_value or (lambda _s, v: _short(v))).visit(tree.body, env, expected)
    out, seen = [], set()
    for text, value in shown:
        if (text, value) in seen:
            continue
        seen.add((text, value))
        out.append(f"{text} = {value}" if text else value)
    if len(out) > MAX_LINES:
        out = out[:MAX_LINES - 1] + [f"... ({len(out) - MAX_LINES + 1} more)"]
    return out


def _short(value: Any) -> str:
    if isinstance(value, frozenset | set):
        text = "{" + ", ".join(map(str, sorted(value, key=str))) + "}"
    elif isinstance(value, str):
        text = repr(value)
    else:
        text = str(value)
    return text if len(text) <= MAX_VALUE else text[:MAX_VALUE - 3] + "..."


class _Explainer:
    def __init__(self, env: Mapping[str, Any], shown: list[tuple[str, str]],
                 name_value: Callable[[str, Any], str]):
        self.shown, self.name_value = shown, name_value

    def value(self, node: ast.AST, env: Mapping[str, Any]) -> Any:
        return parse(ast.unparse(node)).evaluate(env)

    def show(self, node: ast.AST, env: Mapping[str, Any]) -> Any:
        """Record ``node = value`` (literals need no explanation) and return the value."""
        try:
            value = self.value(node, env)
        except (EvalError, ExprError) as exc:
            self.shown.append((ast.unparse(node), f"<could not be evaluated: {exc}>"))
            return None
        if not isinstance(node, ast.Constant):
            text = ast.unparse(node)
            self.shown.append((text, self.name_value(text, value)))
        if isinstance(node, ast.BinOp | ast.Call | ast.UnaryOp):  # what the arithmetic or call read
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.Name | ast.Attribute | ast.Subscript | ast.BinOp) \
                        and not (isinstance(child, ast.Name) and child.id in FUNCTIONS):
                    self.show(child, env)
        return value

    def visit(self, node: ast.AST, env: Mapping[str, Any], expected: bool) -> None:
        """Explain why ``node`` is not ``expected`` (truthiness)."""
        try:
            if isinstance(node, ast.BoolOp):
                return self.boolop(node, env, expected)
            if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
                return self.visit(node.operand, env, not expected)
            if isinstance(node, ast.Compare):
                for part in (node.left, *node.comparators):
                    self.show(part, env)
                return None
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("all", "any") \
                    and len(node.args) == 1 and isinstance(node.args[0], ast.GeneratorExp):
                return self.quantifier(node.func.id, node.args[0], env, expected)
            if isinstance(node, ast.IfExp):
                test = bool(self.show(node.test, env))
                return self.visit(node.body if test else node.orelse, env, expected)
        except (EvalError, ExprError) as exc:
            self.shown.append((ast.unparse(node), f"<could not be evaluated: {exc}>"))
            return None
        self.show(node, env)
        return None

    def boolop(self, node: ast.BoolOp, env: Mapping[str, Any], expected: bool) -> None:
        # A false `and` (a true `or`) is decided by its first false (true) part; a true `and`
        # (a false `or`) by all of them.
        deciding_first = isinstance(node.op, ast.And) == expected
        for part in node.values:
            truth = bool(self.value(part, env))
            if deciding_first and truth != expected:
                self.visit(part, env, expected)
                return
            if not deciding_first:
                self.visit(part, env, expected)
        if deciding_first:  # no single part decided it; show them all
            for part in node.values:
                self.visit(part, env, expected)

    def quantifier(self, func: str, gen: ast.GeneratorExp, env: Mapping[str, Any], expected: bool) -> None:
        # all(...) is false / any(...) is true by one element: find it and show its loop variables.
        witness_truth = func == "any"
        if expected == witness_truth:  # any(...) false / all(...) true: no single element decides
            self.shown.append(("", f"no element of {ast.unparse(gen)} is {str(witness_truth).lower()}"))
            return
        for scope in self.bindings(gen, 0, env):
            if bool(self.value(gen.elt, scope)) == witness_truth:
                names = sorted(set(scope) - set(env))
                where = ", ".join(f"{n} = {_short(scope[n])}" for n in names)
                self.shown.append(("", f"{func}(...) is decided by the element where {where}:"))
                self.visit(gen.elt, scope, not witness_truth)
                return

    def bindings(self, gen: ast.GeneratorExp, i: int, env: Mapping[str, Any]):
        if i == len(gen.generators):
            yield env
            return
        comp = gen.generators[i]
        for item in self.value(comp.iter, env):
            scope = dict(env)
            _bind(comp.target, item, scope)
            if all(self.value(c, scope) for c in comp.ifs):
                yield from self.bindings(gen, i + 1, scope)


def _bind(target: ast.AST, value: Any, scope: dict[str, Any]) -> None:
    if isinstance(target, ast.Name):
        scope[target.id] = value
        return
    for t, v in zip(target.elts, tuple(value)):  # type: ignore[attr-defined]
        _bind(t, v, scope)
