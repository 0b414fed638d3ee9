"""The machine the kvm backend makes: one VM for one schedule, with every facet's operations.

The layout, for whoever adds a facet: :mod:`.core` has :class:`~.core.KvmCore` (the VM, running
operations on the engine's threads, observing, closing, and the waits on the kernel's evidence);
each facet is a mixin in a module of its own (:mod:`.mp`, :mod:`.irq`, :mod:`.memory`) with
``op_<name>`` generator methods and hooks that call ``super()`` (``_setup``, ``_before_vcpus``,
``_after_vcpus``, ``_observe``, ``_release``); its machine options join :data:`OPTIONS`.
:class:`KvmMachine` lists the mixins.
"""

from __future__ import annotations

from typing import Any

from ...backend import MachineConfig
from .core import OPTIONS, KvmCore, Steps
from .irq import IrqOps
from .memory import MEMORY_OPTIONS, MemoryOps
from .mp import MpOps
from .vm import Vm

OPTIONS.update(MEMORY_OPTIONS)

__all__ = ["OPTIONS", "KvmCore", "KvmMachine", "Steps"]


class KvmMachine(IrqOps, MpOps, MemoryOps):
    """Every facet's operations on one VM."""

    # The memslots facet's hooks (memory.py names them _memory_*), on the core's.
    def _setup(self, config: MachineConfig) -> None:
        super()._setup(config)
        self._memory_init(config)

    def _before_vcpus(self, vm: Vm) -> None:
        super()._before_vcpus(vm)
        self._memory_before_vcpus(vm)

    def _after_vcpus(self) -> None:
        super()._after_vcpus()
        self._memory_after_vcpus()

    def _observe(self, out: dict[str, Any]) -> None:
        super()._observe(out)
        out.update(self._memory_observe())

    def _release(self) -> None:
        try:
            self._memory_close()
        finally:
            super()._release()
