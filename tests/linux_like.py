"""Backends that behave as Linux does where Linux and the documents part ways.

Variants of the reference model, each overriding one rule to follow the kernel function it names
(read in Debian's Linux 6.12.117 and, for the rules before 6.4, 6.1.192), so that the tests can show
that every spec holds on such a kernel except the entries of the shipped expectation files, each of
which it violates: pytest_kvmconf/known/linux.toml for ``linux-like`` (6.4 and later), and that file
with known/linux-pre-6.4.toml for ``linux-like-pre-6.4``.
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

    def pmu_irq_is_valid(self, c: ArmVcpu, irq: int) -> bool:
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

    def new_vcpu_timer_irqs(self) -> tuple[int, int]:
        vm = getattr(self, "arm_vm", None)
        if vm is None or not vm.vcpus:
            return super().new_vcpu_timer_irqs()
        return vm.vcpus[0].vtimer, vm.vcpus[0].ptimer


class LinuxPerVcpuTimerBusy(ReferenceMachine):
    """Before v6.4, kvm_arm_timer_set_attr() (arch/arm64/kvm/arch_timer.c) refused with -EBUSY only
    when this vCPU's timer was enabled (vcpu->arch.timer_cpu.enabled: kvm_timer_enable() on its own
    first KVM_RUN); 8a5eb2d21080 (6.4) made the refusal VM-wide. The model's other rules already
    behave as set_timer_irqs() and kvm_timer_enable() did then: a setting reaches every vCPU, and
    only a vCPU's first run checks its timer PPIs."""

    def timer_ppis_immutable(self, c: ArmVcpu) -> bool:
        return c.has_run


class LinuxLikeMachine(LinuxPmuIrq, LinuxVmWideTimers):
    """Every rule of Linux 6.4 and later at once."""


class LinuxPre64Machine(LinuxPmuIrq, LinuxPerVcpuTimerBusy):
    """Every rule of Linux before 6.4 at once (a vCPU created later keeps the default timers)."""


class LinuxLikeBackend(ReferenceBackend):
    name = "linux-like"
    description = "the reference model where it agrees with Linux, Linux's rules where they differ"
    capabilities = CAPABILITIES - {"userspace_obligations"}
    machine_class: type = LinuxLikeMachine


class LinuxLikePre64Backend(LinuxLikeBackend):
    name = "linux-like-pre-6.4"
    description = "the reference model where it agrees with Linux before 6.4, Linux's rules where they differ"
    machine_class: type = LinuxPre64Machine


def pytest_kvmconf_backends() -> dict[str, type]:
    return {"linux-like": LinuxLikeBackend, "linux-like-pre-6.4": LinuxLikePre64Backend}
