"""Model of api.rst 4.38/4.39 and 5: MP states, KVM_RUN and what interrupts it,
wake-ups and system events, for x86_64, arm64 and riscv (``config.arch``).

The scheduling points are the userspace-visible ones: the write of
``immediate_exit``, the signal, the entry into KVM_RUN (where the kernel polls
``immediate_exit`` once) and KVM_RUN's return. Inside KVM_RUN the vCPU either
returns or waits (idle) for what would make it return: a signal, or a wake-up
event. Each rule is a small method, a step of the facet's vocabulary
(:mod:`pytest_kvmconf.facets.mp`, the same names as in the threaded backend), so
a broken variant in tests/broken/mp.py overrides exactly one.

Deviation from Linux, on purpose: kvm_arch_vcpu_ioctl_set_mpstate() (arch/x86/kvm/x86.c) also
refuses INIT_RECEIVED and SIPI_RECEIVED while INIT is blocked (SMM, VMX non-root or GIF=0) or an
SMI is pending; these vCPUs are never in such a state, so the branch is left out (MP-02 says so).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from ...backend import MachineConfig, ThreadContext
from ...facets.mp import (
    EAGAIN,
    EINTR,
    EINVAL,
    GUEST_PROGRAMS,
    KVM_CAP_ARM_SYSTEM_SUSPEND,
    KVM_CAP_IMMEDIATE_EXIT,
    KVM_CAP_IRQCHIP,
    KVM_CAP_MP_STATE,
    KVM_CAP_SIGNAL_MSI,
    KVM_CAP_SYSTEM_EVENT_DATA,
    KVM_EXIT_HLT,
    KVM_EXIT_INTR,
    KVM_EXIT_IO,
    KVM_EXIT_MMIO,
    KVM_EXIT_SYSTEM_EVENT,
    KVM_MP_STATE_AP_RESET_HOLD,
    KVM_MP_STATE_HALTED,
    KVM_MP_STATE_INIT_RECEIVED,
    KVM_MP_STATE_RUNNABLE,
    KVM_MP_STATE_SIPI_RECEIVED,
    KVM_MP_STATE_STOPPED,
    KVM_MP_STATE_SUSPENDED,
    KVM_MP_STATE_UNINITIALIZED,
    KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
    KVM_SYSTEM_EVENT_SUSPEND,
    KVM_SYSTEM_EVENT_WAKEUP,
    MP_STATE_NAMES,
    PSCI_0_2_FN64_SYSTEM_SUSPEND,
    PSCI_RET_NOT_SUPPORTED,
    PSCI_SUSPEND_CONTEXT,
    PSCI_SUSPEND_ENTRY,
    SYSTEM_EVENT_PROGRAMS,
    Block,
    arm64_mp_states,
    riscv_mp_states,
    run_result,
    system_event_program_error,
)
from ...scheduling import Point, Wait

Steps = Generator[Point | Wait, None, Any]

X86_NMI_PORT = 0x11  # the x86 guest programs' NMI handler does `out 0x11, al`
PIO_PORT = 0x10


@dataclass
class MpVcpu:
    id: int
    state: int = KVM_MP_STATE_RUNNABLE  # the kernel's vcpu->arch.mp_state
    sipi_pending: bool = False
    seen: int | None = None  # what userspace last read or set
    reads: list[int] = field(default_factory=list)
    in_run: bool = False
    entries: int = 0
    settled: int = 0  # KVM_RUN calls that reached a wait in the kernel or returned
    runs: int = 0
    exit_reason: int = 0  # the kvm_run field; the page starts zeroed
    immediate_exit: int = 0
    signals: int = 0
    signal_pending: bool = False
    wakeups: int = 0
    wakeup_pending: bool = False
    progress: int = 0
    # Where the guest program is: "start", "in_handler" (x86 NMI handler), "after_event".
    pc: str = "start"
    regs: dict[str, int] = field(default_factory=dict)

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id, "mp_state": self.seen, "reads": tuple(self.reads), "in_run": self.in_run,
            "entries": self.entries, "runs": self.runs, "exit_reason": self.exit_reason,
            "immediate_exit": self.immediate_exit, "signals": self.signals, "wakeups": self.wakeups,
            "guest_progress": self.progress,
        }


class MpModel:
    """Facet mixin: mp."""

    def init_mp(self, config: MachineConfig) -> None:
        self.mp_arch = config.arch
        self.mp_irqchip = bool(config.options.get("irqchip", False)) or config.arch != "x86_64"
        self.mp_program = str(config.options.get("program", "busy"))
        if self.mp_program not in GUEST_PROGRAMS:
            raise ValueError(f"unknown guest program {self.mp_program!r}; known: {', '.join(GUEST_PROGRAMS)}")
        why = system_event_program_error(config.arch, self.mp_program)
        if why:
            raise ValueError(why)
        self.mp_system_suspend = False
        self.mp_vcpus = [MpVcpu(i, state=self.initial_mp_state(i)) for i in range(config.vcpus)]

    def observe_mp(self) -> dict[str, Any]:
        return {
            "mp": [v.view() for v in self.mp_vcpus],
            "mp_vm": {"arch": self.mp_arch, "irqchip": self.mp_irqchip, "program": self.mp_program,
                      "system_suspend": self.mp_system_suspend},
        }

    # -- rules ------------------------------------------------------------------
    def initial_mp_state(self, vcpu: int) -> int:
        """x86: application processors of a VM with an in-kernel irqchip wait for INIT/SIPI."""
        if self.mp_arch == "x86_64" and self.mp_irqchip and vcpu != 0:
            return KVM_MP_STATE_UNINITIALIZED
        return KVM_MP_STATE_RUNNABLE

    def mp_state_valid(self, state: int) -> bool:
        """Which states KVM_SET_MP_STATE takes (4.39; x86: the [x86] states need the in-kernel LAPIC)."""
        if self.mp_arch == "arm64":
            return state in arm64_mp_states(self.config.doc_version)
        if self.mp_arch == "riscv":
            return state in riscv_mp_states(self.config.doc_version)
        if state == KVM_MP_STATE_RUNNABLE:
            return True
        return self.mp_irqchip and state in (KVM_MP_STATE_UNINITIALIZED, KVM_MP_STATE_INIT_RECEIVED,
                                             KVM_MP_STATE_HALTED, KVM_MP_STATE_SIPI_RECEIVED,
                                             KVM_MP_STATE_AP_RESET_HOLD)

    def store_mp_state(self, v: MpVcpu, state: int) -> None:
        if self.mp_arch == "x86_64" and state == KVM_MP_STATE_SIPI_RECEIVED:
            v.state, v.sipi_pending = KVM_MP_STATE_INIT_RECEIVED, True  # the SIPI is processed later
        else:
            v.state = state

    def read_mp_state(self, v: MpVcpu) -> int:
        """x86 KVM_GET_MP_STATE first processes a pending SIPI."""
        if v.sipi_pending:
            v.sipi_pending = False
            v.state = KVM_MP_STATE_RUNNABLE
            v.pc = "start"
        return v.state

    def kvm_vm_ioctl_check_extension(self, cap: int) -> int:
        if cap in (KVM_CAP_MP_STATE, KVM_CAP_IMMEDIATE_EXIT, KVM_CAP_SYSTEM_EVENT_DATA):
            return 1
        if cap in (KVM_CAP_IRQCHIP, KVM_CAP_SIGNAL_MSI):
            return 1
        if cap == KVM_CAP_ARM_SYSTEM_SUSPEND:
            return int(self.mp_arch == "arm64")
        return 0

    def kvm_run_immediate_exit(self, v: MpVcpu) -> bool:
        """KVM_RUN polls immediate_exit once, when it starts."""
        return v.immediate_exit != 0

    def signal_pending(self, v: MpVcpu) -> bool:
        """A signal pending for the vCPU thread makes KVM_RUN return -EINTR (KVM_EXIT_INTR)."""
        return v.signal_pending

    def mp_sleep_ends(self, v: MpVcpu, wakes: bool) -> bool:
        """What ends a KVM_RUN sleep: a pending signal, or a wake-up event where one counts."""
        return v.signal_pending or (wakes and v.wakeup_pending)

    def signal_wake_up(self, v: MpVcpu) -> None:
        """The signal is pending only while the thread is in KVM_RUN; otherwise its handler ran."""
        if v.in_run:
            v.signal_pending = True

    def suspend_wakeup_exit(self, v: MpVcpu) -> None:
        """arm64: a wake-up event for a SUSPENDED vCPU: exit, the vCPU stays SUSPENDED."""

    def kvm_emulate_halt(self, v: MpVcpu) -> bool:
        """HLT: with the in-kernel irqchip KVM makes the vCPU HALTED and blocks; without it,
        KVM exits to userspace (KVM_EXIT_HLT) and leaves the MP state to userspace. True: blocks."""
        if self.mp_irqchip:
            v.state = KVM_MP_STATE_HALTED
            return True
        return False

    def system_event_type(self, program: str) -> int:
        """The KVM_SYSTEM_EVENT_* type this architecture's KVM reports for the guest's request."""
        return SYSTEM_EVENT_PROGRAMS[self.mp_arch][program]

    def kvm_prepare_system_event(self, v: MpVcpu, event: int) -> None:
        """arm64/riscv: a SHUTDOWN or RESET request stops every vCPU; nothing is destroyed."""
        if event in (KVM_SYSTEM_EVENT_SHUTDOWN, KVM_SYSTEM_EVENT_RESET) and self.mp_arch != "x86_64":
            for w in self.mp_vcpus:
                w.state = KVM_MP_STATE_STOPPED

    # -- operations --------------------------------------------------------------
    def kvm_get_mp_state(self, ctx: ThreadContext, vcpu: int) -> Steps:
        v = self.mp_vcpus[vcpu]
        state = self.read_mp_state(v)
        v.seen = state
        v.reads.append(state)
        yield Point(f"KVM_GET_MP_STATE = {MP_STATE_NAMES.get(state, state)}")
        return state

    def kvm_set_mp_state(self, ctx: ThreadContext, vcpu: int, state: int) -> Steps:
        v = self.mp_vcpus[vcpu]
        if not self.mp_state_valid(state):
            yield Point(f"KVM_SET_MP_STATE({MP_STATE_NAMES.get(state, state)}) = -EINVAL")
            return -EINVAL
        self.store_mp_state(v, state)
        v.seen = state
        yield Point(f"KVM_SET_MP_STATE({MP_STATE_NAMES.get(state, state)}) = 0")
        return 0

    def kvm_get_regs(self, ctx: ThreadContext, vcpu: int) -> Steps:
        v = self.mp_vcpus[vcpu]
        regs = dict(v.regs) or ({"x0": 0, "x1": 0, "x2": 0, "pc": 0} if self.mp_arch != "x86_64"
                                else {"rax": 0, "rip": 0x1000})
        yield Point("KVM_GET_REGS")
        return regs

    def set_immediate_exit(self, ctx: ThreadContext, vcpu: int, value: int = 1) -> Steps:
        self.mp_vcpus[vcpu].immediate_exit = value
        yield Point(f"vcpu{vcpu} kvm_run->immediate_exit = {value}")

    def signal_vcpu(self, ctx: ThreadContext, vcpu: int) -> Steps:
        v = self.mp_vcpus[vcpu]
        v.signals += 1
        inside = v.in_run
        self.signal_wake_up(v)
        yield Point(f"pthread_kill(vcpu{vcpu} thread): " + ("pending in KVM_RUN" if inside
                                                            else "not in KVM_RUN, the handler runs"))

    def inject_wakeup(self, ctx: ThreadContext, vcpu: int) -> Steps:
        v = self.mp_vcpus[vcpu]
        if not self.mp_irqchip:
            yield Point("KVM_SIGNAL_MSI: no in-kernel irqchip, -EINVAL")
            return -EINVAL
        v.wakeups += 1
        v.wakeup_pending = True
        what = "NMI (KVM_SIGNAL_MSI)" if self.mp_arch == "x86_64" else "interrupt"
        yield Point(f"{what} pending for vcpu{vcpu}")
        return 1

    def suppress_wakeup(self, ctx: ThreadContext, vcpu: int) -> Steps:
        self.mp_vcpus[vcpu].wakeup_pending = False
        yield Point(f"vcpu{vcpu}: the wake-up interrupt is masked")

    def wait_in_kvm_run(self, ctx: ThreadContext, vcpu: int, nth: int = 1) -> Steps:
        v = self.mp_vcpus[vcpu]
        yield Wait(f"wait until vcpu{vcpu} is in its KVM_RUN #{nth}", lambda: v.settled >= nth)

    def kvm_check_extension(self, ctx: ThreadContext, cap: int) -> Steps:
        value = self.kvm_vm_ioctl_check_extension(cap)
        yield Point(f"KVM_CHECK_EXTENSION({cap}) = {value}")
        return value

    def kvm_enable_cap(self, ctx: ThreadContext, cap: int) -> Steps:
        if cap == KVM_CAP_ARM_SYSTEM_SUSPEND and self.kvm_vm_ioctl_check_extension(cap):
            self.mp_system_suspend = True
            yield Point("KVM_ENABLE_CAP(KVM_CAP_ARM_SYSTEM_SUSPEND) = 0")
            return 0
        yield Point(f"KVM_ENABLE_CAP({cap}) = -EINVAL")
        return -EINVAL

    # -- KVM_RUN -------------------------------------------------------------------
    def kvm_run(self, ctx: ThreadContext, vcpu: int) -> Steps:
        v = self.mp_vcpus[vcpu]
        nth, immediate = self.enter_kvm_run(v)
        counted = False
        if immediate:
            result = run_result(-EINTR, v.exit_reason)
        else:
            yield Point(f"ioctl(KVM_RUN) #{nth}: immediate_exit = 0")
            result = None
            while result is None:
                result, block = self.kvm_run_step(v)
                if block is not None:
                    if not counted:
                        counted = True
                        v.settled += 1
                    yield Wait(block.label, lambda b=block: self.mp_sleep_ends(v, b.wakes), idle=True)
        v.in_run = False
        v.signal_pending = False
        v.runs += 1
        if not counted:
            v.settled += 1
        if result["exit_reason"] is not None:
            v.exit_reason = result["exit_reason"]
        shown = {-EINTR: "-EINTR", -EAGAIN: "-EAGAIN"}.get(result["ret"], result["ret"])
        yield Point(f"KVM_RUN returns {shown}, exit_reason {v.exit_reason}")
        return run_result(result["ret"], v.exit_reason, result["system_event"], result["port"])

    def enter_kvm_run(self, v: MpVcpu) -> tuple[int, bool]:
        """The thread enters KVM_RUN, which polls immediate_exit once."""
        v.in_run = True
        v.entries += 1
        return v.entries, self.kvm_run_immediate_exit(v)

    def kvm_run_step(self, v: MpVcpu) -> tuple[dict | None, Block | None]:
        """One decision of the vCPU inside KVM_RUN: a result, or a wait for what changes it."""
        if self.signal_pending(v):
            return run_result(-EINTR, KVM_EXIT_INTR), None
        if self.mp_arch == "x86_64":
            return self.kvm_run_step_x86(v)
        return self.kvm_run_step_arm(v)

    def _mp_block(self, v: MpVcpu, label: str, wakes: bool) -> tuple[None, Block]:
        return None, Block(label, wakes)

    def kvm_run_step_x86(self, v: MpVcpu) -> tuple[dict | None, Block | None]:
        if v.state in (KVM_MP_STATE_UNINITIALIZED, KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_AP_RESET_HOLD):
            if v.sipi_pending:
                self.read_mp_state(v)
                return None, None
            if v.state == KVM_MP_STATE_UNINITIALIZED:
                return self._mp_uninitialized(v)
            return self._mp_block(v, f"{MP_STATE_NAMES[v.state]}: waits for INIT/SIPI", False)
        if v.state == KVM_MP_STATE_HALTED:
            if v.wakeup_pending and v.pc != "in_handler":
                v.state = KVM_MP_STATE_RUNNABLE
                return None, None
            return self._mp_block(v, "HALTED: blocks in the kernel until an interrupt",
                                  v.pc != "in_handler")
        # RUNNABLE: NMIs are taken at guest entry, except inside the handler (no IRET).
        if v.wakeup_pending and v.pc != "in_handler":
            v.wakeup_pending = False
            v.pc = "in_handler"
            return run_result(0, KVM_EXIT_IO, port=X86_NMI_PORT), None
        if v.pc == "in_handler":
            if self.kvm_emulate_halt(v):
                return None, None
            return run_result(0, KVM_EXIT_HLT), None
        return self.guest_program(v)

    def _mp_uninitialized(self, v: MpVcpu) -> tuple[dict | None, Block | None]:
        """kvm_arch_vcpu_ioctl_run() (arch/x86/kvm/x86.c) of an UNINITIALIZED AP: kvm_vcpu_block()
        until something makes it runnable (here an NMI, which stays pending and so ends every later
        block at once), then -EAGAIN unless a signal is pending."""
        if v.wakeup_pending:
            return run_result(-EAGAIN, v.exit_reason), None  # kvm_run->exit_reason untouched
        return self._mp_block(v, "KVM_MP_STATE_UNINITIALIZED: kvm_vcpu_block() until an event", True)

    def kvm_run_step_arm(self, v: MpVcpu) -> tuple[dict | None, Block | None]:
        if v.state == KVM_MP_STATE_STOPPED:
            return self._mp_block(v, "STOPPED: waits", False)
        if v.state == KVM_MP_STATE_SUSPENDED:
            if v.wakeup_pending:
                self.suspend_wakeup_exit(v)
                return run_result(0, KVM_EXIT_SYSTEM_EVENT, KVM_SYSTEM_EVENT_WAKEUP), None
            return self._mp_block(v, "SUSPENDED: WFI until a wake-up event", True)
        return self.guest_program(v)

    def guest_program(self, v: MpVcpu) -> tuple[dict | None, Block | None]:
        """The RUNNABLE vCPU runs its guest program."""
        program = self.mp_program
        if v.pc == "after_event" or program == "busy":
            v.progress += 1
            return self._mp_block(v, "guest runs (busy)", self.mp_arch == "x86_64")
        if program == "hlt":
            v.progress += 1
            if self.mp_arch == "x86_64":
                if self.kvm_emulate_halt(v):
                    return None, None
                return run_result(0, KVM_EXIT_HLT), None
            if v.wakeup_pending:  # WFI completes; the guest reports it by MMIO
                v.wakeup_pending = False
                return run_result(0, KVM_EXIT_MMIO), None
            return self._mp_block(v, "WFI: waits for an interrupt", True)
        if program == "pio":
            v.progress += 1
            if self.mp_arch == "x86_64":
                return run_result(0, KVM_EXIT_IO, port=PIO_PORT), None
            return run_result(0, KVM_EXIT_MMIO), None
        if program == "psci_suspend":
            v.progress += 1
            v.regs = {"x0": PSCI_0_2_FN64_SYSTEM_SUSPEND, "x1": PSCI_SUSPEND_ENTRY,
                      "x2": PSCI_SUSPEND_CONTEXT, "pc": 0x1004}
            v.pc = "after_event"
            if self.mp_system_suspend:
                return run_result(0, KVM_EXIT_SYSTEM_EVENT, KVM_SYSTEM_EVENT_SUSPEND), None
            v.regs["x0"] = PSCI_RET_NOT_SUPPORTED  # KVM answers the call itself
            return None, None
        event = self.system_event_type(program)
        v.progress += 1
        v.pc = "after_event"
        self.kvm_prepare_system_event(v, event)
        return run_result(0, KVM_EXIT_SYSTEM_EVENT, event), None
