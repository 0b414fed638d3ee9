"""pytest-kvmconf: property-based conformance tests for KVM's documented guarantees.

The public surface, everything a backend author imports (CONTRIBUTING.md): the backend
interface, the scheduling-point API, document versions, the request API's constants (and
``EIO``, KVM_RUN's error once the VM is dead), the one exception root, and the helpers of the
bundled models a broken variant builds on (``wait_on`` for thread backends, ``locking_op`` for
overridden locking operations, and ``Memory``/``SharedMap`` for naming shared-memory accesses and
barriers). Everything else is internal and may change.
"""

from __future__ import annotations

import importlib
from typing import Any

from .backend import Backend, Machine, MachineConfig, ThreadContext
from .errors import KvmconfError
from .facets.requests import (
    EIO,
    EXITING_GUEST_MODE,
    IN_GUEST_MODE,
    KVM_REQUEST_MASK,
    KVM_REQUEST_NO_ACTION,
    KVM_REQUEST_NO_WAKEUP,
    KVM_REQUEST_WAIT,
    OUTSIDE_GUEST_MODE,
    READING_SHADOW_PAGE_TABLES,
)
from .scheduling import Point, Wait, point, wait_until
from .spec.versions import VersionRange

#: Exported from modules that import the engine or a bundled backend: loaded when first used,
#: so ``import pytest_kvmconf`` stays light and cannot form an import cycle.
_LAZY = {
    "wait_on": "engine.threads",
    "locking_op": "backends.reference.locking",
    "Memory": "engine.memory",
    "SharedMap": "engine.memory",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EIO",
    "EXITING_GUEST_MODE",
    "IN_GUEST_MODE",
    "KVM_REQUEST_MASK",
    "KVM_REQUEST_NO_ACTION",
    "KVM_REQUEST_NO_WAKEUP",
    "KVM_REQUEST_WAIT",
    "OUTSIDE_GUEST_MODE",
    "READING_SHADOW_PAGE_TABLES",
    "Backend",
    "KvmconfError",
    "Machine",
    "MachineConfig",
    "Memory",
    "Point",
    "SharedMap",
    "ThreadContext",
    "VersionRange",
    "Wait",
    "locking_op",
    "point",
    "wait_on",
    "wait_until",
]
__version__ = "0.1.0"
