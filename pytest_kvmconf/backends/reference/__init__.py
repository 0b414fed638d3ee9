"""The ``reference`` backend: the executable model of the KVM documents.

Each facet's model is a mixin in its own module (``requests.py``, ...). A
mixin provides its operations as generator methods named after the
operation, an ``init_<facet>(config)`` method and an ``observe_<facet>()``
method returning its part of the observable state. :class:`ReferenceMachine`
composes them; broken variants in tests/ subclass it and override one rule: an operation, or a
step of the facets' vocabulary (:attr:`pytest_kvmconf.facets.Facet.steps`, the same names as in
the threaded backend).
"""

from __future__ import annotations

from ..compose import FacetBackend, FacetMachine
from .attr import AttrModel
from .litmus import LitmusModel
from .locking import LockingModel
from .memslots import MemslotsModel
from .mp import MpModel
from .requests import RequestsModel
from .spte import SpteModel

#: Facet mixins, in method resolution order. Add a facet here and its
#: capabilities to CAPABILITIES.
MIXINS: tuple[type, ...] = (RequestsModel, LockingModel, SpteModel, AttrModel, MpModel, MemslotsModel,
                           LitmusModel)
CAPABILITIES = frozenset({"requests", "kick", "run_loop", "block", "entry_sequence", "locking", "spte", "attr",
                          "mp", "system_events", "userspace_obligations",
                          "model_counters", "memslots", "litmus"})


class ReferenceMachine(FacetMachine, *MIXINS):  # type: ignore[misc]
    """All facets of the reference model in one machine."""

    execution = "generator"
    backend_label = "the reference model"


class ReferenceBackend(FacetBackend):
    name = "reference"
    description = "the executable model of the KVM documents (generator scheduling points)"
    capabilities = CAPABILITIES
    #: the requests facet routes its barrier pairings through engine.memory.
    memory_models = ("sc", "tso", "lkmm")
    machine_class: type = ReferenceMachine
