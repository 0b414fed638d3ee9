"""The request steps both request models take the same way.

They touch vcpu->requests, vcpu->mode and the posted-interrupt descriptor only through
``self.memory`` (engine/memory.py), with the kernel's names, and read nothing else of the
machine but ``self.config`` and ``self.vcpus``: so the reference model (generator steps) and the
threaded backend (OS threads) share one definition, and a variant overriding one of them breaks
both backends the same way. The facet (facets/requests.py) declares them with the others.
"""

from __future__ import annotations

from typing import Any

from ..facets.requests import (
    EXITING_GUEST_MODE,
    IN_GUEST_MODE,
    KVM_REQUEST_NO_ACTION,
    KVM_REQUEST_NO_WAKEUP,
    OUTSIDE_GUEST_MODE,
    request_name,
)


class RequestMemorySteps:
    """Mixed into RequestsModel and RequestsThreads."""

    config: Any
    memory: Any
    vcpus: list[Any]

    def _name(self, req: int) -> str:
        return request_name(req, self.config.doc_version)

    def check_request_bit(self, v: Any, nr: int) -> bool:
        """kvm_check_request(): test_bit(), then clear_bit() and the barrier that pairs with
        kvm_make_request()'s smp_wmb(), so the caller sees the request's state."""
        if not self.memory.read_once(v, "requests") >> nr & 1:
            return False
        self.memory.clear_bit(v, "requests", nr)
        self.memory.smp_mb__after_atomic()
        return True

    def kvm_vcpu_exiting_guest_mode(self, v: Any) -> int:
        """smp_mb__before_atomic(); cmpxchg(mode, IN_GUEST_MODE, EXITING_GUEST_MODE). The barrier
        orders the request bit before the read of the mode: it pairs with the smp_mb() after
        setting IN_GUEST_MODE."""
        self.memory.smp_mb__before_atomic()
        return self.memory.cmpxchg(v, "mode", IN_GUEST_MODE, EXITING_GUEST_MODE)

    def request_no_action(self, req: int) -> bool:
        return bool(req & KVM_REQUEST_NO_ACTION)

    def request_no_wakeup(self, req: int) -> bool:
        return bool(req & KVM_REQUEST_NO_WAKEUP)

    def kvm_for_each_vcpu(self) -> list[Any]:
        return self.vcpus

    def pi_test_and_set_pir_and_on(self, v: Any, vector: int) -> bool:
        """Value-returning atomics: fully ordered, so PIR.ON is set before vcpu->mode is read (the
        barrier pairs with the smp_mb() after setting IN_GUEST_MODE). True if the PIR bit, or else
        PIR.ON, was set already (pi_test_and_set_pir() / pi_test_and_set_on())."""
        old_pir = self.memory.rmw(v, "pir", lambda pir: pir | {vector}, f"pi_test_and_set_pir({vector})")
        if vector in old_pir:
            return True
        return bool(self.memory.rmw(v, "pir_on", lambda on: True, "pi_test_and_set_on()"))

    def vmx_sync_pir_to_irr(self, v: Any) -> None:
        """pi_test_on(); pi_clear_on(); smp_mb__after_atomic(); then PIR is moved to IRR word by
        word with xchg()."""
        if not self.memory.read_once(v, "pir_on"):
            return
        self.memory.atomic(v, "pir_on", lambda on: False, "pi_clear_on()")
        self.memory.smp_mb__after_atomic()
        self._virr_add(v, self.memory.xchg(v, "pir", frozenset()))

    def _virr_add(self, v: Any, vectors: frozenset) -> None:
        """The vIRR is the CPU's, not memory the model orders: each backend updates it its way."""
        v.irr |= vectors

    def smp_mb__after_srcu_read_unlock(self, v: Any) -> str:
        """The smp_mb() between setting IN_GUEST_MODE and the last checks (the Dekker pattern's
        barrier). Returns its label."""
        self.memory.smp_mb()
        return "smp_mb(); "

    def kvm_vcpu_exit_request(self, v: Any) -> str | None:
        pending = self.memory.read_once(v, "requests") != 0
        if self.memory.read_once(v, "mode") == EXITING_GUEST_MODE:
            return f"vcpu->mode = EXITING_GUEST_MODE, kvm_request_pending() = {str(pending).lower()}"
        return "kvm_request_pending() = true" if pending else None

    def _outside_guest_mode(self, v: Any) -> None:
        """vcpu->mode = OUTSIDE_GUEST_MODE; smp_wmb(); as vcpu_enter_guest() leaves guest mode."""
        self.memory.write_once(v, "mode", OUTSIDE_GUEST_MODE)
        self.memory.smp_wmb()
