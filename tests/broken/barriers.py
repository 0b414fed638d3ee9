"""Missing barriers: broken variants that only weak memory can catch.

Each class drops one barrier of a pairing the documents describe, leaving the
code in program order. Under ``sc`` nothing can go wrong (every spec passes);
under the memory models in ``caught_under`` the reordering the barrier forbade
becomes possible and the named guarantees must catch it. A variant listed
without ``tso`` is one x86 itself forbids (its atomics are locked instructions
and it never reorders stores), so tso must not catch it either.

Each pairing is broken on both backends: the steps are the same names on
both, so a step that is no generator is overridden once (a mixin) and applied
to the reference and the threaded machine (``...Threaded``).
"""

from __future__ import annotations

from typing import Any

from pytest_kvmconf.backends.reference import ReferenceMachine
from pytest_kvmconf.backends.threaded import ThreadedMachine
from pytest_kvmconf.facets.requests import EXITING_GUEST_MODE, IN_GUEST_MODE, KVM_REQUEST_MASK
from pytest_kvmconf.scheduling import Point, point

from . import running

#: name -> (machine class, guarantee ids that must catch it, models that let it happen, what is missing)
VARIANTS: dict[str, tuple[type, tuple[str, ...], tuple[str, ...], str]] = {}


def variant(*gids: str, caught_under: tuple[str, ...], doc: str):
    def register(cls: type) -> type:
        VARIANTS[cls.__name__] = (cls, gids, caught_under, doc)
        return cls
    return register


def backend(name: str):
    return running(VARIANTS[name][0], f"broken-barrier:{name}")


def on_both(*gids: str, caught_under: tuple[str, ...], doc: str):
    """Register a mixin's variant on the reference and on the threaded machine."""
    def register(mixin: type) -> type:
        for machine, suffix in ((ReferenceMachine, ""), (ThreadedMachine, "Threaded")):
            name = mixin.__name__.lstrip("_") + suffix
            variant(*gids, caught_under=caught_under, doc=doc)(type(name, (mixin, machine), {}))
        return mixin
    return register


NO_WMB_DOC = "kvm_make_request() sets the bit without the smp_wmb() after writing the request's state"


@variant("REQ-14", caught_under=("lkmm",), doc=NO_WMB_DOC)
class NoWmbInMakeRequest(ReferenceMachine):
    def set_request_bit(self, v: Any, req: int):
        self.memory.set_bit(v, "requests", req & KVM_REQUEST_MASK)
        yield Point(f"set_bit({self._name(req)}) on vcpu{v.id} (no smp_wmb)")


@variant("REQ-14", caught_under=("lkmm",), doc=NO_WMB_DOC)
class NoWmbInMakeRequestThreaded(ThreadedMachine):
    def set_request_bit(self, v: Any, req: int) -> None:
        self.memory.set_bit(v, "requests", req & KVM_REQUEST_MASK)
        point(f"set_bit({self._name(req)}) on vcpu{v.id} (no smp_wmb)")


@on_both("REQ-14", caught_under=("lkmm",),
         doc="kvm_check_request() clears the bit without the smp_mb__after_atomic() before the caller "
             "reads the request's state")
class _NoMbAfterAtomicInCheckRequest:
    def check_request_bit(self, v: Any, nr: int) -> bool:
        if not self.memory.read_once(v, "requests") >> nr & 1:
            return False
        self.memory.clear_bit(v, "requests", nr)
        return True


@on_both("REQ-15", "REQ-16", "REQ-24", caught_under=("tso", "lkmm"),
         doc="no smp_mb() between setting IN_GUEST_MODE and the last kvm_request_pending()/PIR checks")
class _NoMbAfterInGuestMode:
    def smp_mb__after_srcu_read_unlock(self, v: Any) -> str:
        return "(no smp_mb) "


# Not REQ-15/16: kvm_vcpu_kick() first tries kvm_vcpu_wake_up(), whose rcuwait_wake_up() starts with
# smp_mb(), so a kick orders the request bit before the mode read anyway. A NO_WAKEUP request made by
# kvm_make_all_cpus_request() skips the wake-up, and REQ-06 makes those.
@on_both("REQ-06", caught_under=("lkmm",),
         doc="kvm_vcpu_exiting_guest_mode() as cmpxchg_relaxed() without smp_mb__before_atomic(): the "
             "read of vcpu->mode may pass the request bit")
class _RelaxedExitingGuestMode:
    def kvm_vcpu_exiting_guest_mode(self, v: Any) -> int:
        return self.memory.cmpxchg(v, "mode", IN_GUEST_MODE, EXITING_GUEST_MODE, relaxed=True)


@on_both("REQ-24", caught_under=("tso", "lkmm"),
         doc="the posted-interrupt sender sets PIR.ON with a plain store, no barrier before reading vcpu->mode")
class _PiOnPlainStore:
    def pi_test_and_set_pir_and_on(self, v: Any, vector: int) -> bool:
        old_pir = self.memory.rmw(v, "pir", lambda pir: pir | {vector}, f"pi_test_and_set_pir({vector})")
        if vector in old_pir:
            return True
        was_on = self.memory.read_once(v, "pir_on")
        self.memory.write_once(v, "pir_on", True)
        return bool(was_on)
