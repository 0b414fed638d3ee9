"""vcpu-requests.rst: the request API, vCPU mode, kicks, IPIs, the run loop and sleeping vCPUs.

Request numbers carry their flags as in include/linux/kvm_host.h: bits 0-7 are
the number (KVM_REQUEST_MASK), bit 8 KVM_REQUEST_NO_WAKEUP, bit 9
KVM_REQUEST_WAIT, bit 10 KVM_REQUEST_NO_ACTION.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from . import Arg, Facet, register

KVM_REQUEST_MASK = 0xFF
KVM_REQUEST_NO_WAKEUP = 1 << 8
KVM_REQUEST_WAIT = 1 << 9
KVM_REQUEST_NO_ACTION = 1 << 10
KVM_REQUEST_ARCH_BASE = 8

OUTSIDE_GUEST_MODE = 0
IN_GUEST_MODE = 1
EXITING_GUEST_MODE = 2
READING_SHADOW_PAGE_TABLES = 3

#: KVM_RUN's error once the VM is dead (-EIO), and a signal's (-EINTR).
EIO = 5
EINTR = 4

MODE_NAMES = {
    OUTSIDE_GUEST_MODE: "OUTSIDE_GUEST_MODE",
    IN_GUEST_MODE: "IN_GUEST_MODE",
    EXITING_GUEST_MODE: "EXITING_GUEST_MODE",
    READING_SHADOW_PAGE_TABLES: "READING_SHADOW_PAGE_TABLES",
}


def KVM_ARCH_REQ_FLAGS(nr: int, flags: int) -> int:  # noqa: N802 - kernel name
    return (nr + KVM_REQUEST_ARCH_BASE) | flags


# Architecture-independent requests of include/linux/kvm_host.h; which exist (and which the
# document lists) depends on the text, see the predicates below.
KVM_REQ_TLB_FLUSH = 0 | KVM_REQUEST_WAIT | KVM_REQUEST_NO_WAKEUP
KVM_REQ_VM_DEAD = 1 | KVM_REQUEST_WAIT | KVM_REQUEST_NO_WAKEUP
KVM_REQ_UNBLOCK = 2
KVM_REQ_OUTSIDE_GUEST_MODE = KVM_REQUEST_NO_ACTION | KVM_REQUEST_WAIT | KVM_REQUEST_NO_WAKEUP
# Requests of the older texts, with the bits VM_DEAD and UNBLOCK took over.
KVM_REQ_MMU_RELOAD = 1 | KVM_REQUEST_WAIT | KVM_REQUEST_NO_WAKEUP
KVM_REQ_PENDING_TIMER = 2
KVM_REQ_UNHALT = 3

# A few x86 architecture requests (arch/x86/include/asm/kvm_host.h).
ARCH_REQUESTS = {
    "KVM_REQ_MIGRATE_TIMER": KVM_ARCH_REQ_FLAGS(0, 0),
    "KVM_REQ_REPORT_TPR_ACCESS": KVM_ARCH_REQ_FLAGS(1, 0),
    "KVM_REQ_TRIPLE_FAULT": KVM_ARCH_REQ_FLAGS(2, 0),
    "KVM_REQ_MMU_SYNC": KVM_ARCH_REQ_FLAGS(3, 0),
    "KVM_REQ_CLOCK_UPDATE": KVM_ARCH_REQ_FLAGS(4, 0),
    "KVM_REQ_EVENT": KVM_ARCH_REQ_FLAGS(6, 0),
    "KVM_REQ_NMI": KVM_ARCH_REQ_FLAGS(9, 0),
    "KVM_REQ_PMU": KVM_ARCH_REQ_FLAGS(10, 0),
}


def _before(doc_version: str, release: str) -> bool:
    from ..spec.versions import parse_version

    return parse_version(doc_version) < parse_version(release)


@cache
def is_old_text(doc_version: str) -> bool:
    """The text has KVM_REQ_UNHALT (removed by "KVM: remove KVM_REQ_UNHALT", merged for 6.1)."""
    return _before(doc_version, "6.1")


@cache
def has_unblock(doc_version: str) -> bool:
    """KVM_REQ_UNBLOCK replaced KVM_REQ_PENDING_TIMER in 084071d5e922 (5.13)."""
    return not _before(doc_version, "5.13")


@cache
def has_vm_dead(doc_version: str) -> bool:
    """The text lists KVM_REQ_VM_DEAD (and no longer KVM_REQ_MMU_RELOAD) since e65a3b46b5b1 (5.18)."""
    return not _before(doc_version, "5.18")


@cache
def _independent_names(doc_version: str) -> dict[str, int]:
    names = {"KVM_REQ_TLB_FLUSH": KVM_REQ_TLB_FLUSH}
    names.update({"KVM_REQ_VM_DEAD": KVM_REQ_VM_DEAD} if has_vm_dead(doc_version)
                 else {"KVM_REQ_MMU_RELOAD": KVM_REQ_MMU_RELOAD})
    names.update({"KVM_REQ_UNBLOCK": KVM_REQ_UNBLOCK} if has_unblock(doc_version)
                 else {"KVM_REQ_PENDING_TIMER": KVM_REQ_PENDING_TIMER})
    if is_old_text(doc_version):
        names["KVM_REQ_UNHALT"] = KVM_REQ_UNHALT
    if has_vm_dead(doc_version):
        names["KVM_REQ_OUTSIDE_GUEST_MODE"] = KVM_REQ_OUTSIDE_GUEST_MODE
    return names


def arch_independent_requests(doc_version: str) -> tuple[int, ...]:
    """The requests the text's "Architecture Independent Requests" lists that log a request bit."""
    return tuple(v for v in _independent_names(doc_version).values() if not v & KVM_REQUEST_NO_ACTION)


def request_name(req: int, doc_version: str = "6.18") -> str:
    """The kernel name of a request number (with its flags), for timelines."""
    names = dict(_independent_names(doc_version))
    names.update(ARCH_REQUESTS)
    for name, value in names.items():
        if value == req:
            return name
    if req <= KVM_REQUEST_MASK:  # a bare bit number, as in the vcpu->requests bitmap
        for name, value in names.items():
            if value & KVM_REQUEST_MASK == req and not value & KVM_REQUEST_NO_ACTION:
                return name
    flags = [f for f, b in (("NO_WAKEUP", KVM_REQUEST_NO_WAKEUP), ("WAIT", KVM_REQUEST_WAIT),
                            ("NO_ACTION", KVM_REQUEST_NO_ACTION)) if req & b]
    return f"req {req & KVM_REQUEST_MASK}" + (f"|{'|'.join(flags)}" if flags else "")


def vcpu_view(v: Any, requests: int, mode: int) -> dict[str, Any]:
    """One vCPU's observables (``vcpus[i]`` in conditions), the same for every backend.

    ``v`` carries the per-vCPU counters and flags under the names below; ``requests`` (the
    bitmap) and ``mode`` are passed in because backends keep them in different primitives."""
    return {
        "id": v.id,
        "requests": frozenset(i for i in range(requests.bit_length()) if requests >> i & 1),
        "request_state": dict(v.request_state),
        "mode": mode,
        "irqs_disabled": v.irqs_disabled,
        "in_guest": v.in_guest,
        "entries": v.entries,
        "exits": v.exits,
        "aborts": v.aborts,
        "handled": tuple(v.handled),
        "ipis": v.ipis,
        "ipi_pending": v.ipis_pending > 0,
        "acks": v.acks,
        "stay_ipis": v.stay_ipis,
        "kicks": tuple(v.kicks),
        "sleeping": v.sleeping,
        "asleep": v.in_schedule and not v.woken,
        "wakeups": v.wakeups,
        "runnable": v.runnable,
        "signal_pending": v.signal_pending,
        "block_result": v.block_result,
        "tlb_gen": v.tlb_gen,
        "pir": frozenset(v.pir),
        "pir_on": v.pir_on,
        "irr": frozenset(v.irr),
    }


requests = register(Facet(
    "requests",
    "the vCPU request API (kvm_make_request, kvm_check_request, ...) and per-vCPU request bitmap",
))
requests.constants.update({
    "KVM_REQUEST_MASK": KVM_REQUEST_MASK,
    "KVM_REQUEST_NO_WAKEUP": KVM_REQUEST_NO_WAKEUP,
    "KVM_REQUEST_WAIT": KVM_REQUEST_WAIT,
    "KVM_REQUEST_NO_ACTION": KVM_REQUEST_NO_ACTION,
    "KVM_REQUEST_ARCH_BASE": KVM_REQUEST_ARCH_BASE,
    "KVM_REQ_TLB_FLUSH": KVM_REQ_TLB_FLUSH,
    "KVM_REQ_VM_DEAD": KVM_REQ_VM_DEAD,
    "KVM_REQ_UNBLOCK": KVM_REQ_UNBLOCK,
    "KVM_REQ_OUTSIDE_GUEST_MODE": KVM_REQ_OUTSIDE_GUEST_MODE,
    "KVM_REQ_MMU_RELOAD": KVM_REQ_MMU_RELOAD,
    "KVM_REQ_PENDING_TIMER": KVM_REQ_PENDING_TIMER,
    "KVM_REQ_UNHALT": KVM_REQ_UNHALT,
    "OUTSIDE_GUEST_MODE": OUTSIDE_GUEST_MODE,
    "IN_GUEST_MODE": IN_GUEST_MODE,
    "EXITING_GUEST_MODE": EXITING_GUEST_MODE,
    "READING_SHADOW_PAGE_TABLES": READING_SHADOW_PAGE_TABLES,
    "EIO": EIO,
    "EINTR": EINTR,
    **ARCH_REQUESTS,
})
requests.named_sets.update({
    "arch_independent_requests": arch_independent_requests,
    "arch_requests": lambda v: tuple(ARCH_REQUESTS.values()),
    "all_requests": lambda v: arch_independent_requests(v) + tuple(ARCH_REQUESTS.values()),
    "request_flags": lambda v: (0, KVM_REQUEST_NO_WAKEUP, KVM_REQUEST_WAIT,
                                KVM_REQUEST_WAIT | KVM_REQUEST_NO_WAKEUP),
    "request_numbers": lambda v: tuple(range(0, 32)),
    "wait_requests": lambda v: tuple(r for r in arch_independent_requests(v) if r & KVM_REQUEST_WAIT),
    "no_wakeup_requests": lambda v: tuple(r for r in arch_independent_requests(v)
                                          if r & KVM_REQUEST_NO_WAKEUP),
    "vcpu_modes": lambda v: tuple(MODE_NAMES),
})
V = Arg("vcpu", "vcpu", doc="index of the target vCPU")
R = Arg("req", "req", doc="request number with its flags (e.g. KVM_REQ_TLB_FLUSH)")
requests.op("kvm_make_request", [R, V, Arg("state", "int", optional=True,
            doc="state associated with the request, written before the request bit (REQ-14)")],
            "none", "Make request @req of @vcpu (smp_wmb, then set the bit).")
requests.op("kvm_check_request", [R, V], "bool",
            "If @req is pending: clear it, issue the barrier, return true; else false.",
            vcpu_thread=True)
requests.op("kvm_test_request", [R, V], "bool", "Is @req pending? Changes nothing.")
requests.op("kvm_clear_request", [R, V], "none", "Clear @req only.")
requests.op("kvm_request_pending", [V], "bool", "Is any request pending?")
requests.op("read_request_state", [R, V], "int",
            "Read the state associated with @req (after kvm_check_request returned true).",
            vcpu_thread=True)
requests.step("set_request_bit", ("v", "req"), "none",
              "__kvm_make_request(): smp_wmb(); set_bit()",
              "Set @req's bit in @v's vcpu->requests, after the write barrier that orders the "
              "request's state before it.", points=True)
requests.step("check_request_bit", ("v", "nr"), "bool",
              "kvm_check_request(): kvm_test_request(); kvm_clear_request(); smp_mb__after_atomic()",
              "If bit @nr of vcpu->requests is set: clear it, then the barrier that pairs with "
              "set_request_bit's; return whether it was set.")
requests.observables.update({
    "vcpus[i].requests": "set of pending request numbers (low 8 bits), e.g. `bit(req) in vcpus[0].requests`",
    "vcpus[i].request_state": "dict request number -> associated state last written by a requester",
})

kick = register(Facet(
    "kick",
    "vCPU mode, kvm_vcpu_kick, IPIs and kvm_make_all_cpus_request / kvm_flush_remote_tlbs",
))
kick.op("kvm_vcpu_kick", [V], "none",
        "Kick @vcpu: IPI if IN_GUEST_MODE (moving it to EXITING_GUEST_MODE), wake it if sleeping, else nothing.")
kick.op("kvm_make_all_cpus_request", [Arg("req", "req")], "bool",
        "Make @req of every vCPU and kick each (WAIT: wait for the IPIs' acknowledgements). "
        "Returns whether any IPI was sent.")
kick.op("kvm_flush_remote_tlbs", [], "none", "kvm_make_all_cpus_request(KVM_REQ_TLB_FLUSH).")
kick.op("kvm_vm_dead", [], "none", "kvm_vm_dead(): mark the VM dead, then kvm_make_all_cpus_request(KVM_REQ_VM_DEAD).")
kick.op("post_interrupt", [V, Arg("vector", "int", optional=True, default=32)], "none",
        "x86 posted interrupt: set PIR bit and PIR.ON (nothing more if either was set), then read "
        "vcpu->mode and send the notification IPI if IN_GUEST_MODE, else wake the vCPU if it blocks.")
kick.step("kvm_vcpu_wake_up", ("v",), "bool", "kvm_vcpu_wake_up() (rcuwait_wake_up())",
          "Wake @v's task if it sleeps in kvm_vcpu_block (the smp_mb() of rcuwait_wake_up() first); "
          "true only if it was not running.")
kick.step("kvm_vcpu_exiting_guest_mode", ("v",), "int", "kvm_vcpu_exiting_guest_mode()",
          "smp_mb__before_atomic(); cmpxchg(vcpu->mode, IN_GUEST_MODE, EXITING_GUEST_MODE); "
          "returns the mode seen.")
kick.step("send_ipi", ("v",), "none", "smp_send_reschedule() / smp_call_function_many()'s IPI",
          "An IPI reaches @v's CPU: taken at once in host code with interrupts on, else latched "
          "until local_irq_enable or a forced exit.")
kick.step("kvm_request_needs_ipi", ("v", "req"), "(int, bool)", "kvm_request_needs_ipi()",
          "kvm_vcpu_exiting_guest_mode(), then whether @req needs an IPI: IN_GUEST_MODE, widened "
          "to 'not OUTSIDE_GUEST_MODE' by KVM_REQUEST_WAIT. Returns (mode seen, IPI needed).")
kick.step("request_no_action", ("req",), "bool", "req & KVM_REQUEST_NO_ACTION in kvm_make_vcpu_request()",
          "@req sets no request bit, it only kicks (KVM_REQ_OUTSIDE_GUEST_MODE).")
kick.step("request_no_wakeup", ("req",), "bool", "req & KVM_REQUEST_NO_WAKEUP in kvm_make_vcpu_request()",
          "@req leaves sleeping vCPUs asleep.")
kick.step("kvm_for_each_vcpu", (), "list of vCPUs",
          "kvm_for_each_vcpu() in kvm_make_all_cpus_request_except()",
          "The vCPUs kvm_make_all_cpus_request() makes the request of, in order.")
kick.step("kvm_make_vcpu_request", ("ctx", "v", "req"), "bool", "kvm_make_vcpu_request()",
          "Make @req of one vCPU (unless NO_ACTION), wake it (unless NO_WAKEUP), else decide its IPI "
          "(never to the current CPU). Returns whether @v joins the IPI mask.", points=True)
kick.step("kvm_kick_many_cpus", ("targets", "wait"), "bool", "kvm_kick_many_cpus()",
          "Nothing if @targets is empty (false); else smp_call_function_many(): send_ipi to each, "
          "and with @wait csd_lock_wait for their acknowledgements (true).", points=True)
kick.step("csd_lock_wait", ("targets", "expected"), "none", "csd_lock_wait() in smp_call_function_many()",
          "Wait until each vCPU of @targets has acknowledged @expected[id] IPIs.", points=True)
kick.step("pi_test_and_set_pir_and_on", ("v", "vector"), "bool",
          "pi_test_and_set_pir(); pi_test_and_set_on() in __vmx_deliver_posted_interrupt()",
          "Set the PIR bit of @vector, then PIR.ON (fully ordered atomics, before vcpu->mode is read); "
          "true if either was set already (a notification is on its way).")
kick.step("kvm_vcpu_trigger_posted_interrupt", ("v",), "none", "kvm_vcpu_trigger_posted_interrupt()",
          "Read vcpu->mode: the notification IPI if IN_GUEST_MODE, else kvm_vcpu_wake_up in case it "
          "blocks.", points=True)
kick.step("send_pi_notification", ("v",), "none", "apic->send_IPI_mask(..., POSTED_INTR_VECTOR)",
          "The notification IPI reaches @v's CPU: processed in guest mode without an exit, else "
          "latched until interrupts are enabled.")
kick.extra_capabilities.update({
    "model_counters": "the backend reports counters only a model keeps about its own decisions "
                      "(vcpus[i].kicks, vcpus[i].acks, vcpus[i].stay_ipis); a spec reading them "
                      "declares this need, so a black-box backend skips it with the reason",
})
kick.observables.update({
    "vcpus[i].mode": "vcpu->mode: OUTSIDE_GUEST_MODE, IN_GUEST_MODE, EXITING_GUEST_MODE or READING_SHADOW_PAGE_TABLES",
    "vcpus[i].ipis": "IPIs sent to this vCPU so far",
    "vcpus[i].ipi_pending": "an IPI was sent and not yet taken by the vCPU",
    "vcpus[i].acks": "IPIs this vCPU has acknowledged",
    "vcpus[i].pir": "set of posted-interrupt vectors still in the PIR",
    "vcpus[i].pir_on": "the posted-interrupt descriptor's ON bit",
    "vcpus[i].irr": "set of vectors the guest will see (moved from PIR at entry or on notification)",
    "vcpus[i].stay_ipis": "IPIs decided for this vCPU (kicks and requests that chose to send one) since it "
                          "last set IN_GUEST_MODE (IPI reduction)",
    "vcpus[i].kicks": "tuple of (mode seen, request or -1 for a plain kick, action 'ipi'/'wake'/'none'), "
                      "one per kick decision",
    "vcpus[i].tlb_gen": "number of kvm_flush_remote_tlbs calls started when this vCPU last handled KVM_REQ_TLB_FLUSH",
    "ipis_sent": "IPIs sent to all vCPUs so far",
    "tlb_flushes_started": "kvm_flush_remote_tlbs calls started",
    "tlb_flushes_done": "kvm_flush_remote_tlbs calls returned",
})

run_loop = register(Facet(
    "run_loop",
    "the vCPU run loop: request handling, the guest-entry sequence of 'Ensuring Requests Are Seen', guest mode",
))
run_loop.op("vcpu_run", [V, Arg("entries", "int", optional=True, default=1,
            doc="how many guest-mode stays before returning to userspace")], "int",
            "KVM_RUN: handle requests, enter the guest (local_irq_disable, IN_GUEST_MODE, smp_mb, "
            "last kvm_request_pending check), run until an IPI forces an exit; repeat. "
            "Returns 0, or -EIO once the VM is dead.", vcpu_thread=True)
run_loop.op("walk_shadow_page_tables", [V], "none",
            "Disable interrupts, set READING_SHADOW_PAGE_TABLES, walk, set OUTSIDE_GUEST_MODE, enable.",
            vcpu_thread=True)
run_loop.step("check_vcpu_requests", ("v",), "bool",
              "the top of x86 vcpu_enter_guest() (arm64 check_vcpu_requests())",
              "kvm_check_request() of each pending request, in bit order; true when KVM_REQ_VM_DEAD "
              "says to return -EIO.", points=True)
run_loop.step("vcpu_enter_guest", ("v",), "bool", "vcpu_enter_guest(), from local_irq_disable() to VM entry",
              "The guest-entry sequence of 'Ensuring Requests Are Seen': local_irq_disable, "
              "IN_GUEST_MODE, the barrier, vmx_sync_pir_to_irr, the last check (abort: false), "
              "then guest_enter (true).", points=True)
run_loop.step("local_irq_disable", ("v",), "none", "local_irq_disable()", "Interrupts off on @v's CPU.")
run_loop.step("local_irq_enable", ("v",), "none", "local_irq_enable()",
              "Interrupts on: @v's CPU takes (acknowledges) every latched IPI and notification.")
run_loop.step("smp_mb__after_srcu_read_unlock", ("v",), "str",
              "smp_mb__after_srcu_read_unlock() in x86 vcpu_enter_guest()",
              "The full barrier between setting IN_GUEST_MODE and the last checks (the Dekker "
              "pattern's); returns its label for the timeline.")
run_loop.step("kvm_vcpu_exit_request", ("v",), "str | None", "kvm_vcpu_exit_request() (x86)",
              "The last check before VM entry: why to abort it (vcpu->mode is EXITING_GUEST_MODE, "
              "or kvm_request_pending()), or None to enter.")
run_loop.step("vmx_sync_pir_to_irr", ("v",), "none", "vmx_sync_pir_to_irr()",
              "If PIR.ON: clear it, smp_mb__after_atomic(), move PIR to IRR.")
run_loop.step("guest_enter", ("v",), "none", "guest_enter_irqoff(); kvm_x86_ops.vcpu_run()",
              "VM entry, interrupts enabled atomically; the guest runs until an IPI forces an exit.",
              points=True)
run_loop.step("guest_exit", ("v",), "none", "guest_exit_irqoff(); vcpu->mode = OUTSIDE_GUEST_MODE; "
              "local_irq_enable()", "VM exit, OUTSIDE_GUEST_MODE, then interrupts on.", points=True)
run_loop.observables.update({
    "vcpus[i].in_guest": "the vCPU is running guest code",
    "vcpus[i].irqs_disabled": "the vCPU thread has interrupts disabled",
    "vcpus[i].entries": "guest entries so far",
    "vcpus[i].exits": "guest exits so far",
    "vcpus[i].aborts": "guest entries aborted at the last check (EXITING_GUEST_MODE or a pending request)",
    "vcpus[i].handled": "tuple of request numbers the run loop has handled, in order",
    "vm_dead": "KVM_REQ_VM_DEAD has been made",
})
run_loop.extra_capabilities.update({
    "entry_sequence": "the backend runs the documented guest-entry sequence step by step, "
                      "with a scheduling point between each step (REQ-23 applies to it)",
})

block = register(Facet(
    "block",
    "kvm_vcpu_block, wake-ups, kvm_arch_vcpu_runnable and signals",
))
block.op("kvm_vcpu_block", [V], "str",
         "Sleep on the vCPU's wait queue until kvm_vcpu_check_block says to stop; returns why: "
         "'runnable', 'signal', 'unblock' (KVM_REQ_UNBLOCK) or 'timer'.", vcpu_thread=True)
block.op("make_runnable", [V, Arg("kick", "bool", optional=True, default=True)], "none",
         "An event makes kvm_arch_vcpu_runnable(@vcpu) true (e.g. an interrupt), then kicks it.")
block.op("send_signal", [V], "none", "A signal becomes pending for the vCPU thread, which is woken.")
block.op("expire_timer", [V], "none",
         "x86: the vCPU's LAPIC timer expires (apic_timer_expired() from the timer function): "
         "kvm_cpu_has_pending_timer() becomes true, KVM_REQ_UNBLOCK is made and the vCPU is kicked.")
block.step("set_current_state", ("v",), "none",
           "set_current_state(TASK_INTERRUPTIBLE) in kvm_vcpu_block()'s loop (smp_store_mb())",
           "The task is interruptible again, before kvm_vcpu_check_block: a wake-up after the "
           "check is not lost.")
block.step("kvm_vcpu_check_block", ("v",), "str | None", "kvm_vcpu_check_block()",
           "Why to stop blocking, in the kernel's order ('runnable' with a posted interrupt in "
           "PIR too, 'timer', 'signal', 'unblock' consuming KVM_REQ_UNBLOCK), or None.")
block.step("schedule", ("v",), "none", "schedule() in kvm_vcpu_block()",
           "Sleep until a waker sets the task running.", points=True)
block.observables.update({
    "vcpus[i].sleeping": "the vCPU thread waits on its wait queue",
    "vcpus[i].runnable": "kvm_arch_vcpu_runnable()",
    "vcpus[i].wakeups": "times the vCPU thread was woken from its wait queue",
    "vcpus[i].block_result": "why the last kvm_vcpu_block returned",
    "vcpus[i].asleep": "the vCPU thread is in schedule() and nobody woke it yet",
    "vcpus[i].signal_pending": "a signal is pending for the vCPU thread",
})
