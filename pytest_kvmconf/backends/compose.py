"""A machine composed of facet mixins, and a backend that builds one: shared by the bundled backends.

A facet mixin provides one method per operation (named after it), an
``init_<facet>(config)`` method and an ``observe_<facet>()`` method returning
its part of the observable state. The composed machine calls every ``init_``
at creation, dispatches operations by name and merges every ``observe_``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..backend import MachineConfig, ThreadContext
from ..engine.memory import Memory
from ..spec.versions import KNOWN_VERSIONS, VersionRange


class FacetMachine:
    execution = "generator"
    #: how the backend is named in "no such operation" errors.
    backend_label = "this backend"

    def __init__(self, config: MachineConfig):
        self.config = config
        #: the shared memory the facets' modelled accesses and barriers go through.
        self.memory = Memory(config.memory_model)
        for name in _hooks(type(self), "init_"):
            getattr(self, name)(config)

    def run_op(self, ctx: ThreadContext, op: str, args: Mapping[str, Any]) -> Any:
        method = getattr(self, op, None)
        if method is None or op.startswith(("_", "init_", "observe_")):
            raise NotImplementedError(f"{self.backend_label} has no operation {op!r}")
        return method(ctx, **args)

    def observe(self) -> dict[str, Any]:
        # Observing is the engine's hottest call: only the facets the guarantee uses.
        out: dict[str, Any] = {}
        needs = self.config.needs
        for name in _hooks(type(self), "observe_"):
            if needs and needs.isdisjoint(OBSERVED_BY.get(name, (name[len("observe_"):],))):
                continue
            out.update(getattr(self, name)())
        return out

    def close(self) -> None:
        pass


#: observe_<name> methods that serve several capabilities (the default: the one named <name>).
OBSERVED_BY: dict[str, tuple[str, ...]] = {
    "observe_requests": ("requests", "kick", "run_loop", "block", "entry_sequence"),
    "observe_mp": ("mp", "system_events"),
}

_HOOKS: dict[tuple[type, str], tuple[str, ...]] = {}


def _hooks(cls: type, prefix: str) -> tuple[str, ...]:
    # dir() over a class with many mixins is slow, and machines are made per schedule.
    key = (cls, prefix)
    if key not in _HOOKS:
        _HOOKS[key] = tuple(sorted(n for n in dir(cls) if n.startswith(prefix)))
    return _HOOKS[key]


class FacetBackend:
    """A backend whose machines are instances of ``machine_class``; broken variants swap the class."""

    name = "facets"
    description = ""
    capabilities: frozenset[str] = frozenset()
    archs = frozenset({"x86_64", "arm64", "riscv"})
    doc_versions = VersionRange(KNOWN_VERSIONS[0])
    machine_class: type = FacetMachine

    def new_machine(self, config: MachineConfig) -> Any:
        return self.machine_class(config)
