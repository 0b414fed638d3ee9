"""Check a backend when it is chosen, as pluggy checks a hook implementation when it registers.

Only what can be seen without building a machine (which may open /dev/kvm): a backend that names
its ``machine_class`` (as the facet-composed backends do) gets

* an error for each operation its capabilities need that the class lacks, or whose method does
  not take the operation's declared arguments (the engine passes all of them), after ``ctx``
  where the machine dispatches with the composed machines' ``run_op``;
* a warning, with a "did you mean", for each public method a class outside pytest-kvmconf defines
  that overrides nothing: no operation, no machine hook, no method of the classes it builds on.
  A misspelt override in a broken variant otherwise silently changes nothing.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any

import pytest

from . import facets
from .backends.compose import FacetMachine

MACHINE_METHODS = frozenset({"run_op", "observe", "close"})


class BackendWarning(pytest.PytestWarning):
    """Something about the chosen backend that is probably a mistake (a misspelt override)."""


def _ours(cls: type) -> bool:
    return cls.__module__.split(".")[0] == "pytest_kvmconf"


def problems(backend: Any) -> tuple[list[str], list[str]]:
    """(errors, warnings) about ``backend``; both empty when it names no machine class."""
    cls = getattr(backend, "machine_class", None)
    if not isinstance(cls, type):
        return [], []
    label = f"backend {getattr(backend, 'name', '?')!r} ({cls.__qualname__})"
    caps = set(getattr(backend, "capabilities", ()))
    ops = facets.all_ops()
    composed = getattr(cls, "run_op", None) is FacetMachine.run_op
    errors = []
    for op in sorted(ops.values(), key=lambda o: o.name):
        if op.facet not in caps:
            continue
        method = getattr(cls, op.name, None)
        if method is None:
            errors.append(f"{label} declares capability {op.facet!r} but has no operation {op.name}")
            continue
        try:
            signature = inspect.signature(method)
        except ValueError:  # no signature to read (a builtin): nothing to check
            continue
        args = {a.name: a.default for a in op.args}
        # The composed machines' run_op passes ctx first; a machine with its own run_op may not.
        conventions = [(None, None)] if composed else [(None, None), (None,)]
        for leading in conventions:
            try:
                signature.bind(*leading, **args)
                break
            except TypeError as exc:
                failure = exc
        else:
            declared = ", ".join(["ctx", *args] if composed else args)
            errors.append(f"{label}: {op.name} must take ({declared}): {failure}")
    warnings = []
    inherited: set[str] = set()
    for base in cls.__mro__[1:]:
        inherited |= {n for n in vars(base) if not n.startswith("_")}
    known = inherited | set(ops) | MACHINE_METHODS
    for klass in reversed(cls.__mro__):
        if _ours(klass) or klass is object:
            continue
        for name, value in vars(klass).items():
            if name.startswith("_") or not callable(value) or name.startswith(("init_", "observe_")):
                continue
            owners = {n for base in klass.__mro__[1:] for n in vars(base)}
            if name in owners or name in ops or name in MACHINE_METHODS:
                continue
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
            if close:
                warnings.append(f"{label}: {klass.__qualname__}.{name} overrides nothing and no operation has "
                                f"that name (did you mean {close[0]!r}?)")
    return errors, warnings
