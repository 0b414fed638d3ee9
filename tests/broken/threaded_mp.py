"""Broken variants of the threaded backend's MP facet: real concurrent code with one real bug each.

Each class overrides one rule of :class:`ThreadedMachine`'s MP mixin the way a
concurrent implementation could get it wrong. ``VARIANTS`` names the guarantees
that must catch each in controlled mode (with the document text to check
against); ``FREE_ONLY`` variants are bugs only a real ``Condition.wait`` can
show (a missing ``notify``): free runs report them as lost wake-ups.
"""

from __future__ import annotations

from pytest_kvmconf.backends.threaded import ThreadedBackend, ThreadedMachine
from pytest_kvmconf.backends.threaded.mp import MpVcpu
from pytest_kvmconf.facets.mp import KVM_MP_STATE_HALTED, mp_states
from pytest_kvmconf.scheduling import point

from . import running

#: variant name -> (machine class, ((guarantee id, doc version), ...) that must catch it, what is broken)
VARIANTS: dict[str, tuple[type, tuple[tuple[str, str], ...], str]] = {}
#: variants only a free run can catch: name -> (machine class, guarantee id, what is broken)
FREE_ONLY: dict[str, tuple[type, str, str]] = {}


def variant(*caught_by: tuple[str, str], doc: str):
    def register(cls: type) -> type:
        VARIANTS[cls.__name__] = (cls, caught_by, doc)
        return cls
    return register


def backend(name: str) -> ThreadedBackend:
    """A threaded backend running the named broken machine."""
    cls = VARIANTS[name][0] if name in VARIANTS else FREE_ONLY[name][0]
    return running(cls, f"broken-threaded-mp:{name}")


@variant(("MP-03.a", "6.18"), ("MP-04.a", "6.18"), ("MP-03.a", "4.13"),
         doc="a HALTED vCPU's kvm_vcpu_block() waits for an interrupt only: a signal does not end it")
class HaltIgnoresSignal(ThreadedMachine):
    def signal_pending(self, v: MpVcpu) -> bool:
        return v.state != KVM_MP_STATE_HALTED and super().signal_pending(v)

    def mp_sleep_ends(self, v: MpVcpu, wakes: bool) -> bool:
        if v.state == KVM_MP_STATE_HALTED:
            return wakes and v.wakeup_pending
        return super().mp_sleep_ends(v, wakes)


@variant(("MP-02", "6.18"), ("MP-05.a", "6.18"), ("MP-05.b", "6.18"), ("MP-05.c", "4.13"),
         doc="KVM_SET_MP_STATE accepts every state the document defines, whatever the architecture")
class SetAcceptsAnyDefinedState(ThreadedMachine):
    def mp_state_valid(self, state: int) -> bool:
        return state in mp_states(self.config.doc_version)


@variant(("MP-04", "6.18"), ("MP-04", "4.13"),
         doc="KVM_RUN polls immediate_exit before the thread counts as inside it: a signal in "
             "between runs the userspace handler and the kick is lost")
class ImmediateExitPolledEarly(ThreadedMachine):
    def enter_kvm_run(self, v: MpVcpu) -> tuple[int, bool]:
        immediate = v.immediate_exit != 0
        point("KVM_RUN: read kvm_run->immediate_exit")
        with v.lock:
            v.in_run = True
            v.entries += 1
            return v.entries, immediate


class SignalWithoutNotify(ThreadedMachine):
    """The signal is made pending but the vCPU's wait queue is not woken."""

    def signal_vcpu(self, ctx, vcpu: int) -> None:
        v = self.mp_vcpus[vcpu]
        with v.lock:
            v.signals += 1
            self.signal_wake_up(v)  # no v.wq.notify_all()
        point(f"pthread_kill(vcpu{vcpu} thread)")


FREE_ONLY["SignalWithoutNotify"] = (SignalWithoutNotify, "MP-04.a",
                                    "a signal made pending without waking the vCPU's wait queue")
