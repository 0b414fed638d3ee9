"""vcpu-requests.rst as a concurrent program: requests, kicks, IPIs, the run loop, kvm_vcpu_block.

Every spec thread runs on its own OS thread. Requesters and the vCPU thread
share a :class:`VCpu` through the accesses and barriers the document's pairings
order (the request bitmap and its state, ``vcpu->mode``, the posted-interrupt
descriptor), a per-vCPU "CPU" lock standing for the physical CPU the vCPU thread runs on
(interrupt flag, guest mode, IPIs in flight) and a per-vCPU wait queue lock
(the rcuwait of kvm_vcpu_block). The vCPU thread really waits: in guest mode
until an IPI reaches its CPU, in kvm_vcpu_block until a waker sets it running,
and a KVM_REQUEST_WAIT requester until every IPI it sent is acknowledged. Those
waits go through :func:`~pytest_kvmconf.engine.threads.wait_on`, which is a
real ``Condition.wait`` in free runs and a park at the engine in controlled ones.

The ordered accesses go through ``self.memory`` (:mod:`pytest_kvmconf.engine.memory`)
with the kernel's names, as in the reference model: under sc each is the plain
access or, for an atomic, one indivisible read-modify-write under the vCPU's
``_lock`` (the CPU's locked instruction), so free runs stay correct; under
``--kvm-memory-model=tso|lkmm`` (controlled runs only: one OS thread runs at a
time) stores wait in store buffers and barriers order them, and the timeline
shows what was buffered, drained or read stale.

A scheduling point follows every action the document orders against another
thread, with the same labels as the reference model so timelines compare; no
lock is held at a point (see :mod:`pytest_kvmconf.engine.threads`). The
overridable methods are the operations and the facets' *steps*, with the same
names and parameters as in the reference model (declared in
:mod:`pytest_kvmconf.facets.requests`); the rest is private.
"""

from __future__ import annotations

import threading
from typing import Any

from ...backend import MachineConfig, ThreadContext
from ...engine.memory import SharedMap
from ...engine.threads import wait_on
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
from ...scheduling import point
from ..requests_common import RequestMemorySteps
from .atomics import AtomicInt


class VCpu:
    """One struct kvm_vcpu plus the CPU and the task its thread runs as."""

    def __init__(self, vcpu_id: int):
        self.id = vcpu_id
        self.mem_name = f"vcpu{vcpu_id}"
        # The CPU's locked instruction for the atomics on requests, mode and the PI descriptor
        # (engine.memory takes it under sc; a free run's threads really race).
        self._lock = threading.Lock()
        self.requests = 0  # the vcpu->requests bitmap
        self.request_state = SharedMap(f"vcpu{vcpu_id}->request_state")
        self.mode = OUTSIDE_GUEST_MODE
        # The physical CPU: interrupt flag, guest mode, IPIs not yet taken.
        self.cpu_lock = threading.Lock()
        self.cpu_irq = threading.Condition(self.cpu_lock)  # an IPI arrived
        self.irqs_disabled = False
        self.in_guest = False
        self.ipis = 0
        self.ipis_pending = 0
        self.acks = 0
        self.stay_ipis = 0
        self.pi_notification = False
        self.entries = 0
        self.exits = 0
        self.aborts = 0
        self.handled: list[int] = []  # written by the vCPU thread only
        self.tlb_gen = 0
        self.kicks_lock = threading.Lock()
        self.kicks: list[tuple[int, int, str]] = []
        # The task: the rcuwait it sleeps on in kvm_vcpu_block.
        self.wq_lock = threading.Lock()
        self.wq = threading.Condition(self.wq_lock)
        self.sleeping = False  # prepare_to_rcuwait() .. finish_rcuwait()
        self.in_schedule = False  # gave up the CPU in schedule()
        self.woken = False  # TASK_RUNNING again after set_current_state()
        self.interruptible = False  # TASK_INTERRUPTIBLE: set_current_state() done, not woken since
        self.timer_pending = False  # kvm_cpu_has_pending_timer()
        self.wakeups = 0
        self.runnable = False
        self.signal_pending = False
        self.block_result: str | None = None
        # The posted-interrupt descriptor (its atomics take _lock), and the vIRR the CPU moves it to.
        self.pir: frozenset[int] = frozenset()
        self.pir_on = False
        self.irr: set[int] = set()

    def note_kick(self, seen: int, req: int, action: str) -> None:
        with self.kicks_lock:
            self.kicks.append((seen, req, action))
        if action == "ipi":
            with self.cpu_lock:
                self.stay_ipis += 1  # IPI reduction: decisions to IPI during one guest-mode stay

    def view(self) -> dict[str, Any]:
        """The observable state. Read without locks: the engine only observes while
        every thread is at a scheduling point, where no update is half done."""
        return vcpu_view(self, self.requests, self.mode)


class RequestsThreads(RequestMemorySteps):
    """Facet mixin: requests, kick, run_loop, block (and entry_sequence)."""

    config: MachineConfig

    def init_requests(self, config: MachineConfig) -> None:
        self.old_text = is_old_text(config.doc_version)
        self.has_unblock = has_unblock(config.doc_version)
        self.has_vm_dead = has_vm_dead(config.doc_version)
        self.vcpus = [VCpu(i) for i in range(config.vcpus)]
        self.ipis_sent = AtomicInt()
        self.vm_dead = False
        self.tlb_flushes_started = AtomicInt()
        self.tlb_flushes_done = AtomicInt()
        # smp_call_function_many(wait=true) sleeps here until its IPIs are acknowledged.
        self.acked = threading.Condition()

    def observe_requests(self) -> dict[str, Any]:
        return {
            "vcpus": [v.view() for v in self.vcpus],
            "ipis_sent": self.ipis_sent.read(),
            "vm_dead": self.vm_dead,
            "tlb_flushes_started": self.tlb_flushes_started.read(),
            "tlb_flushes_done": self.tlb_flushes_done.read(),
        }

    # -- the request API ----------------------------------------------------
    def kvm_make_request(self, ctx: ThreadContext, req: int, vcpu: int, state: Any = None) -> None:
        if req & KVM_REQUEST_NO_ACTION:
            raise ValueError("kvm_make_request() of a NO_ACTION request is a build error in KVM")
        v = self.vcpus[vcpu]
        if state is not None:
            self.memory.write_once(v.request_state, req & KVM_REQUEST_MASK, state)
            point(f"WRITE request state = {state}")
        self.set_request_bit(v, req)

    def set_request_bit(self, v: VCpu, req: int) -> None:
        """__kvm_make_request(): the smp_wmb() pairs with kvm_check_request()'s barrier."""
        self.memory.smp_wmb()
        self.memory.set_bit(v, "requests", req & KVM_REQUEST_MASK)
        point(f"smp_wmb(); set_bit({self._name(req)}) on vcpu{v.id}")

    def kvm_check_request(self, ctx: ThreadContext, req: int, vcpu: int) -> bool:
        pending = self.check_request_bit(self.vcpus[vcpu], req & KVM_REQUEST_MASK)
        point(f"kvm_check_request({self._name(req)}) = {str(pending).lower()}")
        return pending

    def kvm_test_request(self, ctx: ThreadContext, req: int, vcpu: int) -> bool:
        pending = bool(self.memory.read_once(self.vcpus[vcpu], "requests") >> (req & KVM_REQUEST_MASK) & 1)
        point(f"kvm_test_request({self._name(req)}) = {str(pending).lower()}")
        return pending

    def kvm_clear_request(self, ctx: ThreadContext, req: int, vcpu: int) -> None:
        self.memory.clear_bit(self.vcpus[vcpu], "requests", req & KVM_REQUEST_MASK)
        point(f"clear_bit({self._name(req)})")

    def kvm_request_pending(self, ctx: ThreadContext, vcpu: int) -> bool:
        pending = self.memory.read_once(self.vcpus[vcpu], "requests") != 0
        point(f"kvm_request_pending() = {str(pending).lower()}")
        return pending

    def read_request_state(self, ctx: ThreadContext, req: int, vcpu: int) -> Any:
        value = self.memory.read_once(self.vcpus[vcpu].request_state, req & KVM_REQUEST_MASK)
        point(f"READ request state = {value}")
        return value

    # -- the CPU side of IPIs -------------------------------------------------
    def send_ipi(self, v: VCpu) -> None:
        """The IPI reaches the target CPU: taken at once if it runs host code with
        interrupts on, else latched until the vCPU thread enables interrupts or
        forces the guest to exit."""
        self.ipis_sent.add()
        with v.cpu_lock:
            v.ipis += 1
            taken = not v.irqs_disabled and not v.in_guest
            if taken:
                self.memory.interrupt(v.id)  # taking it serializes the target CPU
                v.acks += 1
            else:
                v.ipis_pending += 1
                v.cpu_irq.notify_all()
        if taken:
            self._notify_acked()

    def _notify_acked(self) -> None:
        with self.acked:
            self.acked.notify_all()

    def local_irq_enable(self, v: VCpu) -> None:
        """Interrupts on: the vCPU's CPU takes (acknowledges) every latched IPI. Taking an
        interrupt serializes the CPU: the handler sees what the sender wrote before the IPI."""
        with v.cpu_lock:
            v.irqs_disabled = False
            taken = v.ipis_pending
            notification, v.pi_notification = v.pi_notification, False
            if taken or notification:
                self.memory.smp_mb()
            v.acks += taken
            v.ipis_pending = 0
        if notification:
            self.vmx_sync_pir_to_irr(v)
        if taken:
            self._notify_acked()

    def local_irq_disable(self, v: VCpu) -> None:
        with v.cpu_lock:
            v.irqs_disabled = True

    # -- kicks ----------------------------------------------------------------
    def kvm_vcpu_wake_up(self, v: VCpu) -> bool:
        """rcuwait_wake_up(): set the task on the rcuwait running. True only if it was not
        running (wake_up_process() of a running task returns 0, and the kick goes on).
        rcuwait_wake_up() starts with smp_mb(): the waker's writes are visible to the woken task's check."""
        self.memory.smp_mb()
        with v.wq_lock:
            if not v.sleeping or not v.interruptible:
                return False
            v.interruptible = False
            v.woken = True
            v.wakeups += 1
            v.wq.notify_all()
            return True

    def kvm_vcpu_kick(self, ctx: ThreadContext, vcpu: int) -> None:
        v = self.vcpus[vcpu]
        if self.kvm_vcpu_wake_up(v):
            v.note_kick(v.mode, -1, "wake")
            point(f"kvm_vcpu_wake_up(vcpu{vcpu}): woke it")
            return
        if ctx.vcpu == vcpu:
            # The vCPU's own thread: a plain write, and never an IPI to the current CPU.
            if self.memory.read_once(v, "mode") == IN_GUEST_MODE:
                self.memory.write_once(v, "mode", EXITING_GUEST_MODE)
            v.note_kick(self.memory.read_once(v, "mode"), -1, "none")
            point("kick from the vCPU's own thread: no IPI")
            return
        seen = self.kvm_vcpu_exiting_guest_mode(v)
        if seen == IN_GUEST_MODE:
            v.note_kick(seen, -1, "ipi")
            point(f"cmpxchg(mode, IN_GUEST_MODE, EXITING_GUEST_MODE) on vcpu{vcpu}: was IN_GUEST_MODE")
            self.send_ipi(v)
            point(f"smp_send_reschedule(): IPI to vcpu{vcpu}")
        else:
            v.note_kick(seen, -1, "none")
            point(f"vcpu{vcpu} mode is {MODE_NAMES[seen]}: nothing to do")

    def kvm_request_needs_ipi(self, v: VCpu, req: int) -> tuple[int, bool]:
        """WAIT widens the condition from IN_GUEST_MODE to "not OUTSIDE_GUEST_MODE"."""
        seen = self.kvm_vcpu_exiting_guest_mode(v)
        if req & KVM_REQUEST_WAIT:
            return seen, seen != OUTSIDE_GUEST_MODE
        return seen, seen == IN_GUEST_MODE

    def kvm_make_all_cpus_request(self, ctx: ThreadContext, req: int) -> bool:
        targets = [v for v in self.kvm_for_each_vcpu() if self.kvm_make_vcpu_request(ctx, v, req)]
        return self.kvm_kick_many_cpus(targets, bool(req & KVM_REQUEST_WAIT))

    def kvm_make_vcpu_request(self, ctx: ThreadContext, v: VCpu, req: int) -> bool:
        if not self.request_no_action(req):
            self.set_request_bit(v, req)
        if not self.request_no_wakeup(req) and self.kvm_vcpu_wake_up(v):
            v.note_kick(v.mode, req, "wake")
            point(f"kvm_vcpu_wake_up(vcpu{v.id}): woke it")
            return False
        seen, ipi = self.kvm_request_needs_ipi(v, req)
        if ipi and ctx.vcpu == v.id:
            ipi = False  # smp_call_function_many() skips the current CPU
        v.note_kick(seen, req, "ipi" if ipi else "none")
        point(f"vcpu{v.id} mode was {MODE_NAMES[seen]}: {'IPI' if ipi else 'no IPI'}")
        return ipi

    def kvm_kick_many_cpus(self, targets: list[VCpu], wait: bool) -> bool:
        """smp_call_function_many(@targets, wait), or nothing and false for an empty mask."""
        if not targets:
            return False
        expected = {}
        for v in targets:
            self.send_ipi(v)
            expected[v.id] = v.ipis
        if wait:
            self.csd_lock_wait(targets, expected)
        else:
            point(f"smp_call_function_many({_names(targets)}), no wait")
        return True

    def csd_lock_wait(self, targets: list[VCpu], expected: dict[int, int]) -> None:
        wait_on(self.acked, f"smp_call_function_many({_names(targets)}): wait for acknowledgements",
                lambda: all(v.acks >= expected[v.id] for v in targets))

    def kvm_flush_remote_tlbs(self, ctx: ThreadContext) -> None:
        self.tlb_flushes_started.add()
        self.kvm_make_all_cpus_request(ctx, KVM_REQ_TLB_FLUSH)
        self.tlb_flushes_done.add()
        point("kvm_flush_remote_tlbs() returns")

    def kvm_vm_dead(self, ctx: ThreadContext) -> None:
        self.vm_dead = True
        point("kvm->vm_dead = true")
        self.kvm_make_all_cpus_request(ctx, KVM_REQ_VM_DEAD)

    # -- posted interrupts ------------------------------------------------------
    def post_interrupt(self, ctx: ThreadContext, vcpu: int, vector: int = 32) -> None:
        """vmx_deliver_posted_interrupt(): nothing more if the PIR bit or PIR.ON was already set."""
        v = self.vcpus[vcpu]
        already = self.pi_test_and_set_pir_and_on(v, vector)
        point(f"pi_test_and_set_pir({vector}); pi_test_and_set_on()")
        if already:
            point(f"vcpu{v.id} PIR.ON was already set: no notification")
            return
        self.kvm_vcpu_trigger_posted_interrupt(v)

    def kvm_vcpu_trigger_posted_interrupt(self, v: VCpu) -> None:
        mode = self.memory.read_once(v, "mode")
        if mode == IN_GUEST_MODE:
            self.send_pi_notification(v)
            point(f"vcpu{v.id} IN_GUEST_MODE: notification IPI sent")
        else:
            woke = self.kvm_vcpu_wake_up(v)  # in case it blocks
            point(f"vcpu{v.id} mode {MODE_NAMES[mode]}: no notification; kvm_vcpu_wake_up() "
                  + ("woke it" if woke else "found no sleeping task"))

    def send_pi_notification(self, v: VCpu) -> None:
        with v.cpu_lock:
            in_guest = v.in_guest
            if not in_guest:
                v.pi_notification = True  # latched until interrupts are enabled
        if in_guest:
            self._process_posted_interrupts(v)  # the CPU processes it without an exit

    def _process_posted_interrupts(self, v: VCpu) -> None:
        """The CPU, in guest mode, takes the notification: it moves PIR to IRR atomically, from memory."""
        with v._lock:
            if v.pir_on:
                v.pir_on = False
                v.irr |= v.pir
                v.pir = frozenset()

    def _virr_add(self, v: VCpu, vectors: frozenset) -> None:
        # The CPU's other path to the vIRR (_process_posted_interrupts) runs on another OS thread.
        with v._lock:
            v.irr |= vectors

    # -- the run loop ------------------------------------------------------------
    def vcpu_run(self, ctx: ThreadContext, vcpu: int, entries: int = 1) -> int:
        v = self.vcpus[vcpu]
        if self.vm_dead:
            point("KVM_RUN: the VM is dead, -EIO")
            return -EIO
        done = 0
        while done < entries:
            if self.check_vcpu_requests(v):
                return -EIO
            if not self.vcpu_enter_guest(v):
                continue
            self.guest_exit(v)
            done += 1
        return 0

    def check_vcpu_requests(self, v: VCpu) -> bool:
        """The top of vcpu_enter_guest(): kvm_check_request() for each pending request.
        Returns True when KVM_REQ_VM_DEAD says to leave with -EIO."""
        while bits := self.memory.read_once(v, "requests"):
            nr = (bits & -bits).bit_length() - 1
            self.check_request_bit(v, nr)
            v.handled.append(nr)
            if nr == KVM_REQ_TLB_FLUSH & KVM_REQUEST_MASK:
                v.tlb_gen = self.tlb_flushes_started.read()
            point(f"kvm_check_request({self._name(nr)}) = true: handled")
            if nr == KVM_REQ_VM_DEAD & KVM_REQUEST_MASK and self.has_vm_dead:
                point("KVM_REQ_VM_DEAD: return -EIO")
                return True
        return False

    def vcpu_enter_guest(self, v: VCpu) -> bool:
        """The guest-entry sequence of "Ensuring Requests Are Seen", one step per point."""
        self.local_irq_disable(v)
        point("local_irq_disable()")
        self.memory.write_once(v, "mode", IN_GUEST_MODE)
        with v.cpu_lock:
            v.stay_ipis = 0
        point("WRITE_ONCE(vcpu->mode, IN_GUEST_MODE)")
        # The last checks: PIR (posted interrupts) and the requests.
        mb = self.smp_mb__after_srcu_read_unlock(v)
        self.vmx_sync_pir_to_irr(v)
        why = self.kvm_vcpu_exit_request(v)
        if why:
            self._outside_guest_mode(v)
            v.aborts += 1
            point(f"{mb}{why}: abort guest entry")
            self.local_irq_enable(v)
            point("local_irq_enable()")
            return False
        point(f"{mb}kvm_request_pending() = false")
        self.guest_enter(v)
        return True

    def guest_enter(self, v: VCpu) -> None:
        """VM entry enables interrupts atomically; the guest runs until an IPI forces an exit."""
        with v.cpu_lock:
            v.in_guest = True
            v.entries += 1
            v.irqs_disabled = False
            notification, v.pi_notification = v.pi_notification, False
        if notification:
            self._process_posted_interrupts(v)
        wait_on(v.cpu_irq, "VM entry, interrupts enabled atomically: guest runs",
                lambda: v.ipis_pending > 0, idle=True)

    def guest_exit(self, v: VCpu) -> None:
        with v.cpu_lock:
            v.in_guest = False
            v.exits += 1
            v.irqs_disabled = True
        point("VM exit (IPI)")
        self._outside_guest_mode(v)
        point("vcpu->mode = OUTSIDE_GUEST_MODE")
        self.local_irq_enable(v)
        point("local_irq_enable(): pending IPIs acknowledged")

    def walk_shadow_page_tables(self, ctx: ThreadContext, vcpu: int) -> None:
        v = self.vcpus[vcpu]
        self.local_irq_disable(v)
        point("local_irq_disable()")
        # walk_shadow_page_lockless_begin()/_end() of x86's MMU.
        self.memory.store_mb(v, "mode", READING_SHADOW_PAGE_TABLES)
        point("vcpu->mode = READING_SHADOW_PAGE_TABLES")
        point("walk the shadow page tables")
        self.memory.store_release(v, "mode", OUTSIDE_GUEST_MODE)
        point("vcpu->mode = OUTSIDE_GUEST_MODE")
        self.local_irq_enable(v)
        point("local_irq_enable()")

    # -- sleeping vCPUs ------------------------------------------------------------
    def kvm_vcpu_check_block(self, v: VCpu) -> str | None:
        """Why to stop blocking, in the kernel's order (KVM_REQ_UNBLOCK is consumed); a posted
        interrupt still in the PIR makes the vCPU runnable."""
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
        """set_current_state(TASK_INTERRUPTIBLE) *before* the condition, so a wake-up after
        the check is not lost: smp_store_mb()."""
        with v.wq_lock:
            v.woken = False
            v.interruptible = True
        self.memory.smp_mb()

    def schedule(self, v: VCpu) -> None:
        with v.wq_lock:
            v.in_schedule = True
        wait_on(v.wq, "schedule(): asleep", lambda: v.woken, idle=True)
        with v.wq_lock:
            v.in_schedule = False

    def kvm_vcpu_block(self, ctx: ThreadContext, vcpu: int) -> str:
        v = self.vcpus[vcpu]
        with v.wq_lock:
            v.sleeping = True
        point("prepare_to_rcuwait(): on the wait queue")
        while True:
            self.set_current_state(v)
            reason = self.kvm_vcpu_check_block(v)
            point(f"kvm_vcpu_check_block() = {reason or 'keep blocking'}")
            if reason:
                break
            self.schedule(v)
        with v.wq_lock:
            v.sleeping = False
            v.woken = False
            v.interruptible = False  # __set_current_state(TASK_RUNNING)
        v.block_result = reason
        point("finish_rcuwait()")
        if self.old_text and reason == "runnable":
            self.set_request_bit(v, KVM_REQ_UNHALT)
        return reason

    def make_runnable(self, ctx: ThreadContext, vcpu: int, kick: bool = True) -> None:
        self.vcpus[vcpu].runnable = True
        point(f"vcpu{vcpu} becomes runnable (kvm_arch_vcpu_runnable)")
        if kick:
            self.kvm_vcpu_kick(ctx, vcpu)

    def expire_timer(self, ctx: ThreadContext, vcpu: int) -> None:
        """apic_timer_expired(from_timer_fn=true): pending timer, KVM_REQ_UNBLOCK, kick."""
        v = self.vcpus[vcpu]
        v.timer_pending = True
        point(f"atomic_inc(&vcpu{vcpu}->lapic_timer.pending)")
        self.set_request_bit(v, KVM_REQ_UNBLOCK)
        self.kvm_vcpu_kick(ctx, vcpu)

    def send_signal(self, ctx: ThreadContext, vcpu: int) -> None:
        v = self.vcpus[vcpu]
        v.signal_pending = True
        self.kvm_vcpu_wake_up(v)
        point(f"signal to the vcpu{vcpu} thread (signal_wake_up)")


def _names(targets: list[VCpu]) -> str:
    return ", ".join(f"vcpu{v.id}" for v in targets)
