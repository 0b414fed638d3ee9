"""Model of vcpu-requests.rst: request bitmap, vcpu->mode, kicks, IPIs, the run
loop's guest-entry sequence, kvm_vcpu_block and posted interrupts.

Every action the document orders against another thread is followed by a
scheduling point (``yield Point``), so the engine can interleave other threads
exactly there. The overridable methods are the facets' operations and their
*steps* (declared in :mod:`pytest_kvmconf.facets.requests`, the same names and
parameters as in the threaded backend), each small and named after the kernel
function it models, so a broken variant overrides one of them; the rest is
private.

The accesses the document's barrier pairings order (``vcpu->requests``,
``vcpu->mode``, the request's associated state, the posted-interrupt
descriptor) and the barriers themselves go through ``self.memory``
(:mod:`pytest_kvmconf.engine.memory`) with the kernel's names, so that under
``--kvm-memory-model=tso|lkmm`` they are buffered and reordered as the
hardware or the kernel memory model allows. The rest (interrupt flag, wait
queue, counters) is per-CPU or lock-protected state and stays plain.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EIO", "RequestsModel", "VCpu"]

from ...backend import MachineConfig, ThreadContext
from ...engine.memory import SharedMap
from ...facets.requests import (
    EIO,
    EXITING_GUEST_MODE,
    IN_GUEST_MODE,
    KVM_REQ_TLB_FLUSH,
    KVM_REQ_UNBLOCK,
    KVM_REQ_UNHALT,
    KVM_REQ_VM_DEAD,
    KVM_REQUEST_MASK,
    KVM_REQUEST_NO_ACTION,
    KVM_REQUEST_WAIT,
    MODE_NAMES,
    OUTSIDE_GUEST_MODE,
    READING_SHADOW_PAGE_TABLES,
    has_unblock,
    has_vm_dead,
    is_old_text,
    vcpu_view,
)
from ...scheduling import Point, Wait
from ..requests_common import RequestMemorySteps

Steps = Generator[Point | Wait, None, Any]


@dataclass
class VCpu:
    id: int
    requests: int = 0  # the vcpu->requests bitmap
    request_state: dict[int, Any] = field(default_factory=dict)
    mode: int = OUTSIDE_GUEST_MODE
    irqs_disabled: bool = False
    in_guest: bool = False
    entries: int = 0
    exits: int = 0
    aborts: int = 0
    handled: list[int] = field(default_factory=list)
    ipis: int = 0
    ipis_pending: int = 0
    acks: int = 0
    stay_ipis: int = 0
    kicks: list[tuple[int, int, str]] = field(default_factory=list)
    sleeping: bool = False  # on the wait queue (rcuwait)
    in_schedule: bool = False  # gave up the CPU in schedule()
    woken: bool = False  # TASK_RUNNING again after set_current_state
    interruptible: bool = False  # TASK_INTERRUPTIBLE: set_current_state() done, not woken since
    timer_pending: bool = False  # kvm_cpu_has_pending_timer()
    wakeups: int = 0
    runnable: bool = False  # kvm_arch_vcpu_runnable()
    signal_pending: bool = False
    block_result: str | None = None
    tlb_gen: int = 0  # the flush generation this vCPU's TLB is clean for
    pir: frozenset[int] = frozenset()
    pir_on: bool = False
    pi_notification: bool = False
    irr: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.request_state = SharedMap(f"vcpu{self.id}->request_state")

    @property
    def mem_name(self) -> str:
        return f"vcpu{self.id}"

    def view(self) -> dict[str, Any]:
        return vcpu_view(self, self.requests, self.mode)


class RequestsModel(RequestMemorySteps):
    """Facet mixin: requests, kick, run_loop, block."""

    def init_requests(self, config: MachineConfig) -> None:
        self.old_text = is_old_text(config.doc_version)
        self.has_unblock = has_unblock(config.doc_version)
        self.has_vm_dead = has_vm_dead(config.doc_version)
        self.vcpus = [VCpu(i) for i in range(config.vcpus)]
        self.ipis_sent = 0
        self.vm_dead = False
        self.tlb_flushes_started = 0
        self.tlb_flushes_done = 0

    def observe_requests(self) -> dict[str, Any]:
        return {
            "vcpus": [v.view() for v in self.vcpus],
            "ipis_sent": self.ipis_sent,
            "vm_dead": self.vm_dead,
            "tlb_flushes_started": self.tlb_flushes_started,
            "tlb_flushes_done": self.tlb_flushes_done,
        }

    # -- the request API ----------------------------------------------------
    def kvm_make_request(self, ctx: ThreadContext, req: int, vcpu: int, state: Any = None) -> Steps:
        if req & KVM_REQUEST_NO_ACTION:
            raise ValueError("kvm_make_request() of a NO_ACTION request is a build error in KVM")
        v = self.vcpus[vcpu]
        if state is not None:
            self.memory.write_once(v.request_state, req & KVM_REQUEST_MASK, state)
            yield Point(f"WRITE request state = {state}")
        yield from self.set_request_bit(v, req)

    def set_request_bit(self, v: VCpu, req: int) -> Steps:
        """__kvm_make_request(): the smp_wmb() pairs with kvm_check_request()'s barrier."""
        self.memory.smp_wmb()
        self.memory.set_bit(v, "requests", req & KVM_REQUEST_MASK)
        yield Point(f"smp_wmb(); set_bit({self._name(req)}) on vcpu{v.id}")

    def kvm_check_request(self, ctx: ThreadContext, req: int, vcpu: int) -> Steps:
        pending = self.check_request_bit(self.vcpus[vcpu], req & KVM_REQUEST_MASK)
        yield Point(f"kvm_check_request({self._name(req)}) = {str(pending).lower()}")
        return pending

    def kvm_test_request(self, ctx: ThreadContext, req: int, vcpu: int) -> Steps:
        pending = bool(self.memory.read_once(self.vcpus[vcpu], "requests") >> (req & KVM_REQUEST_MASK) & 1)
        yield Point(f"kvm_test_request({self._name(req)}) = {str(pending).lower()}")
        return pending

    def kvm_clear_request(self, ctx: ThreadContext, req: int, vcpu: int) -> Steps:
        self.memory.clear_bit(self.vcpus[vcpu], "requests", req & KVM_REQUEST_MASK)
        yield Point(f"clear_bit({self._name(req)})")

    def kvm_request_pending(self, ctx: ThreadContext, vcpu: int) -> Steps:
        pending = self.memory.read_once(self.vcpus[vcpu], "requests") != 0
        yield Point(f"kvm_request_pending() = {str(pending).lower()}")
        return pending

    def read_request_state(self, ctx: ThreadContext, req: int, vcpu: int) -> Steps:
        value = self.memory.read_once(self.vcpus[vcpu].request_state, req & KVM_REQUEST_MASK)
        yield Point(f"READ request state = {value}")
        return value

    # -- IPIs and kicks -----------------------------------------------------
    def send_ipi(self, v: VCpu) -> None:
        v.ipis += 1
        self.ipis_sent += 1
        if not v.irqs_disabled and not v.in_guest:
            self.memory.interrupt(v.id)
            v.acks += 1  # the target CPU takes the interrupt at once
        else:
            v.ipis_pending += 1

    def local_irq_disable(self, v: VCpu) -> None:
        v.irqs_disabled = True

    def local_irq_enable(self, v: VCpu) -> None:
        """Pending IPIs are handled (acknowledged). Taking an interrupt serializes the CPU: the
        handler sees what the sender wrote before the IPI."""
        v.irqs_disabled = False
        if v.ipis_pending or v.pi_notification:
            self.memory.smp_mb()
        v.acks += v.ipis_pending
        v.ipis_pending = 0
        if v.pi_notification:
            self.vmx_sync_pir_to_irr(v)
            v.pi_notification = False

    def kvm_vcpu_wake_up(self, v: VCpu) -> bool:
        """rcuwait_wake_up() on the vCPU's rcuwait. True only if it woke the task:
        wake_up_process() of a task already running (before its set_current_state(), or woken
        once already) returns 0, and kvm_vcpu_kick() goes on to its IPI check.
        rcuwait_wake_up() starts with smp_mb(): the waker's writes are visible to the woken task's check."""
        self.memory.smp_mb()
        if not v.sleeping or not v.interruptible:
            return False
        v.interruptible = False
        v.woken = True
        v.wakeups += 1
        return True

    def kvm_vcpu_kick(self, ctx: ThreadContext, vcpu: int) -> Steps:
        v = self.vcpus[vcpu]
        if self.kvm_vcpu_wake_up(v):
            v.kicks.append((v.mode, -1, "wake"))
            yield Point(f"kvm_vcpu_wake_up(vcpu{vcpu}): woke it")
            return
        if ctx.vcpu == vcpu:
            if self.memory.read_once(v, "mode") == IN_GUEST_MODE:
                self.memory.write_once(v, "mode", EXITING_GUEST_MODE)
            v.kicks.append((self.memory.read_once(v, "mode"), -1, "none"))
            yield Point("kick from the vCPU's own thread: no IPI")
            return
        old = self.kvm_vcpu_exiting_guest_mode(v)
        if old == IN_GUEST_MODE:
            v.kicks.append((old, -1, "ipi"))
            v.stay_ipis += 1
            yield Point(f"cmpxchg(mode, IN_GUEST_MODE, EXITING_GUEST_MODE) on vcpu{vcpu}: was IN_GUEST_MODE")
            self.send_ipi(v)
            yield Point(f"smp_send_reschedule(): IPI to vcpu{vcpu}")
        else:
            v.kicks.append((old, -1, "none"))
            yield Point(f"vcpu{vcpu} mode is {MODE_NAMES[old]}: nothing to do")

    def kvm_request_needs_ipi(self, v: VCpu, req: int) -> tuple[int, bool]:
        """WAIT widens the condition to "not OUTSIDE_GUEST_MODE"."""
        old = self.kvm_vcpu_exiting_guest_mode(v)
        if req & KVM_REQUEST_WAIT:
            return old, old != OUTSIDE_GUEST_MODE
        return old, old == IN_GUEST_MODE

    def kvm_make_all_cpus_request(self, ctx: ThreadContext, req: int) -> Steps:
        targets: list[VCpu] = []
        for v in self.kvm_for_each_vcpu():
            if (yield from self.kvm_make_vcpu_request(ctx, v, req)):
                targets.append(v)
        return (yield from self.kvm_kick_many_cpus(targets, bool(req & KVM_REQUEST_WAIT)))

    def kvm_make_vcpu_request(self, ctx: ThreadContext, v: VCpu, req: int) -> Generator[Point | Wait, None, bool]:
        if not self.request_no_action(req):
            yield from self.set_request_bit(v, req)
        if not self.request_no_wakeup(req) and self.kvm_vcpu_wake_up(v):
            v.kicks.append((v.mode, req, "wake"))
            yield Point(f"kvm_vcpu_wake_up(vcpu{v.id}): woke it")
            return False
        old, ipi = self.kvm_request_needs_ipi(v, req)
        if ipi and ctx.vcpu == v.id:
            ipi = False  # never IPI the current CPU
        v.kicks.append((old, req, "ipi" if ipi else "none"))
        if ipi:
            v.stay_ipis += 1
        yield Point(f"vcpu{v.id} mode was {MODE_NAMES[old]}: {'IPI' if ipi else 'no IPI'}")
        return ipi

    def kvm_kick_many_cpus(self, targets: list[VCpu], wait: bool) -> Generator[Point | Wait, None, bool]:
        """smp_call_function_many(@targets, wait), or nothing and false for an empty mask."""
        if not targets:
            return False
        expected = {}
        for v in targets:
            self.send_ipi(v)
            expected[v.id] = v.ipis
        if wait:
            yield from self.csd_lock_wait(targets, expected)
        else:
            yield Point(f"smp_call_function_many({_names(targets)}), no wait")
        return True

    def csd_lock_wait(self, targets: list[VCpu], expected: dict[int, int]) -> Steps:
        yield Wait(f"smp_call_function_many({_names(targets)}): wait for acknowledgements",
                   lambda: all(v.acks >= expected[v.id] for v in targets))

    def kvm_flush_remote_tlbs(self, ctx: ThreadContext) -> Steps:
        self.tlb_flushes_started += 1
        yield from self.kvm_make_all_cpus_request(ctx, KVM_REQ_TLB_FLUSH)
        self.tlb_flushes_done += 1
        yield Point("kvm_flush_remote_tlbs() returns")

    def kvm_vm_dead(self, ctx: ThreadContext) -> Steps:
        self.vm_dead = True
        yield Point("kvm->vm_dead = true")
        yield from self.kvm_make_all_cpus_request(ctx, KVM_REQ_VM_DEAD)

    # -- posted interrupts --------------------------------------------------
    def post_interrupt(self, ctx: ThreadContext, vcpu: int, vector: int = 32) -> Steps:
        """vmx_deliver_posted_interrupt() (arch/x86/kvm/vmx/vmx.c): set the PIR bit and PIR.ON;
        if either was already set a notification is already on its way: nothing more."""
        v = self.vcpus[vcpu]
        already = self.pi_test_and_set_pir_and_on(v, vector)
        yield Point(f"pi_test_and_set_pir({vector}); pi_test_and_set_on()")
        if already:
            yield Point(f"vcpu{v.id} PIR.ON was already set: no notification")
            return
        yield from self.kvm_vcpu_trigger_posted_interrupt(v)

    def kvm_vcpu_trigger_posted_interrupt(self, v: VCpu) -> Steps:
        """The notification IPI if IN_GUEST_MODE, else a wake-up in case the vCPU blocks (it
        syncs PIR to IRR at its next entry)."""
        mode = self.memory.read_once(v, "mode")
        if mode == IN_GUEST_MODE:
            self.send_pi_notification(v)
            yield Point(f"vcpu{v.id} IN_GUEST_MODE: notification IPI sent")
        else:
            woke = self.kvm_vcpu_wake_up(v)
            yield Point(f"vcpu{v.id} mode {MODE_NAMES[mode]}: no notification; kvm_vcpu_wake_up() "
                        + ("woke it" if woke else "found no sleeping task"))

    def send_pi_notification(self, v: VCpu) -> None:
        if v.in_guest:
            self._process_posted_interrupts(v)
        else:
            v.pi_notification = True  # taken when interrupts are enabled at entry

    def _process_posted_interrupts(self, v: VCpu) -> None:
        """The CPU, in guest mode, takes the notification: it moves PIR to IRR atomically, from memory."""
        if v.pir_on:
            v.pir_on = False
            v.irr |= v.pir
            v.pir = frozenset()

    # -- the run loop --------------------------------------------------------
    def vcpu_run(self, ctx: ThreadContext, vcpu: int, entries: int = 1) -> Steps:
        v = self.vcpus[vcpu]
        if self.vm_dead:
            yield Point("KVM_RUN: the VM is dead, -EIO")
            return -EIO
        done = 0
        while done < entries:
            dead = yield from self.check_vcpu_requests(v)
            if dead:
                return -EIO
            entered = yield from self.vcpu_enter_guest(v)
            if not entered:
                continue
            yield from self.guest_exit(v)
            done += 1
        return 0

    def check_vcpu_requests(self, v: VCpu) -> Generator[Point | Wait, None, bool]:
        """The top of vcpu_enter_guest(): kvm_check_request() for each pending request."""
        while bits := self.memory.read_once(v, "requests"):
            nr = (bits & -bits).bit_length() - 1
            self.check_request_bit(v, nr)
            v.handled.append(nr)
            if nr == KVM_REQ_TLB_FLUSH & KVM_REQUEST_MASK:
                v.tlb_gen = self.tlb_flushes_started
            yield Point(f"kvm_check_request({self._name(nr)}) = true: handled")
            if nr == KVM_REQ_VM_DEAD & KVM_REQUEST_MASK and self.has_vm_dead:
                yield Point("KVM_REQ_VM_DEAD: return -EIO")
                return True
        return False

    def vcpu_enter_guest(self, v: VCpu) -> Generator[Point | Wait, None, bool]:
        """The guest-entry sequence of "Ensuring Requests Are Seen"."""
        self.local_irq_disable(v)
        yield Point("local_irq_disable()")
        self.memory.write_once(v, "mode", IN_GUEST_MODE)
        v.stay_ipis = 0
        yield Point("WRITE_ONCE(vcpu->mode, IN_GUEST_MODE)")
        mb = self.smp_mb__after_srcu_read_unlock(v)
        self.vmx_sync_pir_to_irr(v)
        why = self.kvm_vcpu_exit_request(v)
        if why:
            self._outside_guest_mode(v)
            v.aborts += 1
            yield Point(f"{mb}{why}: abort guest entry")
            self.local_irq_enable(v)
            yield Point("local_irq_enable()")
            return False
        yield Point(f"{mb}kvm_request_pending() = false")
        yield from self.guest_enter(v)
        return True

    def guest_enter(self, v: VCpu) -> Steps:
        v.in_guest = True
        v.entries += 1
        v.irqs_disabled = False  # enabled atomically with the entry
        if v.pi_notification:
            self._process_posted_interrupts(v)
            v.pi_notification = False
        yield Wait("VM entry, interrupts enabled atomically: guest runs",
                   lambda: v.ipis_pending > 0, idle=True)

    def guest_exit(self, v: VCpu) -> Steps:
        v.in_guest = False
        v.exits += 1
        v.irqs_disabled = True
        yield Point("VM exit (IPI)")
        self._outside_guest_mode(v)
        yield Point("vcpu->mode = OUTSIDE_GUEST_MODE")
        self.local_irq_enable(v)
        yield Point("local_irq_enable(): pending IPIs acknowledged")

    def walk_shadow_page_tables(self, ctx: ThreadContext, vcpu: int) -> Steps:
        v = self.vcpus[vcpu]
        self.local_irq_disable(v)
        yield Point("local_irq_disable()")
        # walk_shadow_page_lockless_begin()/_end() of x86's MMU.
        self.memory.store_mb(v, "mode", READING_SHADOW_PAGE_TABLES)
        yield Point("vcpu->mode = READING_SHADOW_PAGE_TABLES")
        yield Point("walk the shadow page tables")
        self.memory.store_release(v, "mode", OUTSIDE_GUEST_MODE)
        yield Point("vcpu->mode = OUTSIDE_GUEST_MODE")
        self.local_irq_enable(v)
        yield Point("local_irq_enable()")

    # -- sleeping vCPUs -------------------------------------------------------
    def kvm_vcpu_check_block(self, v: VCpu) -> str | None:
        """Why to stop blocking, in the kernel's order. A posted interrupt still in the PIR
        makes the vCPU runnable (kvm_cpu_has_interrupt())."""
        if v.runnable or v.pir_on:
            return "runnable"
        if v.timer_pending:
            return "timer"
        if v.signal_pending:
            return "signal"
        if self.has_unblock and self.check_request_bit(v, KVM_REQ_UNBLOCK & KVM_REQUEST_MASK):
            return "unblock"
        return None

    def set_current_state(self, v: VCpu) -> None:
        """set_current_state(TASK_INTERRUPTIBLE), before the check: smp_store_mb()."""
        v.woken = False
        v.interruptible = True
        self.memory.smp_mb()

    def schedule(self, v: VCpu) -> Steps:
        v.in_schedule = True
        yield Wait("schedule(): asleep", lambda: v.woken, idle=True)
        v.in_schedule = False

    def kvm_vcpu_block(self, ctx: ThreadContext, vcpu: int) -> Steps:
        v = self.vcpus[vcpu]
        v.sleeping = True
        yield Point("prepare_to_rcuwait(): on the wait queue")
        while True:
            self.set_current_state(v)
            reason = self.kvm_vcpu_check_block(v)
            yield Point(f"kvm_vcpu_check_block() = {reason or 'keep blocking'}")
            if reason:
                break
            yield from self.schedule(v)
        v.sleeping = False
        v.woken = False
        v.interruptible = False  # __set_current_state(TASK_RUNNING)
        v.block_result = reason
        yield Point("finish_rcuwait()")
        if self.old_text and reason == "runnable":
            yield from self.set_request_bit(v, KVM_REQ_UNHALT)
        return reason

    def make_runnable(self, ctx: ThreadContext, vcpu: int, kick: bool = True) -> Steps:
        self.vcpus[vcpu].runnable = True
        yield Point(f"vcpu{vcpu} becomes runnable (kvm_arch_vcpu_runnable)")
        if kick:
            yield from self.kvm_vcpu_kick(ctx, vcpu)

    def expire_timer(self, ctx: ThreadContext, vcpu: int) -> Steps:
        """apic_timer_expired(from_timer_fn=true) in arch/x86/kvm/lapic.c: the timer is pending
        (kvm_cpu_has_pending_timer()), KVM_REQ_UNBLOCK is made, the vCPU is kicked."""
        v = self.vcpus[vcpu]
        v.timer_pending = True
        yield Point(f"atomic_inc(&vcpu{vcpu}->lapic_timer.pending)")
        yield from self.set_request_bit(v, KVM_REQ_UNBLOCK)
        yield from self.kvm_vcpu_kick(ctx, vcpu)

    def send_signal(self, ctx: ThreadContext, vcpu: int) -> Steps:
        v = self.vcpus[vcpu]
        v.signal_pending = True
        self.kvm_vcpu_wake_up(v)
        yield Point(f"signal to the vcpu{vcpu} thread (signal_wake_up)")


def _names(targets: list[VCpu]) -> str:
    return ", ".join(f"vcpu{v.id}" for v in targets)
