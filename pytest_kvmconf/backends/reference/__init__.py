"""The ``reference`` backend: the executable model of the KVM documents.

Each facet's model is a mixin in its own module (``requests.py``, ...). A
mixin provides its operations as generator methods named after the
operation, an ``init_<facet>(config)`` method and an ``observe_<facet>()``
method returning its part of the observable state. :class:`ReferenceMachine`
composes them; broken variants in tests/ subclass it and override one rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...backend import MachineConfig, ThreadContext
from ...spec.versions import KNOWN_VERSIONS, VersionRange
from .attr import AttrModel
from .locking import LockingModel
from .mp import MpModel
from .requests import RequestsModel
from .spte import SpteModel

#: Facet mixins, in method resolution order. Add a facet here and its
#: capabilities to CAPABILITIES.
MIXINS: tuple[type, ...] = (RequestsModel, LockingModel, SpteModel, AttrModel, MpModel)
CAPABILITIES = frozenset({"requests", "kick", "run_loop", "block", "entry_sequence", "locking", "spte", "attr",
                          "mp", "system_events"})


class _Machine:
    execution = "generator"

    def __init__(self, config: MachineConfig):
        self.config = config
        for name in _hooks(type(self), "init_"):
            getattr(self, name)(config)

    def run_op(self, ctx: ThreadContext, op: str, args: Mapping[str, Any]) -> Any:
        method = getattr(self, op, None)
        if method is None or op.startswith(("_", "init_", "observe_")):
            raise NotImplementedError(f"the reference model has no operation {op!r}")
        return method(ctx, **args)

    def observe(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in _hooks(type(self), "observe_"):
            out.update(getattr(self, name)())
        return out

    def close(self) -> None:
        pass


_HOOKS: dict[tuple[type, str], tuple[str, ...]] = {}


def _hooks(cls: type, prefix: str) -> tuple[str, ...]:
    key = (cls, prefix)
    if key not in _HOOKS:
        _HOOKS[key] = tuple(sorted(n for n in dir(cls) if n.startswith(prefix)))
    return _HOOKS[key]


class ReferenceMachine(_Machine, *MIXINS):  # type: ignore[misc]
    """All facets of the reference model in one machine."""


class ReferenceBackend:
    name = "reference"
    description = "the executable model of the KVM documents (generator scheduling points)"
    capabilities = CAPABILITIES
    archs = frozenset({"x86_64", "arm64", "riscv"})
    doc_versions = VersionRange(KNOWN_VERSIONS[0])
    machine_class: type = ReferenceMachine

    def new_machine(self, config: MachineConfig) -> Any:
        return self.machine_class(config)
