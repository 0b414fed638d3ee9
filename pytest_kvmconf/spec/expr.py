"""The condition language of spec files.

Conditions are Python-looking expressions (``vcpus[0].mode == IN_GUEST_MODE``)
parsed with :mod:`ast`, checked against a whitelist of node types, and
compiled once into a tree of small Python closures (one per node) that each
evaluation calls. Nothing is ever passed to ``eval``: a spec file is data, and
a KVM engineer must be able to read every construct it can contain.

A spec file comes from a user, so a condition runs within a budget: its text
and nesting are bounded when it is parsed; when it runs, integers stay below
:data:`MAX_INT_BITS` bits, strings, lists and ranges below :data:`MAX_ITEMS`
items, and an evaluation takes at most :data:`MAX_STEPS` loop iterations. Past
that it fails with :class:`~pytest_kvmconf.errors.BudgetExceeded` naming the
condition, instead of running for hours or exhausting memory.

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
from dataclasses import dataclass, field
from typing import Any

from ..errors import BudgetExceeded, EvalError, ExprError

#: Longest condition text, and deepest nesting of its syntax tree (each operator of a chain such
#: as a + b + c or not not x is one level).
MAX_SOURCE = 10_000
MAX_DEPTH = 100
#: Largest integer (in bits), string/list/range (in items), and loop iterations of one evaluation.
MAX_INT_BITS = 4096
MAX_ITEMS = 100_000
MAX_STEPS = 200_000


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
    _fn: Callable[[Mapping[str, Any], list[int]], Any] | None = field(default=None, compare=False, repr=False)

    def evaluate(self, env: Mapping[str, Any]) -> Any:
        fn = self._fn
        if fn is None:  # built by hand rather than by parse()
            fn = _compile(self.tree.body)
            object.__setattr__(self, "_fn", fn)
        try:
            return fn(env, [MAX_STEPS])
        except BudgetExceeded as exc:
            over = BudgetExceeded(f"condition exceeded its budget: {exc} (in {_short(self.source)})")
            over.source = self.source  # type: ignore[attr-defined]
            raise over from None
        except EvalError as exc:
            exc.source = self.source  # type: ignore[attr-defined]
            raise
        except RecursionError:
            raise BudgetExceeded(f"condition exceeded its budget: nested too deeply (in {_short(self.source)})") \
                from None
        except MemoryError:
            raise BudgetExceeded(f"condition exceeded its budget: out of memory (in {_short(self.source)})") \
                from None
        except Exception as exc:  # any runtime fault of the condition itself
            raise EvalError(f"{type(exc).__name__}: {exc}") from None

    def __str__(self) -> str:
        return self.source


def parse(source: str, known: Callable[[str], bool] | None = None) -> Expr:
    """Parse and check ``source``; ``known(name)`` says which free names exist."""
    if not isinstance(source, str) or not source.strip():
        raise ExprError("a condition must be a non-empty string")
    if len(source) > MAX_SOURCE:
        raise ExprError(f"a condition may be at most {MAX_SOURCE} characters long "
                        f"(this one has {len(source)}: {source[:60]!r}...)")
    try:
        # Parenthesised so that a condition may span several lines of a TOML string.
        tree = ast.parse(f"(\n{source.strip()}\n)", mode="eval")
    except SyntaxError as exc:
        raise ExprError(f"syntax error in {_short(source)}: {exc.msg}") from None
    except (RecursionError, MemoryError, ValueError) as exc:  # the parser's own limits
        raise ExprError(f"{_short(source)} cannot be parsed: {type(exc).__name__}: {exc}") from None
    depth = _depth(tree.body)
    if depth > MAX_DEPTH:
        raise ExprError(f"{_short(source)} nests more than {MAX_DEPTH} levels deep (each operator of a "
                        "chain such as a + b + c or not not x is a level): split it")
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
    return Expr(source.strip(), tree, frozenset(free), _compile(tree.body))


def _short(source: str) -> str:
    return repr(source) if len(source) <= 200 else f"{source[:100]!r}... ({len(source)} characters)"


def _depth(root: ast.AST) -> int:
    """The syntax tree's depth, up to MAX_DEPTH + 1, without recursion (the tree may be deeper
    than Python's stack)."""
    deepest, todo = 0, [(root, 1)]
    while todo:
        node, d = todo.pop()
        deepest = max(deepest, d)
        if d <= MAX_DEPTH:
            todo.extend((c, d + 1) for c in ast.iter_child_nodes(node))
    return deepest


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


# -- compilation: one closure per node, called with (env, steps left) --------------------

_Fn = Callable[[Mapping[str, Any], list[int]], Any]
_SEQUENCES = (str, list, tuple)


def _too_big(what: str) -> BudgetExceeded:
    return BudgetExceeded(what)


def _range(*args: int) -> range:
    r = range(*args)
    try:
        n = len(r)
    except OverflowError:
        n = MAX_ITEMS + 1
    if n > MAX_ITEMS:
        raise _too_big(f"range({', '.join(map(str, args))}) has more than {MAX_ITEMS} items")
    return r


def _add(a: Any, b: Any) -> Any:
    if type(a) is int and type(b) is int:
        return a + b
    if isinstance(a, _SEQUENCES) and isinstance(b, _SEQUENCES) and len(a) + len(b) > MAX_ITEMS:
        raise _too_big(f"a sequence of {len(a) + len(b)} items (more than {MAX_ITEMS})")
    return a + b


def _mul(a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int):
        if a.bit_length() + b.bit_length() > MAX_INT_BITS:
            raise _too_big(f"an integer of more than {MAX_INT_BITS} bits")
        return a * b
    seq, n = (a, b) if isinstance(a, _SEQUENCES) else (b, a)
    if isinstance(seq, _SEQUENCES) and isinstance(n, int) and len(seq) * n > MAX_ITEMS:
        raise _too_big(f"a sequence of {len(seq) * n} items (more than {MAX_ITEMS})")
    return a * b


def _lshift(a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int) and a and b > 0 and a.bit_length() + b > MAX_INT_BITS:
        raise _too_big(f"an integer of more than {MAX_INT_BITS} bits")
    return a << b


_BUDGETED_BINOPS = {**_BINOPS, ast.Add: _add, ast.Mult: _mul, ast.LShift: _lshift}
_CALLABLE = {**FUNCTIONS, "range": _range}


def _compile(node: ast.AST) -> _Fn:
    if isinstance(node, ast.Constant):
        value = node.value
        return lambda env, steps: value
    if isinstance(node, ast.Name):
        return _name(node.id)
    if isinstance(node, ast.BoolOp):
        return _boolop(isinstance(node.op, ast.And), [_compile(v) for v in node.values])
    if isinstance(node, ast.UnaryOp):
        op, operand = _UNARY[type(node.op)], _compile(node.operand)
        return lambda env, steps: op(operand(env, steps))
    if isinstance(node, ast.BinOp):
        op, left, right = _BUDGETED_BINOPS[type(node.op)], _compile(node.left), _compile(node.right)
        return lambda env, steps: op(left(env, steps), right(env, steps))
    if isinstance(node, ast.Compare):
        return _compare(_compile(node.left), [(_CMPOPS[type(o)], _compile(c))
                                               for o, c in zip(node.ops, node.comparators)])
    if isinstance(node, ast.IfExp):
        test, body, orelse = _compile(node.test), _compile(node.body), _compile(node.orelse)
        return lambda env, steps: body(env, steps) if test(env, steps) else orelse(env, steps)
    if isinstance(node, ast.Attribute):
        return _attribute(_compile(node.value), node.attr)
    if isinstance(node, ast.Subscript):
        base = _compile(node.value)
        if isinstance(node.slice, ast.Slice):
            s = node.slice
            parts = [None if p is None else _compile(p) for p in (s.lower, s.upper, s.step)]
            return lambda env, steps: base(env, steps)[
                slice(*(None if p is None else p(env, steps) for p in parts))]
        index = _compile(node.slice)
        return lambda env, steps: base(env, steps)[index(env, steps)]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        kind = {ast.Tuple: tuple, ast.List: list, ast.Set: frozenset}[type(node)]
        elts = [_compile(e) for e in node.elts]
        return lambda env, steps: kind([e(env, steps) for e in elts])
    if isinstance(node, ast.Call):
        func = _CALLABLE[node.func.id]  # type: ignore[attr-defined]
        args = [_compile(a) for a in node.args]
        return lambda env, steps: func(*[a(env, steps) for a in args])
    if isinstance(node, ast.GeneratorExp):
        return _generator(node)
    raise ExprError(f"cannot evaluate {type(node).__name__}")


def _name(name: str) -> _Fn:
    function = FUNCTIONS.get(name)

    def value(env: Mapping[str, Any], steps: list[int]) -> Any:
        try:
            return env[name]
        except KeyError:
            if function is not None:
                return function
            raise EvalError(f"name {name!r} has no value here") from None

    return value


def _boolop(is_and: bool, values: list[_Fn]) -> _Fn:
    if is_and:
        def all_of(env: Mapping[str, Any], steps: list[int]) -> Any:
            value: Any = True
            for v in values:
                value = v(env, steps)
                if not value:
                    return value
            return value

        return all_of

    def any_of(env: Mapping[str, Any], steps: list[int]) -> Any:
        value: Any = False
        for v in values:
            value = v(env, steps)
            if value:
                return value
        return value

    return any_of


def _compare(first: _Fn, rest: list[tuple[Callable[[Any, Any], bool], _Fn]]) -> _Fn:
    if len(rest) == 1:
        (op, second), = rest
        return lambda env, steps: op(first(env, steps), second(env, steps))

    def chain(env: Mapping[str, Any], steps: list[int]) -> bool:
        left = first(env, steps)
        for op, comp in rest:
            right = comp(env, steps)
            if not op(left, right):
                return False
            left = right
        return True

    return chain


def _attribute(base_fn: _Fn, attr: str) -> _Fn:
    def get(env: Mapping[str, Any], steps: list[int]) -> Any:
        base = base_fn(env, steps)
        if isinstance(base, Mapping):
            if attr in base:
                return base[attr]
            exc = EvalError(f"no field {attr!r} (fields: {', '.join(sorted(map(str, base)))})")
            exc.field = attr  # type: ignore[attr-defined]
            raise exc
        try:
            return getattr(base, attr)
        except AttributeError:
            exc = EvalError(f"{type(base).__name__} has no field {attr!r}")
            exc.field = attr  # type: ignore[attr-defined]
            raise exc from None

    return get


def _generator(node: ast.GeneratorExp) -> _Fn:
    levels = [(_compile(g.iter), _binder(g.target), [_compile(c) for c in g.ifs]) for g in node.generators]
    elt = _compile(node.elt)
    depth = len(levels)

    def run(env: Mapping[str, Any], steps: list[int]) -> list[Any]:
        out: list[Any] = []
        # One scope per evaluation: the loop names are rebound before anything reads them, and
        # nothing in the language keeps a scope beyond its item.
        scope = dict(env)

        def loop(i: int) -> None:
            if i == depth:
                out.append(elt(scope, steps))
                return
            it, bind, ifs = levels[i]
            for item in it(scope, steps):
                steps[0] -= 1
                if steps[0] < 0:
                    raise _too_big(f"more than {MAX_STEPS} loop iterations in one evaluation")
                bind(item, scope)
                for c in ifs:
                    if not c(scope, steps):
                        break
                else:
                    loop(i + 1)

        loop(0)
        return out

    return run


def _binder(target: ast.AST) -> Callable[[Any, dict[str, Any]], None]:
    if isinstance(target, ast.Name):
        name = target.id

        def bind_name(value: Any, scope: dict[str, Any]) -> None:
            scope[name] = value

        return bind_name
    inner = [_binder(t) for t in target.elts]  # type: ignore[attr-defined]

    def bind_tuple(value: Any, scope: dict[str, Any]) -> None:
        values = tuple(value)
        if len(values) != len(inner):
            raise EvalError(f"cannot unpack {len(values)} values into {len(inner)} names")
        for b, v in zip(inner, values):
            b(v, scope)

    return bind_tuple
