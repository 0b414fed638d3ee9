"""The backend interface: what a backend is, what it declares, what it runs.

A backend is a factory of *machines*: one machine is one fresh VM (or model of
one) for one schedule. It declares

* ``capabilities``: the facets it implements (``requests``, ``kick``,
  ``run_loop``, ``block``, ...; see :mod:`pytest_kvmconf.facets`) and extra
  promises such as ``entry_sequence``;
* ``archs``: the architectures it can behave as;
* ``doc_versions``: the document texts it implements (a range).

A guarantee whose needs the backend lacks is skipped with the reason.

A machine runs operations in one of two styles (see :mod:`.scheduling`):
``execution = "generator"``, where :meth:`Machine.run_op` returns a
generator yielding scheduling points, or ``execution = "threads"``, where the
engine calls :meth:`Machine.run_op` on a real OS thread per spec thread and
the backend calls :func:`pytest_kvmconf.scheduling.point` inside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from .errors import UndecidedUnderLoad  # noqa: F401 - what a live backend raises, named here
from .spec.versions import VersionRange


@dataclass(frozen=True)
class MachineConfig:
    """How the machine for one schedule must look."""

    vcpus: int
    arch: str
    doc_version: str
    options: Mapping[str, Any] = field(default_factory=dict)
    #: The free mode of threaded backends asks for real, preemptive runs.
    free: bool = False
    #: The capabilities the guarantee uses: a backend may leave the rest of its state out of
    #: observe() (empty: observe everything).
    needs: frozenset[str] = frozenset()
    #: The memory model the machine's shared accesses run under (engine.memory).
    memory_model: str = "sc"


@dataclass(frozen=True)
class ThreadContext:
    """Who calls an operation: the spec thread and the vCPU it is the thread of."""

    name: str
    vcpu: int | None


@runtime_checkable
class Machine(Protocol):
    execution: Literal["generator", "threads"]

    def run_op(self, ctx: ThreadContext, op: str, args: Mapping[str, Any]) -> Any:
        """Run one operation (generator style: return a generator of points)."""

    def observe(self) -> Mapping[str, Any]:
        """The observable state, as plain data (dicts, lists, tuples, sets, numbers)."""

    def close(self) -> None:
        """Release everything the machine holds (threads, fds, mappings)."""


@runtime_checkable
class Backend(Protocol):
    name: str
    description: str
    capabilities: frozenset[str]
    archs: frozenset[str]
    doc_versions: VersionRange

    def new_machine(self, config: MachineConfig) -> Machine:
        """A fresh machine for one schedule."""


def judges(backend: Backend, check: Any) -> bool:
    """Whether ``check`` is judged on ``backend``: a userspace obligation only where the backend
    declares userspace_obligations (KVM need not refuse what only userspace must avoid)."""
    return getattr(check, "obligation", "kvm") != "userspace" or "userspace_obligations" in backend.capabilities


def skip_reason(backend: Backend, needs: frozenset[str], arch: str | None, doc_version: str) -> str | None:
    """Why ``backend`` cannot check a guarantee with these needs, or None."""
    missing = sorted(needs - set(backend.capabilities))
    if missing:
        return f"backend {backend.name!r} lacks capability {', '.join(missing)}"
    if arch is not None and arch not in backend.archs:
        return (f"{arch}-only promise; backend {backend.name!r} runs as "
                f"{', '.join(sorted(backend.archs))}")
    if not backend.doc_versions.contains(doc_version):
        return f"backend {backend.name!r} implements document versions {backend.doc_versions}, not {doc_version}"
    return None


def memory_skip_reason(backend: Backend, gid: str, assumed: tuple[str, ...], model: str,
                       free: bool = False) -> str | None:
    """Why a guarantee stated for the memory models ``assumed`` is not checked under ``model``."""
    if model == "sc":
        return None
    if model not in assumed:
        return (f"{gid} is stated for the memory models {', '.join(assumed)} (its spec's memory_models says "
                f"why), not {model}")
    supported = getattr(backend, "memory_models", ("sc",))
    if model not in supported:
        return (f"backend {backend.name!r} does not simulate the {model} memory model "
                f"(it supports {', '.join(supported)})")
    if free:
        return (f"the {model} memory model is simulated by the engine's scheduler (store buffers "
                "drained at scheduling points); free runs are not scheduled by it")
    return None


def default_arch(backend: Backend, wanted: str | None) -> str:
    if wanted is not None:
        return wanted
    return "x86_64" if "x86_64" in backend.archs else sorted(backend.archs)[0]
