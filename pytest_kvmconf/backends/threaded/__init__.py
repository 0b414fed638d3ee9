"""The ``threaded`` backend: KVM's vCPU protocols as a real concurrent program.

Each spec thread is an OS thread (see :mod:`pytest_kvmconf.engine.threads`):
a vCPU thread runs the run loop, sleeps on a real wait queue, takes IPIs; other
threads make requests and kick. Shared state is guarded by real locks and
atomics. Under the engine (controlled mode) the threads stop at scheduling
points and the engine picks the interleaving; with ``--kvm-schedule=free`` the
same code runs preemptively.

Each facet is a mixin module (``requests.py``, ...) providing one plain method
per operation, ``init_<facet>(config)`` and ``observe_<facet>()``;
:class:`ThreadedMachine` composes the MIXINS. Broken variants in tests/ subclass
it and override one method.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...backend import MachineConfig, ThreadContext
from ...spec.versions import KNOWN_VERSIONS, VersionRange
from .attr import AttrThreads
from .locking import LockingThreads
from .requests import RequestsThreads
from .spte import SpteThreads

#: Facet mixins, in method resolution order. Add a facet here and its
#: capabilities to CAPABILITIES.
MIXINS: tuple[type, ...] = (RequestsThreads, SpteThreads, AttrThreads, LockingThreads)
CAPABILITIES = frozenset({"requests", "kick", "run_loop", "block", "entry_sequence", "spte", "attr", "locking"})


class _Machine:
    execution = "threads"

    def __init__(self, config: MachineConfig):
        self.config = config
        for name in _hooks(type(self), "init_"):
            getattr(self, name)(config)

    def run_op(self, ctx: ThreadContext, op: str, args: Mapping[str, Any]) -> Any:
        """Runs on the spec thread's own OS thread; returns the operation's result."""
        method = getattr(self, op, None)
        if method is None or op.startswith(("_", "init_", "observe_")):
            raise NotImplementedError(f"the threaded backend has no operation {op!r}")
        return method(ctx, **args)

    def observe(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in _hooks(type(self), "observe_"):
            out.update(getattr(self, name)())
        return out

    def close(self) -> None:
        # Nothing to release: the engine stops the threads, the rest is garbage.
        pass


_HOOKS: dict[tuple[type, str], tuple[str, ...]] = {}


def _hooks(cls: type, prefix: str) -> tuple[str, ...]:
    key = (cls, prefix)
    if key not in _HOOKS:
        _HOOKS[key] = tuple(sorted(n for n in dir(cls) if n.startswith(prefix)))
    return _HOOKS[key]


class ThreadedMachine(_Machine, *MIXINS):  # type: ignore[misc]
    """All facets of the threaded backend in one machine."""


class ThreadedBackend:
    name = "threaded"
    description = "vCPU threads, requesters and IPIs as real OS threads with real locks and wait queues"
    capabilities = CAPABILITIES
    archs = frozenset({"x86_64", "arm64", "riscv"})
    doc_versions = VersionRange(KNOWN_VERSIONS[0])
    machine_class: type = ThreadedMachine

    def new_machine(self, config: MachineConfig) -> Any:
        return self.machine_class(config)
