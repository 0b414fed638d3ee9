"""The ``reference`` backend: the executable model of the KVM documents.

Each facet's model is its own module; :class:`ReferenceMachine` composes them.
Broken variants in tests/ subclass the facet models and change one rule.
"""

from __future__ import annotations

from ...backend import MachineConfig
from ...spec.versions import KNOWN_VERSIONS, VersionRange
from .requests import RequestsModel


class ReferenceMachine(RequestsModel):
    """All facets of the reference model in one machine."""


class ReferenceBackend:
    name = "reference"
    description = "the executable model of the KVM documents (generator scheduling points)"
    capabilities = frozenset({"requests", "kick", "run_loop", "block", "entry_sequence"})
    archs = frozenset({"x86_64", "arm64", "riscv"})
    doc_versions = VersionRange(KNOWN_VERSIONS[0])
    machine_class: type = ReferenceMachine

    def new_machine(self, config: MachineConfig) -> ReferenceMachine:
        return self.machine_class(config)
