"""pytest-kvmconf: property-based conformance tests for KVM's documented guarantees.

The public surface: the backend interface, the scheduling-point API and the
hook marker. Everything else is internal.
"""

from .backend import Backend, Machine, MachineConfig, ThreadContext
from .scheduling import Point, Wait, point, wait_until

__all__ = [
    "Backend",
    "Machine",
    "MachineConfig",
    "Point",
    "ThreadContext",
    "Wait",
    "point",
    "wait_until",
]
__version__ = "0.1.0"
