"""api.rst 4.38/4.39 and 5 as a concurrent program: MP states, KVM_RUN and its
interruption, wake-ups and system events, on real OS threads.

KVM_RUN runs on the vCPU's own spec thread and really blocks there: a vCPU
that is HALTED with an in-kernel irqchip, SUSPENDED or STOPPED on arm64, or
running a guest with no exit of its own sleeps on its wait queue (a
``threading.Condition``, through :func:`~pytest_kvmconf.engine.threads.wait_on`)
until another thread makes a signal or a wake-up event pending and notifies it.

Locking, as in KVM:

* ``MpVcpu.lock`` stands for ``vcpu->arch.mp_state_lock`` plus the bits of the
  task the kernel reads under the signal lock: every field of the vCPU is read
  and written under it; ``wq`` (the vCPU's rcuwait) and ``settle`` (what a VMM
  thread waiting for the vCPU to enter KVM_RUN sleeps on) are conditions on it.
  No lock is held at a scheduling point or a wait (the executor's rule 1).
* The ioctls marked ``vcpu_thread`` in the facet run only on the vCPU's thread,
  so ``vcpu->mutex`` (which KVM_RUN holds across its sleeps) is not modelled:
  no two of them can overlap.
* ``kvm_run.immediate_exit`` lives in the shared kvm_run page: userspace writes
  it with a plain store from any thread, KVM_RUN reads it once when it starts.
* A system event that stops every vCPU (arm64 SYSTEM_OFF/RESET) takes each
  vCPU's lock in turn without holding its own, like kvm_prepare_system_event().

The rules (which states each architecture accepts, what a guest program does,
when KVM_RUN returns) are the reference model's (:mod:`..reference.mp`),
written here over the vCPU's own structures, as the same steps (the facet's
vocabulary, :mod:`pytest_kvmconf.facets.mp`); the scheduling points carry the
same labels so a schedule replays step for step on both backends.

Deviation from Linux, on purpose: kvm_arch_vcpu_ioctl_set_mpstate() (arch/x86/kvm/x86.c) also
refuses INIT_RECEIVED and SIPI_RECEIVED while INIT is blocked (SMM, VMX non-root or GIF=0) or an
SMI is pending; these vCPUs are never in such a state, so the branch is left out (MP-02 says so).
"""

from __future__ import annotations

import threading
from functools import partial
from typing import Any

from ...backend import MachineConfig, ThreadContext
from ...engine.threads import wait_on
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
from ...scheduling import point

#: The x86 guest programs' NMI handler does ``out 0x11, al``; the pio program ``out 0x10``.
X86_NMI_PORT = 0x11
PIO_PORT = 0x10
#: x86 states in which a vCPU waits for INIT/SIPI instead of running.
X86_WAIT_FOR_SIPI = (KVM_MP_STATE_UNINITIALIZED, KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_AP_RESET_HOLD)


class MpVcpu:
    """struct kvm_vcpu's MP parts, the vCPU thread's pending signal and its kvm_run page."""

    def __init__(self, vcpu_id: int, state: int):
        self.id = vcpu_id
        self.lock = threading.Lock()
        #: The vCPU's wait queue: KVM_RUN sleeps here for a signal or a wake-up event.
        self.wq = threading.Condition(self.lock)
        #: VMM threads sleep here until the vCPU has settled in (or left) a KVM_RUN.
        self.settle = threading.Condition(self.lock)
        self.state = state  # vcpu->arch.mp_state
        self.sipi_pending = False
        self.seen: int | None = None  # what userspace last read or set
        self.reads: list[int] = []
        self.in_run = False
        self.entries = 0
        self.settled = 0
        self.runs = 0
        # The kvm_run page (shared memory; it starts zeroed).
        self.exit_reason = 0
        self.immediate_exit = 0
        self.signals = 0
        self.signal_pending = False
        self.wakeups = 0
        self.wakeup_pending = False
        self.progress = 0
        #: Where the guest program is: "start", "in_handler" (x86 NMI handler), "after_event".
        self.pc = "start"
        self.regs: dict[str, int] = {}

    def view(self) -> dict[str, Any]:
        # Plain reads, no lock: observe() must not block (it runs while every thread is stopped).
        return {
            "id": self.id, "mp_state": self.seen, "reads": tuple(self.reads), "in_run": self.in_run,
            "entries": self.entries, "runs": self.runs, "exit_reason": self.exit_reason,
            "immediate_exit": self.immediate_exit, "signals": self.signals, "wakeups": self.wakeups,
            "guest_progress": self.progress,
        }


class MpThreads:
    """Facet mixin: mp."""

    def init_mp(self, config: MachineConfig) -> None:
        self.mp_arch = config.arch
        # arm64 and riscv machines always have their interrupt controller in the kernel.
        self.mp_irqchip = bool(config.options.get("irqchip", False)) or config.arch != "x86_64"
        self.mp_program = str(config.options.get("program", "busy"))
        if self.mp_program not in GUEST_PROGRAMS:
            raise ValueError(f"unknown guest program {self.mp_program!r}; known: {', '.join(GUEST_PROGRAMS)}")
        why = system_event_program_error(config.arch, self.mp_program)
        if why:
            raise ValueError(why)
        #: kvm->lock: KVM_ENABLE_CAP changes the VM's configuration under it.
        self.mp_vm_lock = threading.Lock()
        self.mp_system_suspend = False
        self.mp_vcpus = [MpVcpu(i, self.initial_mp_state(i)) for i in range(config.vcpus)]

    def observe_mp(self) -> dict[str, Any]:
        return {
            "mp": [v.view() for v in self.mp_vcpus],
            "mp_vm": {"arch": self.mp_arch, "irqchip": self.mp_irqchip, "program": self.mp_program,
                      "system_suspend": self.mp_system_suspend},
        }

    # -- rules (called with the vCPU's lock held where they touch it) -------------------
    def initial_mp_state(self, vcpu: int) -> int:
        """x86 with the in-kernel LAPIC: application processors wait for INIT/SIPI."""
        if self.mp_arch == "x86_64" and self.mp_irqchip and vcpu != 0:
            return KVM_MP_STATE_UNINITIALIZED
        return KVM_MP_STATE_RUNNABLE

    def mp_state_valid(self, state: int) -> bool:
        """4.39: the states KVM_SET_MP_STATE takes (x86: the [x86] ones need the in-kernel LAPIC)."""
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
        """x86 turns SIPI_RECEIVED into INIT_RECEIVED plus a pending SIPI, processed later."""
        if self.mp_arch == "x86_64" and state == KVM_MP_STATE_SIPI_RECEIVED:
            v.state, v.sipi_pending = KVM_MP_STATE_INIT_RECEIVED, True
        else:
            v.state = state

    def read_mp_state(self, v: MpVcpu) -> int:
        """x86 KVM_GET_MP_STATE (and KVM_RUN) first process a pending SIPI."""
        if v.sipi_pending:
            v.sipi_pending = False
            v.state = KVM_MP_STATE_RUNNABLE
            v.pc = "start"
        return v.state

    def kvm_vm_ioctl_check_extension(self, cap: int) -> int:
        if cap in (KVM_CAP_MP_STATE, KVM_CAP_IMMEDIATE_EXIT, KVM_CAP_SYSTEM_EVENT_DATA,
                   KVM_CAP_IRQCHIP, KVM_CAP_SIGNAL_MSI):
            return 1
        if cap == KVM_CAP_ARM_SYSTEM_SUSPEND:
            return int(self.mp_arch == "arm64")
        return 0

    def signal_wake_up(self, v: MpVcpu) -> None:
        """The kick signal stays pending only while the thread is inside KVM_RUN; in
        userspace its (no-op) handler runs at once and the signal is gone."""
        if v.in_run:
            v.signal_pending = True

    def mp_sleep_ends(self, v: MpVcpu, wakes: bool) -> bool:
        """What ends a KVM_RUN sleep: a pending signal, or a wake-up event where one counts."""
        return v.signal_pending or (wakes and v.wakeup_pending)

    def kvm_emulate_halt(self, v: MpVcpu) -> bool:
        """HLT: with the in-kernel irqchip KVM makes the vCPU HALTED and blocks (True);
        without one it exits with KVM_EXIT_HLT and leaves the MP state to userspace."""
        if self.mp_irqchip:
            v.state = KVM_MP_STATE_HALTED
            return True
        return False

    def kvm_prepare_system_event(self, v: MpVcpu, event: int) -> None:
        """arm64/riscv: SHUTDOWN and RESET stop every vCPU (nothing is destroyed). Each
        vCPU's state is written under its own lock; the caller holds none."""
        if event in (KVM_SYSTEM_EVENT_SHUTDOWN, KVM_SYSTEM_EVENT_RESET) and self.mp_arch != "x86_64":
            for w in self.mp_vcpus:
                with w.lock:
                    w.state = KVM_MP_STATE_STOPPED

    # -- VMM ioctls and actions ------------------------------------------------------------
    def kvm_get_mp_state(self, ctx: ThreadContext, vcpu: int) -> int:
        v = self.mp_vcpus[vcpu]
        with v.lock:
            state = self.read_mp_state(v)
            v.seen = state
            v.reads.append(state)
        point(f"KVM_GET_MP_STATE = {MP_STATE_NAMES.get(state, state)}")
        return state

    def kvm_set_mp_state(self, ctx: ThreadContext, vcpu: int, state: int) -> int:
        v = self.mp_vcpus[vcpu]
        name = MP_STATE_NAMES.get(state, state)
        if not self.mp_state_valid(state):
            point(f"KVM_SET_MP_STATE({name}) = -EINVAL")
            return -EINVAL
        with v.lock:
            self.store_mp_state(v, state)
            v.seen = state
        point(f"KVM_SET_MP_STATE({name}) = 0")
        return 0

    def kvm_get_regs(self, ctx: ThreadContext, vcpu: int) -> dict[str, int]:
        v = self.mp_vcpus[vcpu]
        with v.lock:
            regs = dict(v.regs)
        if not regs:
            regs = {"rax": 0, "rip": 0x1000} if self.mp_arch == "x86_64" else {"x0": 0, "x1": 0, "x2": 0, "pc": 0}
        point("KVM_GET_REGS")
        return regs

    def set_immediate_exit(self, ctx: ThreadContext, vcpu: int, value: int = 1) -> None:
        # A plain store to the shared kvm_run page: no lock, as a VMM writes it.
        self.mp_vcpus[vcpu].immediate_exit = value
        point(f"vcpu{vcpu} kvm_run->immediate_exit = {value}")

    def signal_vcpu(self, ctx: ThreadContext, vcpu: int) -> None:
        v = self.mp_vcpus[vcpu]
        with v.lock:  # signal_wake_up(): under the target's lock, so KVM_RUN cannot miss it
            v.signals += 1
            inside = v.in_run
            self.signal_wake_up(v)
            v.wq.notify_all()
        point(f"pthread_kill(vcpu{vcpu} thread): " + ("pending in KVM_RUN" if inside
                                                     else "not in KVM_RUN, the handler runs"))

    def inject_wakeup(self, ctx: ThreadContext, vcpu: int) -> int:
        v = self.mp_vcpus[vcpu]
        if not self.mp_irqchip:
            point("KVM_SIGNAL_MSI: no in-kernel irqchip, -EINVAL")
            return -EINVAL
        with v.lock:  # kvm_vcpu_kick() after making the interrupt pending
            v.wakeups += 1
            v.wakeup_pending = True
            v.wq.notify_all()
        what = "NMI (KVM_SIGNAL_MSI)" if self.mp_arch == "x86_64" else "interrupt"
        point(f"{what} pending for vcpu{vcpu}")
        return 1

    def suppress_wakeup(self, ctx: ThreadContext, vcpu: int) -> None:
        v = self.mp_vcpus[vcpu]
        with v.lock:
            v.wakeup_pending = False
        point(f"vcpu{vcpu}: the wake-up interrupt is masked")

    def wait_in_kvm_run(self, ctx: ThreadContext, vcpu: int, nth: int = 1) -> None:
        v = self.mp_vcpus[vcpu]
        wait_on(v.settle, f"wait until vcpu{vcpu} is in its KVM_RUN #{nth}", lambda: v.settled >= nth)

    def kvm_check_extension(self, ctx: ThreadContext, cap: int) -> int:
        value = self.kvm_vm_ioctl_check_extension(cap)
        point(f"KVM_CHECK_EXTENSION({cap}) = {value}")
        return value

    def kvm_enable_cap(self, ctx: ThreadContext, cap: int) -> int:
        if cap == KVM_CAP_ARM_SYSTEM_SUSPEND and self.kvm_vm_ioctl_check_extension(cap):
            with self.mp_vm_lock:
                self.mp_system_suspend = True
            point("KVM_ENABLE_CAP(KVM_CAP_ARM_SYSTEM_SUSPEND) = 0")
            return 0
        point(f"KVM_ENABLE_CAP({cap}) = -EINVAL")
        return -EINVAL

    # -- KVM_RUN, on the vCPU's thread ------------------------------------------------------
    def kvm_run(self, ctx: ThreadContext, vcpu: int) -> dict:
        v = self.mp_vcpus[vcpu]
        nth, immediate = self.enter_kvm_run(v)
        counted = False
        if immediate:
            result = run_result(-EINTR, v.exit_reason)
        else:
            point(f"ioctl(KVM_RUN) #{nth}: immediate_exit = 0")
            result, counted = self._mp_run_loop(v)
        with v.lock:
            v.in_run = False
            v.signal_pending = False  # the signal was taken on the way out (-EINTR) or is stale
            v.runs += 1
            if not counted:
                v.settled += 1
                v.settle.notify_all()
            v.exit_reason = result["exit_reason"]
            exit_reason = v.exit_reason
        shown = {-EINTR: "-EINTR", -EAGAIN: "-EAGAIN"}.get(result["ret"], result["ret"])
        point(f"KVM_RUN returns {shown}, exit_reason {exit_reason}")
        return run_result(result["ret"], exit_reason, result["system_event"], result["port"])

    def enter_kvm_run(self, v: MpVcpu) -> tuple[int, bool]:
        """The thread enters KVM_RUN, which polls immediate_exit once. Entering and the
        read are one step: a signal sent after a write of immediate_exit that came too
        late for the poll finds the thread inside KVM_RUN, so that kick is never lost."""
        with v.lock:
            v.in_run = True
            v.entries += 1
            return v.entries, self.kvm_run_immediate_exit(v)

    def kvm_run_immediate_exit(self, v: MpVcpu) -> bool:
        return v.immediate_exit != 0

    def _mp_run_loop(self, v: MpVcpu) -> tuple[dict, bool]:
        """Inside KVM_RUN until there is something to return. True with the result: the
        call has settled (slept at least once), so its wait_in_kvm_run waiters are out."""
        counted = False
        while True:
            with v.lock:
                result, block = self.kvm_run_step(v)
                if block is not None and not counted:
                    counted = True
                    v.settled += 1
                    v.settle.notify_all()
            if result is not None:
                event = result["system_event"]
                made = SYSTEM_EVENT_PROGRAMS[self.mp_arch].values()
                if result["exit_reason"] == KVM_EXIT_SYSTEM_EVENT and event in made:
                    self.kvm_prepare_system_event(v, event)
                return result, counted
            if block is not None:
                wait_on(v.wq, block.label, partial(self.mp_sleep_ends, v, block.wakes), idle=True)

    def kvm_run_step(self, v: MpVcpu) -> tuple[dict | None, Block | None]:
        """One decision of the vCPU in the kernel (its lock held): a result to return,
        a sleep, or (None, None) to decide again at once."""
        if self.signal_pending(v):
            return run_result(-EINTR, KVM_EXIT_INTR), None
        if self.mp_arch == "x86_64":
            return self.kvm_run_step_x86(v)
        return self.kvm_run_step_arm(v)

    def signal_pending(self, v: MpVcpu) -> bool:
        """signal_pending(current): KVM_RUN returns -EINTR, KVM_EXIT_INTR."""
        return v.signal_pending

    def kvm_run_step_x86(self, v: MpVcpu) -> tuple[dict | None, Block | None]:
        if v.state in X86_WAIT_FOR_SIPI:
            if v.sipi_pending:
                self.read_mp_state(v)
                return None, None
            if v.state == KVM_MP_STATE_UNINITIALIZED:
                # kvm_arch_vcpu_ioctl_run(): kvm_vcpu_block() until an event (an NMI, which stays
                # pending), then -EAGAIN; kvm_run->exit_reason is left alone.
                if v.wakeup_pending:
                    return run_result(-EAGAIN, v.exit_reason), None
                return None, Block("KVM_MP_STATE_UNINITIALIZED: kvm_vcpu_block() until an event", True)
            return None, Block(f"{MP_STATE_NAMES[v.state]}: waits for INIT/SIPI", False)
        if v.state == KVM_MP_STATE_HALTED:
            if v.wakeup_pending and v.pc != "in_handler":
                v.state = KVM_MP_STATE_RUNNABLE  # kvm_vcpu_block() returns: the interrupt is there
                return None, None
            # NMIs are blocked inside the NMI handler (no IRET yet): they do not end this halt.
            return None, Block("HALTED: blocks in the kernel until an interrupt", v.pc != "in_handler")
        # RUNNABLE: a pending NMI is taken at guest entry, except inside its own handler.
        if v.wakeup_pending and v.pc != "in_handler":
            v.wakeup_pending = False
            v.pc = "in_handler"
            return run_result(0, KVM_EXIT_IO, port=X86_NMI_PORT), None
        if v.pc == "in_handler":  # the handler's port write was handled; it halts next
            if self.kvm_emulate_halt(v):
                return None, None
            return run_result(0, KVM_EXIT_HLT), None
        return self.guest_program(v)

    def kvm_run_step_arm(self, v: MpVcpu) -> tuple[dict | None, Block | None]:
        if v.state == KVM_MP_STATE_STOPPED:
            return None, Block("STOPPED: waits", False)
        if v.state == KVM_MP_STATE_SUSPENDED:
            if v.wakeup_pending:
                self.suspend_wakeup_exit(v)
                return run_result(0, KVM_EXIT_SYSTEM_EVENT, KVM_SYSTEM_EVENT_WAKEUP), None
            return None, Block("SUSPENDED: WFI until a wake-up event", True)
        return self.guest_program(v)

    def suspend_wakeup_exit(self, v: MpVcpu) -> None:
        """Exit to userspace; only userspace makes the vCPU RUNNABLE."""

    def guest_program(self, v: MpVcpu) -> tuple[dict | None, Block | None]:
        """The RUNNABLE vCPU runs its guest program until its next exit or sleep."""
        program, x86 = self.mp_program, self.mp_arch == "x86_64"
        if v.pc == "after_event" or program == "busy":
            v.progress += 1
            return None, Block("guest runs (busy)", x86)  # an NMI makes an x86 guest exit
        if program == "hlt":
            v.progress += 1
            if x86:
                if self.kvm_emulate_halt(v):
                    return None, None
                return run_result(0, KVM_EXIT_HLT), None
            if v.wakeup_pending:  # WFI completes; the guest reports it by MMIO
                v.wakeup_pending = False
                return run_result(0, KVM_EXIT_MMIO), None
            return None, Block("WFI: waits for an interrupt", True)
        if program == "pio":
            v.progress += 1
            return (run_result(0, KVM_EXIT_IO, port=PIO_PORT) if x86 else run_result(0, KVM_EXIT_MMIO)), None
        if program == "psci_suspend":
            v.progress += 1
            v.regs = {"x0": PSCI_0_2_FN64_SYSTEM_SUSPEND, "x1": PSCI_SUSPEND_ENTRY,
                      "x2": PSCI_SUSPEND_CONTEXT, "pc": 0x1004}
            v.pc = "after_event"
            if self.mp_system_suspend:  # the call's parameters stay in place for userspace
                return run_result(0, KVM_EXIT_SYSTEM_EVENT, KVM_SYSTEM_EVENT_SUSPEND), None
            v.regs["x0"] = PSCI_RET_NOT_SUPPORTED  # KVM answers the call itself
            return None, None
        event = self.system_event_type(program)
        v.progress += 1
        v.pc = "after_event"
        return run_result(0, KVM_EXIT_SYSTEM_EVENT, event), None

    def system_event_type(self, program: str) -> int:
        return SYSTEM_EVENT_PROGRAMS[self.mp_arch][program]
