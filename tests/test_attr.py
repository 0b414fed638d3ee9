"""Every ATTR spec bites: the reference passes, and each broken variant is caught.

Plus direct checks of the model's answers for the document's tables.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_kvmconf.backend import MachineConfig, ThreadContext
from pytest_kvmconf.backends.reference import ReferenceBackend
from pytest_kvmconf.backends.threaded import ThreadedBackend
from pytest_kvmconf.engine.runner import RunOptions, run_schedule
from pytest_kvmconf.facets.attr import (
    EBUSY,
    EINVAL,
    ENODEV,
    ENXIO,
    KVM_ARM_VCPU_PMU_V3_CTRL,
    KVM_ARM_VCPU_PMU_V3_INIT,
    KVM_ARM_VCPU_PMU_V3_IRQ,
    KVM_ARM_VCPU_TIMER_CTRL,
    KVM_ARM_VCPU_TIMER_IRQ_PTIMER,
    KVM_ARM_VCPU_TIMER_IRQ_VTIMER,
)
from pytest_kvmconf.spec.versions import NEWEST
from pytest_kvmconf.strategies import schedule_strategy

from .bite import BUDGET, applicable, guarantees, newest_text, verdict
from .broken.attr import BROKEN, backend

ATTR_IDS = sorted(g for g in guarantees() if g.startswith("ATTR-"))


def test_all_eleven_guarantees_have_specs_for_arm64() -> None:
    assert ATTR_IDS == sorted([f"ATTR-{i:02d}" for i in range(1, 12)] + ["ATTR-03.a"])
    assert all(guarantees()[g].arch == "arm64" for g in ATTR_IDS)


@pytest.mark.parametrize("gid", ATTR_IDS)
def test_reference_passes(gid: str) -> None:
    found = verdict(gid, ReferenceBackend(), newest_text(gid))
    assert found is None, str(found)


@pytest.mark.parametrize("machine,gid", list(BROKEN.items()), ids=[m.__name__ for m in BROKEN])
def test_broken_variant_is_caught(machine: type, gid: str) -> None:
    b = backend(machine)
    assert applicable(guarantees()[gid], b, newest_text(gid))
    found = verdict(gid, b, newest_text(gid))
    assert found is not None, f"{machine.__name__} was not caught by {gid} within {BUDGET} examples"
    assert found.outcome.guarantee.id == gid


@pytest.mark.parametrize("gid", ATTR_IDS)
def test_threaded_passes(gid: str) -> None:
    found = verdict(gid, ThreadedBackend(), newest_text(gid), max_examples=30)
    assert found is None, str(found)


def test_every_attr_guarantee_has_a_broken_variant() -> None:
    assert set(ATTR_IDS) <= set(BROKEN.values())


def test_a_broken_variant_is_also_caught_with_shrinking() -> None:
    found = verdict("ATTR-09", backend(next(m for m in BROKEN if m.__name__ == "WrongDefaults")), shrink=True)
    assert found is not None and "27 and 30" in str(found)


class Vmm:
    """Drive one reference machine directly, ioctl by ioctl."""

    def __init__(self, vcpus: int = 2, pmu: bool = True):
        self.m = ReferenceBackend().new_machine(MachineConfig(vcpus, "arm64", NEWEST, {"pmu": pmu}))
        self.ctx = ThreadContext("vmm", None)

    def __getattr__(self, op: str):
        def call(**args):
            gen = self.m.run_op(self.ctx, op, args)
            try:
                while True:
                    next(gen)
            except StopIteration as stop:
                return stop.value
        return call

    def set(self, vcpu: int, group: int, attr: int, value: int = 0) -> int:
        return self.kvm_set_device_attr(vcpu=vcpu, group=group, attr=attr, value=value)

    def get(self, vcpu: int, group: int, attr: int) -> int:
        return self.kvm_get_device_attr(vcpu=vcpu, group=group, attr=attr)


PMU, IRQ, INIT = KVM_ARM_VCPU_PMU_V3_CTRL, KVM_ARM_VCPU_PMU_V3_IRQ, KVM_ARM_VCPU_PMU_V3_INIT
TIMER, VTIMER, PTIMER = KVM_ARM_VCPU_TIMER_CTRL, KVM_ARM_VCPU_TIMER_IRQ_VTIMER, KVM_ARM_VCPU_TIMER_IRQ_PTIMER


def test_pmu_table_of_section_1() -> None:
    vmm = Vmm()
    assert vmm.set(0, PMU, IRQ, 23) == -EINVAL  # no in-kernel irqchip
    assert vmm.arm_create_vgic() == 0
    assert vmm.get(0, PMU, IRQ) == -ENXIO
    assert vmm.set(0, PMU, IRQ, 1020) == -EINVAL
    assert vmm.set(0, PMU, INIT) == -ENODEV  # GIC not initialised
    assert vmm.set(0, PMU, IRQ, 23) == 0 and vmm.get(0, PMU, IRQ) == 23
    assert vmm.set(0, PMU, IRQ, 23) == -EBUSY
    assert vmm.set(1, PMU, IRQ, 24) == -EINVAL  # a PPI is the same on every vCPU
    assert vmm.set(1, PMU, IRQ, 40) == -EINVAL  # one type for every vCPU
    assert vmm.arm_vcpu_run(vcpu=0) == -EINVAL  # a vCPU with a PMU runs only after INIT
    assert vmm.arm_init_vgic() == 0
    assert vmm.set(1, PMU, INIT) == -ENXIO  # no interrupt configured
    assert vmm.set(0, PMU, INIT) == 0 and vmm.set(0, PMU, INIT) == -EBUSY
    assert Vmm(pmu=False).set(0, PMU, IRQ, 23) == -ENODEV


def test_spis_are_distinct_per_vcpu() -> None:
    vmm = Vmm(vcpus=3)
    vmm.arm_create_vgic()
    assert vmm.set(0, PMU, IRQ, 40) == 0
    assert vmm.set(1, PMU, IRQ, 40) == -EINVAL
    assert vmm.set(1, PMU, IRQ, 41) == 0
    assert vmm.set(2, PMU, IRQ, 23) == -EINVAL


def test_timer_table_of_section_2() -> None:
    vmm = Vmm(pmu=False)
    assert vmm.get(0, TIMER, VTIMER) == 27 and vmm.get(0, TIMER, PTIMER) == 30
    assert vmm.set(0, TIMER, VTIMER, 20) == -EINVAL  # no in-kernel irqchip
    vmm.arm_create_vgic()
    assert vmm.set(0, TIMER, VTIMER, 32) == -EINVAL and vmm.set(0, TIMER, VTIMER, 15) == -EINVAL
    assert vmm.set(1, TIMER, VTIMER, 30) == 0  # both timers on PPI 30, on both vCPUs
    assert vmm.get(0, TIMER, VTIMER) == 30
    assert vmm.arm_create_vcpu() == 2 and vmm.get(2, TIMER, VTIMER) == 27
    assert vmm.arm_vcpu_run(vcpu=0) == -EINVAL  # the same PPI prevents running
    assert vmm.arm_vcpu_run(vcpu=2) == 0
    assert vmm.set(0, TIMER, VTIMER, 20) == -EBUSY
    assert vmm.arm_create_vcpu() == -EBUSY  # the first KVM_RUN initialised the vGIC


def test_both_backends_observe_exactly_the_declared_observables() -> None:
    from pytest_kvmconf.facets import FACETS, all_observables

    all_observables()  # loads the facets
    config = MachineConfig(3, "arm64", NEWEST, {"pmu": False})
    ref = ReferenceBackend().new_machine(config).observe_attr()
    thr = ThreadedBackend().new_machine(config).observe_attr()
    assert set(ref) == set(thr) == set(FACETS["attr"].observables)
    assert ref == thr


ATTR_KEYS = ("arm_vcpus", "vgic_created", "vgic_initialized", "pmu_supported", "any_ran", "run_attempts")


@settings(max_examples=25, database=None, deadline=None)
@given(data=st.data())
def test_threaded_runs_the_same_schedules_as_the_reference(data: st.DataObject) -> None:
    gid = data.draw(st.sampled_from(ATTR_IDS))
    g = guarantees()[gid]
    s = data.draw(schedule_strategy(g, NEWEST))
    ref = run_schedule(g, ReferenceBackend(), s, RunOptions(NEWEST))
    thr = run_schedule(g, ThreadedBackend(), s, RunOptions(NEWEST))
    assert [(e.thread, e.texts) for e in thr.timeline] == [(e.thread, e.texts) for e in ref.timeline]
    assert {k: thr.final_state[k] for k in ATTR_KEYS} == {k: ref.final_state[k] for k in ATTR_KEYS}
    assert thr.violation is None and ref.violation is None
