"""A backend that behaves as Linux does where Linux and the documents part ways.

Variants of the reference model, each overriding one rule to follow the kernel function it names
(read in Linux v6.12), so that the tests can show that every spec holds on such a kernel except the
entries of the shipped expectation file pytest_kvmconf/known/linux.toml, each of which it violates.
It has no ``userspace_obligations`` capability: a KVM does not refuse what only userspace must avoid.
"""

from __future__ import annotations

from pytest_kvmconf.backends.reference import CAPABILITIES, ReferenceBackend, ReferenceMachine
from pytest_kvmconf.backends.reference.attr import ArmVcpu
from pytest_kvmconf.facets.attr import is_ppi


class LinuxPmuIrq(ReferenceMachine):
    """pmu_irq_is_valid() (arch/arm64/kvm/pmu-emul.c): a PPI must equal every vCPU's interrupt
    and an SPI differ from every vCPU's, the vCPU's own included; an SPI after another vCPU's
    PPI is accepted (only SPIs are compared for equality)."""

    def _pmu_irq_consistent(self, c: ArmVcpu, irq: int) -> bool:
        for vcpu in self.arm_vm.vcpus:
            if vcpu.pmu_irq < 0:
                continue
            if is_ppi(irq) and vcpu.pmu_irq != irq:
                return False
            if not is_ppi(irq) and vcpu.pmu_irq == irq:
                return False
        return True


class LinuxVmWideTimers(ReferenceMachine):
    """Since v6.4 the timer interrupts are the VM's (kvm->arch.timer_data.ppi[], set by
    kvm_arm_timer_set_attr() and read through timer_irq() in arch/arm64/kvm/arch_timer.c):
    a vCPU created later uses them too."""

    def _new_vcpu_timer_irqs(self) -> tuple[int, int]:
        vm = getattr(self, "arm_vm", None)
        if vm is None or not vm.vcpus:
            return super()._new_vcpu_timer_irqs()
        return vm.vcpus[0].vtimer, vm.vcpus[0].ptimer


class LinuxLikeMachine(LinuxPmuIrq, LinuxVmWideTimers):
    """Every Linux variant at once."""


class LinuxLikeBackend(ReferenceBackend):
    name = "linux-like"
    description = "the reference model where it agrees with Linux, Linux's rules where they differ"
    capabilities = CAPABILITIES - {"userspace_obligations"}
    machine_class: type = LinuxLikeMachine


def pytest_kvmconf_backends() -> dict[str, type]:
    return {"linux-like": LinuxLikeBackend}
