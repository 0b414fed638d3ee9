"""The interrupt-side live specs on the running kernel: each holds, each catches a variant,
each is skipped with the reason where its channel is missing.

Variants are VMM-side bugs (an injection that never happens, an MSI to the wrong APIC id, a
VMM that forgets KVM_CREATE_IRQCHIP, APs made RUNNABLE by the VMM) or observers that lose
events (a halt_wakeup counter read as 0, a trace subscription that drops events).
"""

from __future__ import annotations

import pytest

from pytest_kvmconf.backend import skip_reason
from pytest_kvmconf.backends.kvm import KvmBackend, machine, probe, tracefs
from pytest_kvmconf.backends.kvm.irq import IrqOps
from pytest_kvmconf.backends.kvm.machine import KvmMachine
from pytest_kvmconf.backends.reference import ReferenceBackend
from pytest_kvmconf.backends.threaded import ThreadedBackend
from pytest_kvmconf.engine.explore import CouldNotDecide, ViolationFound
from pytest_kvmconf.spec.versions import NEWEST

from .bite import guarantees, verdict

REASON = probe.environment()[0]
live = pytest.mark.skipif(REASON is not None, reason=f"kvm backend unusable here: {REASON}")
TRACE_REASON = tracefs.unavailable(("kvm/kvm_vcpu_wakeup",))

#: The interrupt-side live specs (irq facet) and the MP positives.
IRQ_LIVE = ("REQ-07.live", "REQ-08.live", "REQ-08.trace", "REQ-09.live", "REQ-16.live", "REQ-25.live",
            "MP-01.c", "MP-01.d", "MP-03.c")
MP_POSITIVE = ("MP-01.b", "MP-02.a")
#: Budget per spec: every example makes and closes a VM (about 30 ms here).
EXAMPLES = 20


def decided(found: object) -> object:
    """A test on the live kernel cannot decide under an extreme load: say so instead of failing."""
    if isinstance(found, CouldNotDecide):
        pytest.skip(str(found))
    return found


def backend_with(cls: type, name: str) -> KvmBackend:
    b = KvmBackend()
    b.name = name
    b.new_machine = lambda config: cls(config, b.execution)  # type: ignore[method-assign]
    return b


@live
@pytest.mark.parametrize("gid", IRQ_LIVE + MP_POSITIVE)
def test_holds_on_the_kernel(gid: str) -> None:
    b = KvmBackend()
    g = guarantees()[gid]
    if gid == "REQ-08.trace" and TRACE_REASON:
        pytest.skip(TRACE_REASON)
    assert skip_reason(b, g.needs, g.arch, NEWEST) is None and b.skip_reason(g) is None
    found = decided(verdict(gid, b, max_examples=EXAMPLES))
    assert found is None, str(found)


@pytest.mark.parametrize("gid", IRQ_LIVE)
def test_the_models_skip_them_with_the_reason(gid: str) -> None:
    g = guarantees()[gid]
    for b in (ReferenceBackend(), ThreadedBackend()):
        why = skip_reason(b, g.needs, g.arch, NEWEST)
        assert why is not None and "lacks capability" in why and "irq" in why, (gid, why)


@pytest.mark.parametrize("gid", MP_POSITIVE)
def test_the_mp_positives_hold_on_the_models(gid: str) -> None:
    for b in (ReferenceBackend(), ThreadedBackend()):
        assert verdict(gid, b, max_examples=30) is None


# -- VMM-side bugs and observers that lose events ------------------------------------

class InjectionNeverHappens(KvmMachine):
    """The VMM's injection path returns success without making the ioctl."""

    def inject(self, vcpu: int, via: str) -> int:
        return 1 if via in ("msi", "nmi") else 0

    def msi(self, vcpu: int, delivery: str, vector: int = 0) -> int:
        return 1 if delivery in ("init", "startup") else super().msi(vcpu, delivery, vector)


class WrongDestination(KvmMachine):
    """The VMM addresses its MSIs to the next APIC id (an off-by-one in its routing)."""

    def msi(self, vcpu: int, delivery: str, vector: int = 0) -> int:
        return super().msi(vcpu + 1, delivery, vector)


class LostWakeupCounter(KvmMachine):
    """An observer that loses events: it reads halt_wakeup from a statistic that never moves."""

    def _observe(self, out: dict) -> None:
        super()._observe(out)
        for v in out.get("irq", ()):
            v["halt_wakeups"] = 0 if v["halt_wakeups"] is not None else None


class DroppingTrace(KvmMachine):
    """An observer that loses events: its trace subscription drops every kvm_vcpu_wakeup."""

    def _observe(self, out: dict) -> None:
        if self.trace is not None:
            self.trace.poll()
            self.trace.events[:] = [e for e in self.trace.events if e.name != "kvm_vcpu_wakeup"]
        super()._observe(out)


class ReentersBeforeInjecting(KvmMachine):
    """The VMM, meaning to inject between two runs, has already put the vCPU back into KVM_RUN
    (where it halts again) when the injection is made."""

    def inject(self, vcpu: int, via: str) -> int:
        v = self.vm.vcpus[vcpu]
        assert v.run is not None
        v.run.immediate_exit = 0
        progress = self.vm.progress(vcpu)
        self.settle(v, v.start_run(), progress)
        return super().inject(vcpu, via)


class ForgetsTheIrqchip(KvmMachine):
    """The VMM creates no in-kernel irqchip although it was asked to."""

    def __init__(self, config, execution="threads"):  # type: ignore[no-untyped-def]
        from dataclasses import replace

        options = {**config.options, "irqchip": False}
        super().__init__(replace(config, options=options), execution)


class ApsMadeRunnable(KvmMachine):
    """The VMM sets every vCPU RUNNABLE right after creating it (so APs never wait for INIT)."""

    def __init__(self, config, execution="threads"):  # type: ignore[no-untyped-def]
        super().__init__(config, execution)
        from pytest_kvmconf.backends.kvm import uapi

        for v in self.vm.vcpus:
            v.ioctl(uapi.KVM_SET_MP_STATE, uapi.kvm_mp_state(0), "KVM_SET_MP_STATE")


CAUGHT = [
    ("REQ-07.live", InjectionNeverHappens), ("REQ-07.live", WrongDestination),
    ("REQ-08.live", InjectionNeverHappens), ("REQ-08.live", LostWakeupCounter),
    ("REQ-08.trace", DroppingTrace), ("REQ-09.live", ReentersBeforeInjecting),
    ("REQ-09.live", WrongDestination),
    ("REQ-16.live", InjectionNeverHappens), ("REQ-25.live", WrongDestination),
    ("MP-01.b", ApsMadeRunnable), ("MP-02.a", ForgetsTheIrqchip),
    ("MP-01.c", InjectionNeverHappens), ("MP-01.d", InjectionNeverHappens),
    ("MP-03.c", InjectionNeverHappens),
]


@live
@pytest.mark.parametrize(("gid", "cls"), CAUGHT, ids=[f"{g}-{c.__name__}" for g, c in CAUGHT])
def test_each_live_spec_catches_a_variant(gid: str, cls: type) -> None:
    if gid == "REQ-08.trace" and TRACE_REASON:
        pytest.skip(TRACE_REASON)
    found = decided(verdict(gid, backend_with(cls, f"kvm-{cls.__name__}"), max_examples=EXAMPLES))
    assert isinstance(found, ViolationFound), f"{cls.__name__} was not caught by {gid}"


def test_every_live_spec_has_a_caught_variant() -> None:
    assert {g for g, _ in CAUGHT} == set(IRQ_LIVE + MP_POSITIVE)
    assert issubclass(KvmMachine, IrqOps) and hasattr(KvmMachine, "op_inject_irq") and machine.OPTIONS


# -- channels missing ---------------------------------------------------------------------

def test_without_tracefs_the_traced_spec_is_skipped_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe, "environment", lambda: (None, frozenset(probe.ALL_CAPS)))
    monkeypatch.setattr(tracefs, "unavailable", lambda events=(): "tracefs is not mounted and mounting it needs root")
    why = KvmBackend().skip_reason(guarantees()["REQ-08.trace"])
    assert why == "no kernel tracepoints: tracefs is not mounted and mounting it needs root"
    assert KvmBackend().skip_reason(guarantees()["REQ-08.live"]) is None


def test_without_binary_stats_the_stats_specs_are_skipped_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    caps = frozenset(probe.ALL_CAPS) - {probe.STATS_CAP[0]}
    monkeypatch.setattr(probe, "environment", lambda: (None, caps))
    for gid in ("REQ-08.live", "REQ-25.live", "MP-04.a"):
        why = KvmBackend().skip_reason(guarantees()[gid])
        assert why is not None and "KVM_CAP_BINARY_STATS_FD" in why, (gid, why)
    assert KvmBackend().skip_reason(guarantees()["MP-02.a"]) is None


def test_without_an_irqchip_or_msi_the_irq_specs_are_skipped_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    caps = frozenset(probe.ALL_CAPS) - {probe.IRQCHIP_CAP[0], probe.OP_CAPS["inject_init"][0]}
    monkeypatch.setattr(probe, "environment", lambda: (None, caps))
    for gid in IRQ_LIVE:
        if gid == "MP-03.c":  # KVM_INTERRUPT without an irqchip needs neither
            assert KvmBackend().skip_reason(guarantees()[gid]) is None
            continue
        why = KvmBackend().skip_reason(guarantees()[gid])
        assert why is not None and why.startswith("the kernel lacks"), (gid, why)


# -- under load, and what is left behind -----------------------------------------------------

@live
def test_an_exceeded_bound_is_undecided_never_a_violation(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host so loaded that no evidence comes within the bound (simulated: a zero bound): the
    examples are undecided, the guarantee could not be decided, nothing is reported violated."""
    from pytest_kvmconf.backends.kvm import evidence

    # Every wait for evidence runs out: the kernel's evidence never holds within the bound. (A zero
    # bound alone is not enough: evidence already there at the first look decides the example.)
    wait = evidence.await_evidence
    monkeypatch.setattr(evidence, "await_evidence",
                        lambda decided, what, bound=0.0, step=None: wait(lambda: False, what, 0.0, step))
    for gid in ("MP-04.a", "REQ-25.live"):
        found = verdict(gid, KvmBackend(), max_examples=10)
        assert isinstance(found, CouldNotDecide), (gid, found)
        assert found.stats.undecided >= 1 and "no evidence either way" in str(found)


@live
def test_no_fd_mapping_thread_handler_or_trace_instance_outlives_a_run() -> None:
    import os
    import signal
    import threading
    from pathlib import Path

    from pytest_kvmconf.backends.kvm import vm

    handler = signal.getsignal(vm.KICK_SIGNAL)
    verdict("REQ-25.live", KvmBackend(), max_examples=2)  # warm the engine's worker pool
    tracefs.shutdown()
    fds, maps = len(os.listdir("/proc/self/fd")), Path("/proc/self/maps").read_text().count("kvm-vcpu")
    before_mounts, instances = tracefs.own_mounts(), tracefs.instance_names()
    gids = ["REQ-07.live", "REQ-25.live", "MP-01.d"] + ([] if TRACE_REASON else ["REQ-08.trace"])
    for gid in gids:
        assert decided(verdict(gid, KvmBackend(), max_examples=3)) is None
    # A lost injection leaves its vCPU in KVM_RUN for good: cleaned up too.
    assert verdict("REQ-07.live", backend_with(InjectionNeverHappens, "kvm-lost"), max_examples=2) is not None
    tracefs.shutdown()
    assert len(os.listdir("/proc/self/fd")) == fds
    assert Path("/proc/self/maps").read_text().count("kvm-vcpu") == maps == 0
    assert signal.getsignal(vm.KICK_SIGNAL) == handler
    assert not [t.name for t in threading.enumerate() if t.name.startswith("kvmconf-kvm-vcpu")]
    assert tracefs.own_mounts() == before_mounts and tracefs.instance_names() == instances
