"""Broken variants of the arm64 vCPU attribute model (devices/vcpu.rst): each breaks one rule.

Reference machines, and two threaded ones. BROKEN maps each machine to the spec that must catch it.
"""

from __future__ import annotations

from pytest_kvmconf.backends.reference import ReferenceBackend, ReferenceMachine
from pytest_kvmconf.backends.reference.attr import ArmVcpu
from pytest_kvmconf.backends.threaded import ThreadedBackend, ThreadedMachine
from pytest_kvmconf.facets.attr import EBUSY, EINVAL, ENODEV, ENXIO, KVM_ARM_VCPU_PMU_V3_IRQ, is_ppi, is_spi

from . import running


class PmuIrqSetTwiceAccepted(ReferenceMachine):
    """A vCPU's PMU interrupt can be set again: the last value wins."""

    def kvm_arm_pmu_v3_set_attr(self, c: ArmVcpu, attr: int, value: int) -> int:
        if attr == KVM_ARM_VCPU_PMU_V3_IRQ and c.pmu_irq >= 0 and not c.pmu_initialized:
            saved, c.pmu_irq = c.pmu_irq, -1
            ret = super().kvm_arm_pmu_v3_set_attr(c, attr, value)
            if ret:
                c.pmu_irq = saved
            return ret
        return super().kvm_arm_pmu_v3_set_attr(c, attr, value)


class PmuIrqSetTwiceEinval(ReferenceMachine):
    """Setting the PMU interrupt again fails, but with EINVAL instead of EBUSY."""

    def kvm_arm_pmu_v3_set_attr(self, c: ArmVcpu, attr: int, value: int) -> int:
        ret = super().kvm_arm_pmu_v3_set_attr(c, attr, value)
        return -EINVAL if ret == -EBUSY and not c.pmu_initialized else ret


class PmuGetUnsetReturnsZero(ReferenceMachine):
    """Getting a PMU interrupt that was never set reads 0 instead of failing with ENXIO."""

    def kvm_arm_pmu_v3_get_attr(self, c: ArmVcpu, attr: int) -> int:
        ret = super().kvm_arm_pmu_v3_get_attr(c, attr)
        return 0 if ret == -ENXIO and attr == KVM_ARM_VCPU_PMU_V3_IRQ else ret


class NoPmuEinval(ReferenceMachine):
    """Without PMUv3, setting a PMU attribute fails with EINVAL instead of ENODEV."""

    def kvm_arm_pmu_v3_set_attr(self, c: ArmVcpu, attr: int, value: int) -> int:
        ret = super().kvm_arm_pmu_v3_set_attr(c, attr, value)
        return -EINVAL if ret == -ENODEV and not self.arm_vm.pmu else ret


class NoPmuEnxio(ReferenceMachine):
    """Without PMUv3, setting a PMU attribute fails with ENXIO: the 5.10 text allows it (ATTR-03.a),
    the older one, "-ENODEV PMUv3 not supported", does not (ATTR-03)."""

    def kvm_arm_pmu_v3_set_attr(self, c: ArmVcpu, attr: int, value: int) -> int:
        ret = super().kvm_arm_pmu_v3_set_attr(c, attr, value)
        return -ENXIO if ret == -ENODEV and not self.arm_vm.pmu else ret


class PmuIrqWithoutIrqchipAccepted(ReferenceMachine):
    """The PMU interrupt can be set before there is an in-kernel irqchip."""

    def kvm_arm_pmu_v3_set_attr(self, c: ArmVcpu, attr: int, value: int) -> int:
        vm = self.arm_vm
        created, vm.vgic_created = vm.vgic_created, True
        try:
            return super().kvm_arm_pmu_v3_set_attr(c, attr, value)
        finally:
            vm.vgic_created = created


class PmuIrqAcceptsSgi(ReferenceMachine):
    """Any number below 1020 is taken as a PMU interrupt, SGIs (0-15) included."""

    def valid_pmu_irq(self, irq: int) -> bool:
        return 0 <= irq <= 1019


class SpiShared:
    """The consistency check forgets that an SPI must be a separate number per vCPU (a mixin: the
    same step on either machine, super() following the machine it is composed with)."""

    def pmu_irq_is_valid(self, c: ArmVcpu, irq: int) -> bool:
        if is_spi(irq):
            return all(is_spi(o.pmu_irq) for o in self.arm_vm.vcpus if o is not c and o.pmu_irq >= 0)
        return super().pmu_irq_is_valid(c, irq)  # type: ignore[misc]


class SpiSharedByTwoVcpus(SpiShared, ReferenceMachine):
    """The consistency check forgets that an SPI must be a separate number per vCPU."""


class PpiDifferingAcrossVcpus(ReferenceMachine):
    """The consistency check only compares types: two vCPUs may use different PPIs."""

    def pmu_irq_is_valid(self, c: ArmVcpu, irq: int) -> bool:
        if is_ppi(irq):
            return all(is_ppi(o.pmu_irq) for o in self.arm_vm.vcpus if o is not c and o.pmu_irq >= 0)
        return super().pmu_irq_is_valid(c, irq)


class PmuInitBeforeGicInit(ReferenceMachine):
    """PMU_V3_INIT is accepted before the vGIC is initialised."""

    def kvm_arm_pmu_v3_init(self, c: ArmVcpu) -> int:
        vm = self.arm_vm
        if vm.vgic_created and not vm.vgic_initialized and c.pmu_irq >= 0:
            c.pmu_initialized = True
            return 0
        return super().kvm_arm_pmu_v3_init(c)


class PmuInitTwiceAccepted(ReferenceMachine):
    """PMU_V3_INIT of an initialised PMU succeeds again."""

    def kvm_arm_pmu_v3_set_attr(self, c: ArmVcpu, attr: int, value: int) -> int:
        ret = super().kvm_arm_pmu_v3_set_attr(c, attr, value)
        return 0 if ret == -EBUSY and c.pmu_initialized and attr != KVM_ARM_VCPU_PMU_V3_IRQ else ret


class TimerAcceptsSpi(ReferenceMachine):
    """Timer interrupts are checked against the GIC's whole range instead of the PPIs."""

    def valid_timer_irq(self, irq: int) -> bool:
        return 16 <= irq <= 1019


class TimerIrqAcceptedAfterRun(ReferenceMachine):
    """The timer interrupts stay writable after a vCPU has run."""

    def timer_ppis_immutable(self, c: ArmVcpu) -> bool:
        return False


class WrongDefaults(ReferenceMachine):
    """The physical timer defaults to 29 instead of 30."""

    def new_vcpu_timer_irqs(self) -> tuple[int, int]:
        return 27, 29


class CollidingTimersRun(ReferenceMachine):
    """The first KVM_RUN does not check that the two timers use different PPIs."""

    def timer_irqs_are_valid(self, c: ArmVcpu) -> bool:
        return True


class TimerNotPropagated(ReferenceMachine):
    """A timer interrupt set on one vCPU configures only that vCPU."""

    def timer_set_targets(self, c: ArmVcpu) -> list[ArmVcpu]:
        return [c]


# The same mistakes in the threaded backend.

class ThreadedTimerIrqAcceptedAfterRun(ThreadedMachine):
    """The threaded timer attributes stay writable after a vCPU has run."""

    timer_ppis_immutable = TimerIrqAcceptedAfterRun.timer_ppis_immutable  # the same step, the same code


class ThreadedSpiSharedByTwoVcpus(SpiShared, ThreadedMachine):
    """The threaded PMU interrupt check lets two vCPUs share an SPI (the same step, the same code)."""


def backend(machine: type) -> ReferenceBackend | ThreadedBackend:
    return running(machine, f"broken-{machine.__name__}")


#: broken machine -> the guarantee that must catch it.
BROKEN: dict[type, str] = {
    PmuIrqSetTwiceAccepted: "ATTR-01",
    PmuIrqSetTwiceEinval: "ATTR-01",
    PmuGetUnsetReturnsZero: "ATTR-02",
    NoPmuEinval: "ATTR-03.a",
    NoPmuEnxio: "ATTR-03",
    PmuIrqWithoutIrqchipAccepted: "ATTR-04",
    PmuIrqAcceptsSgi: "ATTR-04",
    SpiSharedByTwoVcpus: "ATTR-05",
    PpiDifferingAcrossVcpus: "ATTR-05",
    PmuInitBeforeGicInit: "ATTR-06",
    PmuInitTwiceAccepted: "ATTR-06",
    TimerAcceptsSpi: "ATTR-07",
    TimerIrqAcceptedAfterRun: "ATTR-08",
    WrongDefaults: "ATTR-09",
    CollidingTimersRun: "ATTR-10",
    TimerNotPropagated: "ATTR-11",
    ThreadedTimerIrqAcceptedAfterRun: "ATTR-08",
    ThreadedSpiSharedByTwoVcpus: "ATTR-05",
}
