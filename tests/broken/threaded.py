"""Broken variants of the threaded backend: real concurrent code with one real bug each.

Each class overrides one method of :class:`ThreadedMachine` the way a
concurrent implementation could get it wrong, and names the guarantees that
must catch it in controlled mode. ``FREE_ONLY`` variants are bugs the engine
cannot see in controlled mode by construction (a missing ``notify`` only
matters to a real ``Condition.wait``); free runs catch them as hangs.
"""

from __future__ import annotations

from pytest_kvmconf.backends.threaded import ThreadedBackend, ThreadedMachine
from pytest_kvmconf.backends.threaded.requests import VCpu
from pytest_kvmconf.facets.requests import EXITING_GUEST_MODE, IN_GUEST_MODE, KVM_REQUEST_MASK, MODE_NAMES
from pytest_kvmconf.scheduling import point

from . import running

#: variant name -> (machine class, guarantee ids that must catch it, what is broken)
VARIANTS: dict[str, tuple[type, tuple[str, ...], str]] = {}
#: variants only a free run can catch: name -> (machine class, what is broken)
FREE_ONLY: dict[str, tuple[type, str]] = {}


def variant(*gids: str, doc: str):
    def register(cls: type) -> type:
        VARIANTS[cls.__name__] = (cls, gids, doc)
        return cls
    return register


def backend(name: str) -> ThreadedBackend:
    """A threaded backend running the named broken machine."""
    cls = VARIANTS[name][0] if name in VARIANTS else FREE_ONLY[name][0]
    return running(cls, f"broken-threaded:{name}")


@variant("REQ-15", "REQ-16", doc="no final kvm_request_pending() check: entry only aborts on EXITING_GUEST_MODE")
class NoFinalPendingCheck(ThreadedMachine):
    def kvm_vcpu_exit_request(self, v: VCpu) -> str | None:
        return "EXITING_GUEST_MODE" if self.memory.read_once(v, "mode") == EXITING_GUEST_MODE else None


@variant("REQ-17", doc="a kick reads IN_GUEST_MODE and sends the IPI, but leaves the mode (no cmpxchg to EXITING)")
class KickKeepsMode(ThreadedMachine):
    def kvm_vcpu_exiting_guest_mode(self, v: VCpu) -> int:
        return self.memory.read_once(v, "mode")


@variant("REQ-25", doc="lost wake-up: set_current_state(TASK_INTERRUPTIBLE) after kvm_vcpu_check_block()")
class LostWakeup(ThreadedMachine):
    def set_current_state(self, v: VCpu) -> None:
        pass  # not before the check ...

    def schedule(self, v: VCpu) -> None:
        with v.wq_lock:
            v.woken = False  # ... but after it: a wake-up since the check is forgotten
            v.interruptible = True
        super().schedule(v)


@variant("REQ-11", "REQ-19", "REQ-22", doc="KVM_REQUEST_WAIT returns before the IPIs are acknowledged")
class WaitSkipsAcks(ThreadedMachine):
    def csd_lock_wait(self, targets, expected) -> None:
        point("smp_call_function_many(): (not) waiting")


@variant("REQ-10", doc="KVM_REQUEST_NO_WAKEUP is ignored: sleeping vCPUs are woken")
class NoWakeupWakes(ThreadedMachine):
    def request_no_wakeup(self, req: int) -> bool:
        return False


@variant("REQ-04", doc="set_bit as a plain read-modify-write of the bitmap, without the atomic")
class NonAtomicSetBit(ThreadedMachine):
    def set_request_bit(self, v: VCpu, req: int) -> None:
        seen = self.memory.read_once(v, "requests")
        point(f"READ vcpu->requests = {seen:#x}")
        self.memory.write_once(v, "requests", seen | 1 << (req & KVM_REQUEST_MASK))
        point("WRITE vcpu->requests")


@variant("REQ-07", "REQ-15", doc="the kick's IPI is latched on the target CPU but never raised there (no notify)")
class IpiNeverDelivered(ThreadedMachine):
    """In controlled mode the guest only leaves when an IPI is pending: here the
    IPI is counted as sent but nothing reaches the CPU."""

    def kvm_vcpu_kick(self, ctx, vcpu: int) -> None:
        v = self.vcpus[vcpu]
        if self.kvm_vcpu_wake_up(v):
            v.note_kick(v.mode, -1, "wake")
            point(f"kvm_vcpu_wake_up(vcpu{vcpu}): woke it")
            return
        seen = self.kvm_vcpu_exiting_guest_mode(v)
        v.note_kick(seen, -1, "ipi" if seen == IN_GUEST_MODE else "none")
        point(f"vcpu{vcpu} mode was {MODE_NAMES[seen]}: IPI 'sent'")


class WakeWithoutNotify(ThreadedMachine):
    """Sets the sleeper running but never notifies its wait queue: under the
    engine the sleeper resumes anyway (its predicate holds), in a free run it
    sleeps forever in Condition.wait."""

    def kvm_vcpu_wake_up(self, v: VCpu) -> bool:
        with v.wq_lock:
            if not v.sleeping:
                return False
            if not v.woken:
                v.woken = True
                v.wakeups += 1
            return True


FREE_ONLY["WakeWithoutNotify"] = (
    WakeWithoutNotify, "kvm_vcpu_wake_up sets TASK_RUNNING without notifying the wait queue")


def no_final_pending_check() -> ThreadedBackend:
    """``--kvm-backend=tests.broken.threaded:no_final_pending_check`` (from the repository root)."""
    return backend("NoFinalPendingCheck")


# Reference variants whose one override is a step that returns at once: the same code breaks the
# threaded backend the same way (the steps are one vocabulary), so they are run here unchanged.
def _ported(name: str) -> type:
    from . import requests as reference_variants

    original, gids, doc = reference_variants.VARIANTS[name]
    methods = {k: v for k, v in vars(original).items() if callable(v) and not k.startswith("__")}
    cls = type(f"{name}Ported", (ThreadedMachine,), {**methods, "__module__": __name__,
                                                     "__doc__": f"{doc} (the reference variant's code)"})
    VARIANTS[cls.__name__] = (cls, gids, doc)
    return cls


PORTED = [_ported(name) for name in ("MakeAllSkipsLast", "KickDoesNotWake", "WaitConditionIgnored",
                                     "UnblockIgnored", "PlainRequestIpisShadowWalk")]
#: variants free runs catch too rarely for a test (caught runs of 100, measured on a 2-core
#: machine): the controlled test catches them, free mode only on a lucky preemption.
FREE_RARE = {
    # the IPI decision must read vcpu->mode in the instant it is EXITING_GUEST_MODE: 1 of 100
    "WaitConditionIgnoredPorted": "1 of 100 free runs",
}
