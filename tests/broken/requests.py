"""Broken variants of the reference model of vcpu-requests.rst.

Each class breaks exactly one documented rule, the way a real implementation
could get it wrong, and names the guarantees that must catch it. A variant no
spec can catch would mean those specs check nothing.
"""

from __future__ import annotations

from pytest_kvmconf.backends.reference import ReferenceBackend, ReferenceMachine
from pytest_kvmconf.backends.reference.requests import VCpu
from pytest_kvmconf.facets.requests import (
    EXITING_GUEST_MODE,
    IN_GUEST_MODE,
    KVM_REQ_UNHALT,
    KVM_REQ_VM_DEAD,
    KVM_REQUEST_MASK,
    KVM_REQUEST_NO_WAKEUP,
    KVM_REQUEST_WAIT,
    OUTSIDE_GUEST_MODE,
    READING_SHADOW_PAGE_TABLES,
)
from pytest_kvmconf.scheduling import Point, Wait

from . import running

#: variant name -> (machine class, guarantee ids that must catch it, what is broken)
VARIANTS: dict[str, tuple[type, tuple[str, ...], str]] = {}


def variant(*gids: str, doc: str):
    def register(cls: type) -> type:
        VARIANTS[cls.__name__] = (cls, gids, doc)
        return cls
    return register


def backend(name: str) -> ReferenceBackend:
    """A reference backend running the named broken machine."""
    return running(VARIANTS[name][0], f"broken:{name}")


@variant("REQ-01", doc="kvm_test_request tests the unmasked request, so flagged requests never test true")
class TestUnmasked(ReferenceMachine):
    def kvm_test_request(self, ctx, req, vcpu):
        pending = bool(self.vcpus[vcpu].requests & (1 << req))
        yield Point(f"test_bit({req})")
        return pending


@variant("REQ-01", doc="kvm_request_pending only looks at the architecture-independent byte")
class PendingLowByte(ReferenceMachine):
    def kvm_request_pending(self, ctx, vcpu):
        pending = self.vcpus[vcpu].requests & 0xFF != 0
        yield Point(f"kvm_request_pending() = {pending}")
        return pending


@variant("REQ-02", "REQ-16", doc="kvm_check_request returns true but does not clear the request")
class CheckDoesNotClear(ReferenceMachine):
    def kvm_check_request(self, ctx, req, vcpu):
        pending = bool(self.vcpus[vcpu].requests & (1 << (req & KVM_REQUEST_MASK)))
        yield Point(f"kvm_check_request() = {pending} (not cleared)")
        return pending

    def check_vcpu_requests(self, v):
        while v.requests:
            nr = (v.requests & -v.requests).bit_length() - 1
            v.handled.append(nr)
            yield Point(f"handled {nr} (not cleared)")
            if len(v.handled) > 50:
                return False
            break
        return False


@variant("REQ-03", doc="kvm_clear_request clears the neighbouring bit too")
class ClearNeighbour(ReferenceMachine):
    def kvm_clear_request(self, ctx, req, vcpu):
        nr = req & KVM_REQUEST_MASK
        self.vcpus[vcpu].requests &= ~(3 << nr)
        yield Point(f"clear bits {nr} and {nr + 1}")


@variant("REQ-03", doc="kvm_test_request consumes the request it tests")
class TestConsumes(ReferenceMachine):
    def kvm_test_request(self, ctx, req, vcpu):
        bit = 1 << (req & KVM_REQUEST_MASK)
        v = self.vcpus[vcpu]
        pending = bool(v.requests & bit)
        v.requests &= ~bit
        yield Point(f"test and clear = {pending}")
        return pending


@variant("REQ-04", doc="set_bit as a non-atomic read-modify-write of the bitmap")
class NonAtomicSetBit(ReferenceMachine):
    def set_request_bit(self, v: VCpu, req: int):
        seen = v.requests
        yield Point(f"READ vcpu->requests = {seen:#x}")
        v.requests = seen | (1 << (req & KVM_REQUEST_MASK))
        yield Point("WRITE vcpu->requests")


@variant("REQ-05", doc="the request's flags are not masked off before setting the bit")
class FlagsSelectBit(ReferenceMachine):
    def set_request_bit(self, v: VCpu, req: int):
        v.requests |= 1 << (req & 0x3FF)
        yield Point(f"set_bit({req & 0x3FF})")


@variant("REQ-06", doc="kvm_make_all_cpus_request forgets the last vCPU")
class MakeAllSkipsLast(ReferenceMachine):
    def kvm_for_each_vcpu(self):
        return self.vcpus[:-1]


@variant("REQ-07", "REQ-15", "REQ-16", doc="a kick moves the vCPU to EXITING_GUEST_MODE but never sends the IPI")
class KickWithoutIpi(ReferenceMachine):
    def kvm_vcpu_kick(self, ctx, vcpu):
        v = self.vcpus[vcpu]
        if self.kvm_vcpu_wake_up(v):
            yield Point("woke it")
            return
        old = self.kvm_vcpu_exiting_guest_mode(v)
        v.kicks.append((old, -1, "none"))
        yield Point(f"mode was {old}: no IPI")


@variant("REQ-08", "REQ-21", doc="a kick never wakes a sleeping vCPU")
class KickDoesNotWake(ReferenceMachine):
    def kvm_vcpu_wake_up(self, v: VCpu) -> bool:
        return False


@variant("REQ-09", doc="a kick sends an IPI whatever the vCPU's mode")
class KickAlwaysIpi(ReferenceMachine):
    def kvm_vcpu_kick(self, ctx, vcpu):
        v = self.vcpus[vcpu]
        if self.kvm_vcpu_wake_up(v):
            yield Point("woke it")
            return
        old = self.kvm_vcpu_exiting_guest_mode(v)
        v.kicks.append((old, -1, "ipi"))
        self.send_ipi(v)
        yield Point("IPI sent")


@variant("REQ-10", doc="KVM_REQUEST_NO_WAKEUP is ignored: sleeping vCPUs are woken")
class NoWakeupIgnored(ReferenceMachine):
    def request_no_wakeup(self, req):
        return False


@variant("REQ-11", "REQ-22", doc="a WAIT request returns before the IPIs are acknowledged")
class WaitWithoutAcks(ReferenceMachine):
    def csd_lock_wait(self, targets, expected):
        yield Point("smp_call_function_many(): returns at once")


@variant("REQ-12", doc="a WAIT request waits until every vCPU handled it, sleeping ones too")
class WaitOnSleepers(ReferenceMachine):
    def kvm_make_all_cpus_request(self, ctx, req):
        result = yield from super().kvm_make_all_cpus_request(ctx, req)
        if req & KVM_REQUEST_WAIT:
            nr = req & KVM_REQUEST_MASK
            yield Wait("wait until every vCPU handled the request",
                       lambda: all(not v.requests >> nr & 1 for v in self.vcpus))
        return result


@variant("REQ-13", doc="the IPI condition ignores KVM_REQUEST_WAIT (IN_GUEST_MODE only)")
class WaitConditionIgnored(ReferenceMachine):
    def kvm_request_needs_ipi(self, v, req):
        old = self.kvm_vcpu_exiting_guest_mode(v)
        return old, old == IN_GUEST_MODE


@variant("REQ-14", doc="the associated state is written after the request bit")
class StateAfterBit(ReferenceMachine):
    def kvm_make_request(self, ctx, req, vcpu, state=None):
        v = self.vcpus[vcpu]
        yield from self.set_request_bit(v, req)
        if state is not None:
            v.request_state[req & KVM_REQUEST_MASK] = state
            yield Point(f"WRITE request state = {state}")


@variant("REQ-15", "REQ-16", doc="the last kvm_request_pending() check comes before setting IN_GUEST_MODE")
class CheckBeforeMode(ReferenceMachine):
    def vcpu_enter_guest(self, v):
        v.irqs_disabled = True
        yield Point("local_irq_disable()")
        pending = v.requests != 0
        yield Point(f"kvm_request_pending() = {str(pending).lower()}")
        if pending:
            self.local_irq_enable(v)
            return False
        v.mode = IN_GUEST_MODE
        v.stay_ipis = 0
        yield Point("WRITE_ONCE(vcpu->mode, IN_GUEST_MODE)")
        yield from self.guest_enter(v)
        return True


@variant("REQ-16", doc="the entry check only sees architecture-independent requests")
class EntryCheckLowByte(ReferenceMachine):
    def kvm_vcpu_exit_request(self, v):
        if v.mode == EXITING_GUEST_MODE or v.requests & 0xFF:
            return "EXITING_GUEST_MODE or an architecture-independent request"
        return None


@variant("REQ-17", doc="a kick sends its IPI but leaves the vCPU IN_GUEST_MODE")
class KickLeavesInGuestMode(ReferenceMachine):
    def kvm_vcpu_exiting_guest_mode(self, v: VCpu) -> int:
        return v.mode


@variant("REQ-18", doc="a kicker moves the vCPU straight to OUTSIDE_GUEST_MODE")
class KickWritesOutside(ReferenceMachine):
    def kvm_vcpu_exiting_guest_mode(self, v: VCpu) -> int:
        old = v.mode
        if old == IN_GUEST_MODE:
            v.mode = OUTSIDE_GUEST_MODE
        return old


@variant("REQ-18", doc="IN_GUEST_MODE is set before interrupts are disabled")
class ModeBeforeIrqDisable(ReferenceMachine):
    def vcpu_enter_guest(self, v):
        v.mode = IN_GUEST_MODE
        v.stay_ipis = 0
        yield Point("WRITE_ONCE(vcpu->mode, IN_GUEST_MODE)")
        v.irqs_disabled = True
        yield Point("local_irq_disable()")
        if v.mode != IN_GUEST_MODE or v.requests:
            v.mode = OUTSIDE_GUEST_MODE
            self.local_irq_enable(v)
            yield Point("abort")
            return False
        yield from self.guest_enter(v)
        return True


@variant("REQ-19", doc="KVM_REQ_OUTSIDE_GUEST_MODE does not wait for the exits")
class OutsideGuestModeNoWait(ReferenceMachine):
    def kvm_make_all_cpus_request(self, ctx, req):
        return (yield from super().kvm_make_all_cpus_request(ctx, req & ~KVM_REQUEST_WAIT))


@variant("REQ-20", doc="the run loop handles KVM_REQ_VM_DEAD like any request and enters the guest")
class VmDeadIgnored(ReferenceMachine):
    def vcpu_run(self, ctx, vcpu, entries=1):
        saved, self.vm_dead = self.vm_dead, False
        try:
            gen = super().vcpu_run(ctx, vcpu, entries)
        finally:
            self.vm_dead = saved
        return (yield from gen)

    def check_vcpu_requests(self, v):
        v.requests &= ~(1 << (KVM_REQ_VM_DEAD & KVM_REQUEST_MASK))
        return (yield from super().check_vcpu_requests(v))


@variant("REQ-21", doc="kvm_vcpu_check_block ignores KVM_REQ_UNBLOCK")
class UnblockIgnored(ReferenceMachine):
    def kvm_vcpu_check_block(self, v):
        if v.runnable:
            return "runnable"
        if v.signal_pending:
            return "signal"
        return None


@variant("REQ-22", doc="kvm_flush_remote_tlbs makes the request without KVM_REQUEST_WAIT")
class FlushWithoutWait(ReferenceMachine):
    def kvm_flush_remote_tlbs(self, ctx):
        self.tlb_flushes_started += 1
        yield from self.kvm_make_all_cpus_request(ctx, 0 | KVM_REQUEST_NO_WAKEUP)
        self.tlb_flushes_done += 1
        yield Point("kvm_flush_remote_tlbs() returns")


@variant("REQ-23", doc="claims the documented entry sequence, yet remembers every kick and aborts the next entry")
class KickNeverLost(ReferenceMachine):
    def kvm_vcpu_kick(self, ctx, vcpu):
        self.vcpus[vcpu].kick_pending = True
        yield from super().kvm_vcpu_kick(ctx, vcpu)

    def kvm_vcpu_exit_request(self, v):
        kicked, v.kick_pending = getattr(v, "kick_pending", False), False
        return "a kick is remembered" if kicked else super().kvm_vcpu_exit_request(v)


@variant("REQ-24", doc="the posted-interrupt sender reads vcpu->mode before setting PIR.ON")
class PirOnAfterModeRead(ReferenceMachine):
    def post_interrupt(self, ctx, vcpu, vector=32):
        v = self.vcpus[vcpu]
        in_guest_mode = v.mode == IN_GUEST_MODE
        yield Point(f"READ vcpu->mode: {'IN' if in_guest_mode else 'not IN'}_GUEST_MODE")
        v.pir = v.pir | {vector}
        v.pir_on = True
        yield Point("pi_test_and_set_on()")
        if in_guest_mode:
            self.send_pi_notification(v)
            yield Point("notification IPI")


@variant("REQ-24", doc="the vCPU syncs PIR to IRR before setting IN_GUEST_MODE")
class SyncPirBeforeMode(ReferenceMachine):
    def vcpu_enter_guest(self, v):
        v.irqs_disabled = True
        self.vmx_sync_pir_to_irr(v)
        yield Point("local_irq_disable(); vmx_sync_pir_to_irr()")
        v.mode = IN_GUEST_MODE
        v.stay_ipis = 0
        yield Point("WRITE_ONCE(vcpu->mode, IN_GUEST_MODE)")
        if v.mode != IN_GUEST_MODE or v.requests:
            v.mode = OUTSIDE_GUEST_MODE
            self.local_irq_enable(v)
            yield Point("abort")
            return False
        yield Point("smp_mb(); kvm_request_pending() = false")
        yield from self.guest_enter(v)
        return True


@variant("REQ-25", doc="lost wake-up: kvm_vcpu_block marks itself sleeping only after the check")
class LostWakeup(ReferenceMachine):
    def set_current_state(self, v):
        pass  # not before the check ...

    def schedule(self, v):
        v.woken = False  # ... but after it: a wake-up since the check is forgotten
        v.interruptible = True
        yield from super().schedule(v)


@variant("REQ-25", doc="kvm_vcpu_block does not ask kvm_arch_vcpu_runnable before sleeping")
class BlockIgnoresRunnable(ReferenceMachine):
    def kvm_vcpu_check_block(self, v):
        if v.woken and v.runnable:
            return "runnable"
        return super().kvm_vcpu_check_block(v) if not v.runnable else None


@variant("REQ-26", doc="kvm_vcpu_block makes KVM_REQ_UNHALT whenever it returns, signals included")
class UnhaltOnSignal(ReferenceMachine):
    def kvm_vcpu_block(self, ctx, vcpu):
        reason = yield from super().kvm_vcpu_block(ctx, vcpu)
        if self.old_text and reason != "runnable":
            yield from self.set_request_bit(self.vcpus[vcpu], KVM_REQ_UNHALT)
        return reason


@variant("REQ-26.a", doc="kvm_make_all_cpus_request overwrites the bitmap instead of setting one bit")
class RequesterOverwrites(ReferenceMachine):
    def kvm_make_all_cpus_request(self, ctx, req):
        for v in self.vcpus:
            v.requests = 0
        return (yield from super().kvm_make_all_cpus_request(ctx, req))


@variant("REQ-06", doc="kvm_make_all_cpus_request returns true whether or not it sent an IPI")
class MakeAllAlwaysTrue(ReferenceMachine):
    def kvm_make_all_cpus_request(self, ctx, req):
        yield from super().kvm_make_all_cpus_request(ctx, req)
        return True


@variant("REQ-08", doc="a kick that wakes a sleeping vCPU sends it an IPI as well")
class KickWakesAndIpis(ReferenceMachine):
    def kvm_vcpu_kick(self, ctx, vcpu):
        v = self.vcpus[vcpu]
        if self.kvm_vcpu_wake_up(v):
            self.send_ipi(v)
            yield Point(f"kvm_vcpu_wake_up(vcpu{vcpu}): woke it, and an IPI")
            return
        yield from super().kvm_vcpu_kick(ctx, vcpu)


@variant("REQ-09", doc="a plain kick treats READING_SHADOW_PAGE_TABLES as guest mode and sends an IPI")
class KickIpisShadowWalk(ReferenceMachine):
    def kvm_vcpu_kick(self, ctx, vcpu):
        v = self.vcpus[vcpu]
        if v.mode == READING_SHADOW_PAGE_TABLES and not v.sleeping:
            self.send_ipi(v)
            yield Point(f"vcpu{vcpu} READING_SHADOW_PAGE_TABLES: IPI")
            return
        yield from super().kvm_vcpu_kick(ctx, vcpu)


@variant("REQ-13", doc="without KVM_REQUEST_WAIT the IPI condition is still 'not OUTSIDE_GUEST_MODE'")
class PlainRequestIpisShadowWalk(ReferenceMachine):
    def kvm_request_needs_ipi(self, v, req):
        old = self.kvm_vcpu_exiting_guest_mode(v)
        return old, old != OUTSIDE_GUEST_MODE
