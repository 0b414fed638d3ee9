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
it and override one method: an operation, or a step of the facets' vocabulary
(:attr:`pytest_kvmconf.facets.Facet.steps`, the same names as in the reference model).
"""

from __future__ import annotations

from ..compose import FacetBackend, FacetMachine
from .attr import AttrThreads
from .locking import LockingThreads
from .mp import MpThreads
from .requests import RequestsThreads
from .spte import SpteThreads

#: Facet mixins, in method resolution order. Add a facet here and its
#: capabilities to CAPABILITIES.
MIXINS: tuple[type, ...] = (RequestsThreads, SpteThreads, AttrThreads, LockingThreads, MpThreads)
CAPABILITIES = frozenset({"requests", "kick", "run_loop", "block", "entry_sequence", "spte", "attr", "locking",
                          "mp", "system_events", "userspace_obligations",
                          "model_counters"})


class ThreadedMachine(FacetMachine, *MIXINS):  # type: ignore[misc]
    """All facets of the threaded backend in one machine."""

    execution = "threads"
    backend_label = "the threaded backend"


class ThreadedBackend(FacetBackend):
    name = "threaded"
    description = "vCPU threads, requesters and IPIs as real OS threads with real locks and wait queues"
    capabilities = CAPABILITIES
    machine_class: type = ThreadedMachine
    #: the requests facet routes its barrier pairings through engine.memory (controlled runs).
    memory_models = ("sc", "tso", "lkmm")
