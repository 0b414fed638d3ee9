"""Broken variants of the MP-state / KVM_RUN / system-event model: each breaks one rule.

BROKEN maps each machine to the spec that must catch it (and the document text to
check it against, where that is not the newest).
"""

from __future__ import annotations

from typing import Any

from pytest_kvmconf import EIO
from pytest_kvmconf.backend import ThreadContext
from pytest_kvmconf.backends.reference import ReferenceBackend, ReferenceMachine
from pytest_kvmconf.backends.reference.mp import MpVcpu, Steps
from pytest_kvmconf.facets.mp import (
    KVM_CAP_ARM_SYSTEM_SUSPEND,
    KVM_MP_STATE_HALTED,
    KVM_MP_STATE_INIT_RECEIVED,
    KVM_MP_STATE_RUNNABLE,
    KVM_MP_STATE_SIPI_RECEIVED,
    KVM_MP_STATE_STOPPED,
    KVM_MP_STATE_SUSPENDED,
    KVM_MP_STATE_UNINITIALIZED,
    KVM_SYSTEM_EVENT_SHUTDOWN,
    KVM_SYSTEM_EVENT_SUSPEND,
    KVM_SYSTEM_EVENT_WAKEUP,
    PSCI_RET_NOT_SUPPORTED,
    arm64_mp_states,
)
from pytest_kvmconf.scheduling import Point

from . import running


class HaltedReadAsStopped(ReferenceMachine):
    """x86 KVM_GET_MP_STATE reports a HALTED vCPU as KVM_MP_STATE_STOPPED (not an x86 value)."""

    def read_mp_state(self, v: MpVcpu) -> int:
        state = super().read_mp_state(v)
        return KVM_MP_STATE_STOPPED if state == KVM_MP_STATE_HALTED else state


class ApReadAsLoad(ReferenceMachine):
    """x86 KVM_GET_MP_STATE reports an application processor waiting for INIT as the s390 LOAD state."""

    def read_mp_state(self, v: MpVcpu) -> int:
        state = super().read_mp_state(v)
        return 8 if state == KVM_MP_STATE_UNINITIALIZED else state


class ApStartsRunnable(ReferenceMachine):
    """x86 with an in-kernel irqchip: application processors start RUNNABLE, as if INIT had come."""

    def initial_mp_state(self, vcpu: int) -> int:
        return KVM_MP_STATE_RUNNABLE


class IrqchipStatesRefused(ReferenceMachine):
    """KVM_SET_MP_STATE refuses every [x86] state but RUNNABLE even with the in-kernel LAPIC."""

    def mp_state_valid(self, state: int) -> bool:
        return state == KVM_MP_STATE_RUNNABLE if self.mp_arch == "x86_64" else super().mp_state_valid(state)


class SetAcceptsAnyState(ReferenceMachine):
    """KVM_SET_MP_STATE takes any number, even ones the architecture has no such state for."""

    def mp_state_valid(self, state: int) -> bool:
        return True


class RejectedSetStillStores(ReferenceMachine):
    """KVM_SET_MP_STATE fails with EINVAL but has already stored the state."""

    def kvm_set_mp_state(self, ctx: ThreadContext, vcpu: int, state: int) -> Steps:
        if not self.mp_state_valid(state):
            self.mp_vcpus[vcpu].state = state
        return (yield from super().kvm_set_mp_state(ctx, vcpu, state))


class SetRefusesInitReceived(ReferenceMachine):
    """x86 KVM_SET_MP_STATE refuses INIT_RECEIVED and SIPI_RECEIVED even with the in-kernel irqchip."""

    def mp_state_valid(self, state: int) -> bool:
        return state not in (KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_SIPI_RECEIVED) and super().mp_state_valid(state)


class HltExitsWithIrqchip(ReferenceMachine):
    """x86 HLT exits to userspace (KVM_EXIT_HLT) even with the in-kernel irqchip."""

    def kvm_emulate_halt(self, v: MpVcpu) -> bool:
        return False


class HltWithoutIrqchipSetsHalted(ReferenceMachine):
    """Without an in-kernel irqchip KVM exits on HLT but also moves the vCPU to HALTED itself."""

    def kvm_emulate_halt(self, v: MpVcpu) -> bool:
        if not self.mp_irqchip:
            v.state = KVM_MP_STATE_HALTED
        return super().kvm_emulate_halt(v)


class IgnoresImmediateExit(ReferenceMachine):
    """KVM_RUN does not poll immediate_exit: a kick sent before the vCPU thread enters KVM_RUN is lost."""

    def kvm_run_immediate_exit(self, v: MpVcpu) -> bool:
        return False


class SignalIgnoredWhileHalted(ReferenceMachine):
    """A signal does not bring a HALTED vCPU out of KVM_RUN (the halt loop ignores signal_pending)."""

    def signal_pending(self, v: MpVcpu) -> bool:
        if v.signal_pending and v.state == KVM_MP_STATE_HALTED:
            v.signal_pending = False
            return False
        return super().signal_pending(v)


class SignalWakesHalted(ReferenceMachine):
    """A signal makes a HALTED vCPU RUNNABLE on its way out of KVM_RUN."""

    def signal_pending(self, v: MpVcpu) -> bool:
        if v.signal_pending and v.state == KVM_MP_STATE_HALTED:
            v.state = KVM_MP_STATE_RUNNABLE
        return super().signal_pending(v)


class ImmediateExitAfterGuestEntry(ReferenceMachine):
    """immediate_exit is honoured only after the guest has run a little."""

    def kvm_run_immediate_exit(self, v: MpVcpu) -> bool:
        if v.immediate_exit and v.state == KVM_MP_STATE_RUNNABLE:
            v.progress += 1
        return super().kvm_run_immediate_exit(v)


class Arm64RefusesSuspended(ReferenceMachine):
    """arm64 KVM_SET_MP_STATE refuses SUSPENDED (the 4.13 rule kept after 5.19)."""

    def mp_state_valid(self, state: int) -> bool:
        if self.mp_arch == "arm64":
            return state in arm64_mp_states("4.13")
        return super().mp_state_valid(state)


class RiscvAcceptsSuspended(ReferenceMachine):
    """riscv KVM_SET_MP_STATE also takes arm64's SUSPENDED."""

    def mp_state_valid(self, state: int) -> bool:
        return super().mp_state_valid(state) or (self.mp_arch == "riscv" and state == KVM_MP_STATE_SUSPENDED)


class Arm64AcceptsSuspendedIn413(ReferenceMachine):
    """Checked against the 4.13 text, arm64 accepts SUSPENDED, which that text does not allow."""

    def mp_state_valid(self, state: int) -> bool:
        if self.mp_arch == "arm64":
            return state in arm64_mp_states("6.18")
        return super().mp_state_valid(state)


class SuspendedRunsGuest(ReferenceMachine):
    """A SUSPENDED arm64 vCPU runs its guest like a RUNNABLE one (no WFI emulation)."""

    def kvm_run_step_arm(self, v: MpVcpu) -> tuple[dict | None, Any]:
        if v.state == KVM_MP_STATE_SUSPENDED and not v.wakeup_pending:
            return self.guest_program(v)
        return super().kvm_run_step_arm(v)


class WakeupMakesRunnable(ReferenceMachine):
    """On the WAKEUP exit KVM makes the vCPU RUNNABLE itself."""

    def suspend_wakeup_exit(self, v: MpVcpu) -> None:
        v.state = KVM_MP_STATE_RUNNABLE


class WakeupReportedAsSuspend(ReferenceMachine):
    """The wake-up exit carries KVM_SYSTEM_EVENT_SUSPEND instead of KVM_SYSTEM_EVENT_WAKEUP."""

    def kvm_run_step_arm(self, v: MpVcpu) -> tuple[dict | None, Any]:
        result, wait = super().kvm_run_step_arm(v)
        if result is not None and result["system_event"] == KVM_SYSTEM_EVENT_WAKEUP:
            result = {**result, "system_event": KVM_SYSTEM_EVENT_SUSPEND}
        return result, wait


class WakeupConsumedByExit(ReferenceMachine):
    """The WAKEUP exit consumes the event: the next KVM_RUN waits although the interrupt is still pending."""

    def suspend_wakeup_exit(self, v: MpVcpu) -> None:
        v.wakeup_pending = False


class SuppressIgnored(ReferenceMachine):
    """KVM keeps seeing the wake-up event after userspace masked the interrupt."""

    def suppress_wakeup(self, ctx: ThreadContext, vcpu: int) -> Steps:
        yield Point(f"vcpu{vcpu}: the wake-up interrupt is masked (KVM does not notice)")


class RunnableAfterWakeupIgnored(ReferenceMachine):
    """KVM_SET_MP_STATE(RUNNABLE) of a SUSPENDED vCPU returns 0 but the vCPU stays SUSPENDED."""

    def store_mp_state(self, v: MpVcpu, state: int) -> None:
        if not (state == KVM_MP_STATE_RUNNABLE and v.state == KVM_MP_STATE_SUSPENDED):
            super().store_mp_state(v, state)


class SuspendClobbersArguments(ReferenceMachine):
    """KVM writes a PSCI return value into x0 before the SUSPEND exit (the function id is gone)."""

    def guest_program(self, v: MpVcpu) -> tuple[dict | None, Any]:
        result, wait = super().guest_program(v)
        if result is not None and result["system_event"] == KVM_SYSTEM_EVENT_SUSPEND:
            v.regs["x0"] = 0
        return result, wait


class SuspendExitWithoutCapability(ReferenceMachine):
    """PSCI SYSTEM_SUSPEND exits to userspace whether or not KVM_CAP_ARM_SYSTEM_SUSPEND was enabled."""

    def init_mp(self, config: Any) -> None:
        super().init_mp(config)
        self.mp_system_suspend = True


class SuspendIgnoredReturnsSuccess(ReferenceMachine):
    """With the capability off, PSCI SYSTEM_SUSPEND makes no exit, but the guest reads SUCCESS (0)."""

    def guest_program(self, v: MpVcpu):
        result = super().guest_program(v)
        if v.regs.get("x0") == PSCI_RET_NOT_SUPPORTED:
            v.regs["x0"] = 0
        return result


class SystemSuspendOnEveryArch(ReferenceMachine):
    """KVM_CAP_ARM_SYSTEM_SUSPEND is offered and can be enabled on x86 too."""

    def kvm_vm_ioctl_check_extension(self, cap: int) -> int:
        return 1 if cap == KVM_CAP_ARM_SYSTEM_SUSPEND else super().kvm_vm_ioctl_check_extension(cap)


class SystemSuspendNotOffered(ReferenceMachine):
    """arm64 does not offer KVM_CAP_ARM_SYSTEM_SUSPEND."""

    def kvm_vm_ioctl_check_extension(self, cap: int) -> int:
        return 0 if cap == KVM_CAP_ARM_SYSTEM_SUSPEND else super().kvm_vm_ioctl_check_extension(cap)


class ResetReportedAsShutdown(ReferenceMachine):
    """A reset request is reported with type KVM_SYSTEM_EVENT_SHUTDOWN."""

    def system_event_type(self, program: str) -> int:
        return KVM_SYSTEM_EVENT_SHUTDOWN if program == "system_reset" else super().system_event_type(program)


class SystemEventDestroysVcpu(ReferenceMachine):
    """After a system event the vCPU is gone: KVM_RUN and KVM_GET_MP_STATE fail with EIO."""

    def kvm_prepare_system_event(self, v: MpVcpu, event: int) -> None:
        super().kvm_prepare_system_event(v, event)
        self.mp_dead = True

    def kvm_run(self, ctx: ThreadContext, vcpu: int) -> Steps:
        if getattr(self, "mp_dead", False):
            yield Point("KVM_RUN: the vCPU was destroyed, -EIO")
            return {"ret": -EIO, "exit_reason": 0, "system_event": None, "port": None}
        return (yield from super().kvm_run(ctx, vcpu))

    def kvm_get_mp_state(self, ctx: ThreadContext, vcpu: int) -> Steps:
        if getattr(self, "mp_dead", False):
            yield Point("KVM_GET_MP_STATE: the vCPU was destroyed, -EIO")
            return -EIO
        return (yield from super().kvm_get_mp_state(ctx, vcpu))


class CrashDestroysVcpu(SystemEventDestroysVcpu):
    """x86: after a crash report the vCPU is gone: KVM_RUN and KVM_GET_MP_STATE fail with EIO."""


class CrashReportedAsShutdown(ReferenceMachine):
    """x86: a Hyper-V crash report is reported with type KVM_SYSTEM_EVENT_SHUTDOWN."""

    def system_event_type(self, program: str) -> int:
        return KVM_SYSTEM_EVENT_SHUTDOWN if program == "crash" else super().system_event_type(program)


def backend(machine: type) -> ReferenceBackend:
    return running(machine, f"broken-{machine.__name__}")


#: broken machine -> (the guarantee that must catch it, the document text to check).
BROKEN: dict[type, tuple[str, str]] = {
    HaltedReadAsStopped: ("MP-01", "6.18"),
    ApReadAsLoad: ("MP-01", "6.18"),
    ApStartsRunnable: ("MP-01.b", "6.18"),
    IrqchipStatesRefused: ("MP-02.a", "6.18"),
    SetAcceptsAnyState: ("MP-02", "6.18"),
    RejectedSetStillStores: ("MP-02", "6.18"),
    SetRefusesInitReceived: ("MP-02", "6.18"),
    HltExitsWithIrqchip: ("MP-03.a", "6.18"),
    HltWithoutIrqchipSetsHalted: ("MP-03.b", "6.18"),
    IgnoresImmediateExit: ("MP-04", "6.18"),
    SignalIgnoredWhileHalted: ("MP-04.a", "6.18"),
    SignalWakesHalted: ("MP-04.a", "6.18"),
    ImmediateExitAfterGuestEntry: ("MP-04.b", "6.18"),
    Arm64RefusesSuspended: ("MP-05.a", "6.18"),
    RiscvAcceptsSuspended: ("MP-05.b", "6.18"),
    Arm64AcceptsSuspendedIn413: ("MP-05.c", "4.13"),
    SuspendedRunsGuest: ("MP-06", "6.18"),
    WakeupMakesRunnable: ("MP-07", "6.18"),
    WakeupReportedAsSuspend: ("MP-07", "6.18"),
    WakeupConsumedByExit: ("MP-08.a", "6.18"),
    SuppressIgnored: ("MP-08.b", "6.18"),
    RunnableAfterWakeupIgnored: ("MP-08.c", "6.18"),
    SuspendClobbersArguments: ("MP-09.a", "6.18"),
    SuspendExitWithoutCapability: ("MP-09.b", "6.18"),
    SuspendIgnoredReturnsSuccess: ("MP-09.b", "6.18"),
    SystemSuspendOnEveryArch: ("MP-10.a", "6.18"),
    ResetReportedAsShutdown: ("MP-10.b", "6.18"),
    SystemSuspendNotOffered: ("MP-10.c", "6.18"),
    SystemEventDestroysVcpu: ("MP-11", "6.18"),
    CrashDestroysVcpu: ("MP-11.a", "6.18"),
    CrashReportedAsShutdown: ("MP-11.a", "6.18"),
}
