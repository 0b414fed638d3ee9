"""The ``kvm`` backend: the mp facet against the running kernel, through /dev/kvm.

Only the standard library: ``fcntl.ioctl`` on /dev/kvm with ctypes structures
(:mod:`.uapi`, the ioctl layer), a shared mapping of each vCPU's ``kvm_run``,
one OS thread per vCPU (:mod:`.vm`), tiny real-mode x86 guests (:mod:`.guest`).
Operations and their scheduling points are in :mod:`.machine`.

It runs what an x86_64 host can show (MP-01..MP-04, MP-10.a); arm64/riscv
statements are skipped by architecture, and a machine where /dev/kvm is missing,
not permitted, or lacks an ioctl is skipped with the reason (:meth:`KvmBackend.skip_reason`).
"""

from __future__ import annotations

import threading
from typing import Any

from ...backend import MachineConfig
from ...spec.expr import Expr
from ...spec.model import Guarantee
from ...spec.versions import KNOWN_VERSIONS, VersionRange
from . import guest, memory, probe, tracefs
from .irq import TRACE_EVENTS as IRQ_TRACE_EVENTS
from .machine import KvmMachine


class KvmBackend:
    name = "kvm"
    description = "the running kernel through /dev/kvm (x86_64 real-mode guests, one thread per vCPU)"
    capabilities = frozenset({"mp", "memslots", "irq", "tracepoints", "binary_stats"})
    doc_versions = VersionRange(KNOWN_VERSIONS[0])
    #: The kernel is not under the engine's control: a schedule need not fail again when
    #: replayed, so the first violation is kept with its timeline (no shrinking, no FlakyFailure).
    replays = False

    def __init__(self, execution: str = "threads"):
        if execution not in ("threads", "generator"):
            raise ValueError("execution is 'threads' or 'generator'")
        self.execution = execution
        self.archs = frozenset({probe.host_arch()})

    def skip_reason(self, g: Guarantee) -> str | None:
        why, caps = probe.environment()
        if why:
            return why
        if threading.current_thread() is not threading.main_thread():
            return "the kvm backend installs its kick signal's handler, which Python allows only in the main thread"
        needed = []
        ops = {s.op.name for t in g.threads for s in t.steps + (t.sequence.choose if t.sequence else ())}
        for op, (cap, cap_name) in probe.OP_CAPS.items():
            if op in ops and cap not in caps:
                needed.append(cap_name)
        options = dict(g.machine)
        if options.get("irqchip", False) is not False and probe.IRQCHIP_CAP[0] not in caps:
            needed.append(probe.IRQCHIP_CAP[1])
        # Settling on "the vCPU sleeps in the kernel" reads the "blocking" binary statistic.
        if ("binary_stats" in g.needs or ops & {"kvm_run", "wait_in_kvm_run"}) and probe.STATS_CAP[0] not in caps:
            needed.append(probe.STATS_CAP[1])
        needed += memory.missing_caps(options, ops)
        if needed:
            return f"the kernel lacks {', '.join(needed)}"
        if "tracepoints" in g.needs:
            why = tracefs.unavailable(IRQ_TRACE_EVENTS)
            if why:
                return f"no kernel tracepoints: {why}"
        if "suppress_wakeup" in ops:
            return "suppress_wakeup: the x86 guests take wake-ups as NMIs, which userspace cannot mask"
        program = options.get("program")
        if isinstance(program, Expr) and not program.names:
            name = program.evaluate({})
            if name not in guest.PROGRAMS:
                return f"the kvm backend's x86 guests have no program {name!r} (they have {', '.join(guest.PROGRAMS)})"
        return None

    def new_machine(self, config: MachineConfig) -> Any:
        return KvmMachine(config, self.execution)
