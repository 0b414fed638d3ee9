"""The vocabulary shared by spec files and backends, split into facets.

A *facet* is one area of KVM's documented interface (the vCPU request API,
MP states, ...). It names the operations a spec may use in its threads, the
arguments and results of each, the constants conditions may mention and the
named sets parameters may be drawn from. A backend declares which facets it
implements (its *capabilities*); a guarantee whose operations need a facet the
backend lacks is skipped with that reason.

Each facet is a module here that calls :func:`register`. Spec validation only
reads this registry, so adding an operation is one entry in one facet module
plus its implementation in the backends.

A facet also declares its *steps*: the small methods, below the operations,
that the bundled backends (reference and threaded) both implement under the
same name and with the same parameters, each named after the kernel function
it models. Operations and steps together are what a broken variant may
override; every other method of a bundled backend is private (a leading
underscore). CONTRIBUTING.md tabulates them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Argument types. Each maps to a check of a literal value from TOML; string
#: values are expressions, evaluated against the example's parameters.
ARG_TYPES: dict[str, Callable[[Any], bool]] = {
    "vcpu": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    "req": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "any": lambda v: True,
}


@dataclass(frozen=True)
class Arg:
    name: str
    type: str
    optional: bool = False
    default: Any = None
    doc: str = ""


@dataclass(frozen=True)
class Op:
    """One operation of the backend vocabulary.

    ``vcpu_thread`` marks operations the documents say only the vCPU's own
    thread performs (the run loop, kvm_vcpu_block, kvm_check_request): a spec
    must call them from a thread declared with that ``vcpu``.
    """

    name: str
    facet: str
    args: tuple[Arg, ...]
    returns: str
    doc: str
    vcpu_thread: bool = False

    def arg(self, name: str) -> Arg | None:
        return next((a for a in self.args if a.name == name), None)


@dataclass(frozen=True)
class Step:
    """One overridable step of the bundled backends of a facet.

    ``args`` are the parameters after ``self``, the same in every bundled backend. A step with
    ``points`` contains scheduling points: a generator to ``yield from`` in the generator model,
    a plain call that calls ``point()`` in the threaded backend; the other steps return at once
    and read the same in both. ``kernel`` names the kernel function (or code) it models.
    """

    name: str
    facet: str
    args: tuple[str, ...]
    returns: str
    kernel: str
    doc: str
    points: bool = False


@dataclass
class Facet:
    name: str
    doc: str
    ops: dict[str, Op] = field(default_factory=dict)
    #: name -> value, or name -> {doc_version_predicate} resolved by :func:`constants_for`.
    constants: dict[str, Any] = field(default_factory=dict)
    #: name -> function(doc_version) -> tuple of values.
    named_sets: dict[str, Callable[[str], tuple[Any, ...]]] = field(default_factory=dict)
    #: observable name -> one-line description, for CONTRIBUTING and error messages.
    observables: dict[str, str] = field(default_factory=dict)
    #: capabilities this facet's specs may also ask for (beyond the facet name).
    extra_capabilities: dict[str, str] = field(default_factory=dict)
    #: name -> the overridable steps of the bundled backends (see :class:`Step`).
    steps: dict[str, Step] = field(default_factory=dict)

    def op(self, name: str, args: list[Arg] | tuple[Arg, ...], returns: str, doc: str,
           vcpu_thread: bool = False) -> None:
        self.ops[name] = Op(name, self.name, tuple(args), returns, doc, vcpu_thread)

    def step(self, name: str, args: tuple[str, ...], returns: str, kernel: str, doc: str,
             points: bool = False) -> None:
        self.steps[name] = Step(name, self.name, args, returns, kernel, doc, points)


FACETS: dict[str, Facet] = {}


def register(facet: Facet) -> Facet:
    FACETS[facet.name] = facet
    return facet


def all_ops() -> Mapping[str, Op]:
    _load()
    return {name: op for f in FACETS.values() for name, op in f.ops.items()}


def all_constants() -> Mapping[str, Any]:
    _load()
    out: dict[str, Any] = {}
    for f in FACETS.values():
        out.update(f.constants)
    return out


def all_named_sets() -> Mapping[str, Callable[[str], tuple[Any, ...]]]:
    _load()
    return {n: fn for f in FACETS.values() for n, fn in f.named_sets.items()}


def all_capabilities() -> Mapping[str, str]:
    _load()
    out = {f.name: f.doc for f in FACETS.values()}
    for f in FACETS.values():
        out.update(f.extra_capabilities)
    return out


def all_steps() -> Mapping[str, Step]:
    _load()
    return {name: s for f in FACETS.values() for name, s in f.steps.items()}


def all_observables() -> Mapping[str, str]:
    _load()
    return {n: d for f in FACETS.values() for n, d in f.observables.items()}


_loaded = False


def _load() -> None:
    # Facet modules register themselves on import; importing lazily keeps
    # `import pytest_kvmconf` cheap and avoids import cycles.
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")
