"""devices/vcpu.rst: arm64 vCPU device attributes (KVM_SET/GET/HAS_DEVICE_ATTR on a vCPU fd).

Two groups: KVM_ARM_VCPU_PMU_V3_CTRL (the PMU overflow interrupt and the PMU's
initialisation) and KVM_ARM_VCPU_TIMER_CTRL (the virtual and physical timer
interrupts). The rules depend on the VM around the vCPU, so the vocabulary also
has vCPU creation, the in-kernel irqchip (vGIC: KVM_CREATE_DEVICE, then
KVM_DEV_ARM_VGIC_CTRL_INIT) and the first KVM_RUN, which validates the
configuration.

Every operation is one ioctl: it returns 0 (or a value read) or -errno, as the
uapi does. A spec's machine starts with ``vcpus`` vCPUs (indices 0..vcpus-1);
machine option ``pmu`` (default true) says whether the host supports PMUv3 (and
so every vCPU was created with the KVM_ARM_VCPU_PMU_V3 feature). Operations on
a vCPU index that does not exist return -EBADF (no such vCPU fd).
"""

from __future__ import annotations

from . import Arg, Facet, register

# include/uapi/asm-generic/errno-base.h
EBADF = 9
ENXIO = 6
EBUSY = 16
EEXIST = 17
ENODEV = 19
EINVAL = 22

# arch/arm64/include/uapi/asm/kvm.h
KVM_ARM_VCPU_PMU_V3_CTRL = 0
KVM_ARM_VCPU_PMU_V3_IRQ = 0
KVM_ARM_VCPU_PMU_V3_INIT = 1
KVM_ARM_VCPU_TIMER_CTRL = 1
KVM_ARM_VCPU_TIMER_IRQ_VTIMER = 0
KVM_ARM_VCPU_TIMER_IRQ_PTIMER = 1

#: devices/vcpu.rst 2.1: "The EL1 virtual timer intid (default: 27)", physical: 30.
DEFAULT_VTIMER_IRQ = 27
DEFAULT_PTIMER_IRQ = 30

#: The GIC's interrupt id ranges: SGIs 0-15, PPIs 16-31, SPIs 32-1019.
PPI_BASE, SPI_BASE, SPI_LIMIT = 16, 32, 1019

#: Most vCPUs a machine of this facet may create (KVM_CREATE_VCPU then fails with EINVAL).
MAX_VCPUS = 4


def is_ppi(intid: int) -> bool:
    return PPI_BASE <= intid < SPI_BASE


def is_spi(intid: int) -> bool:
    return SPI_BASE <= intid <= SPI_LIMIT


def attr_name(group: int, attr: int) -> str:
    """The uapi names of a (group, attr) pair, for timelines."""
    names = {
        (KVM_ARM_VCPU_PMU_V3_CTRL, KVM_ARM_VCPU_PMU_V3_IRQ): "PMU_V3_IRQ",
        (KVM_ARM_VCPU_PMU_V3_CTRL, KVM_ARM_VCPU_PMU_V3_INIT): "PMU_V3_INIT",
        (KVM_ARM_VCPU_TIMER_CTRL, KVM_ARM_VCPU_TIMER_IRQ_VTIMER): "TIMER_IRQ_VTIMER",
        (KVM_ARM_VCPU_TIMER_CTRL, KVM_ARM_VCPU_TIMER_IRQ_PTIMER): "TIMER_IRQ_PTIMER",
    }
    return names.get((group, attr), f"group {group}, attr {attr}")


attr = register(Facet(
    "attr",
    "arm64 vCPU device attributes (devices/vcpu.rst): PMUv3 and timer interrupt groups, "
    "vCPU creation, the vGIC and the first KVM_RUN",
))
attr.constants.update({
    "EBADF": EBADF, "ENXIO": ENXIO, "EBUSY": EBUSY, "EEXIST": EEXIST, "ENODEV": ENODEV,
    "EINVAL": EINVAL,
    "KVM_ARM_VCPU_PMU_V3_CTRL": KVM_ARM_VCPU_PMU_V3_CTRL,
    "KVM_ARM_VCPU_PMU_V3_IRQ": KVM_ARM_VCPU_PMU_V3_IRQ,
    "KVM_ARM_VCPU_PMU_V3_INIT": KVM_ARM_VCPU_PMU_V3_INIT,
    "KVM_ARM_VCPU_TIMER_CTRL": KVM_ARM_VCPU_TIMER_CTRL,
    "KVM_ARM_VCPU_TIMER_IRQ_VTIMER": KVM_ARM_VCPU_TIMER_IRQ_VTIMER,
    "KVM_ARM_VCPU_TIMER_IRQ_PTIMER": KVM_ARM_VCPU_TIMER_IRQ_PTIMER,
    "DEFAULT_VTIMER_IRQ": DEFAULT_VTIMER_IRQ,
    "DEFAULT_PTIMER_IRQ": DEFAULT_PTIMER_IRQ,
    "MAX_ARM_VCPUS": MAX_VCPUS,
})
attr.named_sets.update({
    # Interrupt ids around every boundary the documents name, PPIs and SPIs more often.
    "pmu_intids": lambda v: (23, 23, 16, 31, 32, 33, 40, 40, 1019, 15, 0, 1020),
    "valid_pmu_intids": lambda v: (23, 23, 24, 32, 33, 40),
    "timer_intids": lambda v: (16, 20, 27, 30, 31, 15, 32, 40, 1019, 0),
    "timer_ppis": lambda v: (20, 27, 30, 27, 30, 31),
    "timer_attrs": lambda v: (KVM_ARM_VCPU_TIMER_IRQ_VTIMER, KVM_ARM_VCPU_TIMER_IRQ_PTIMER),
})

V = Arg("vcpu", "vcpu", doc="index of the vCPU whose fd the ioctl is made on")
GROUP = Arg("group", "int", doc="kvm_device_attr.group, e.g. KVM_ARM_VCPU_TIMER_CTRL")
ATTR = Arg("attr", "int", doc="kvm_device_attr.attr, e.g. KVM_ARM_VCPU_TIMER_IRQ_VTIMER")

attr.op("arm_create_vcpu", [], "int",
        "KVM_CREATE_VCPU: the new vCPU's index, or -EBUSY once the vGIC is initialised, -EINVAL "
        "past MAX_ARM_VCPUS. Its timers take the default interrupt ids.")
attr.op("arm_create_vgic", [], "int",
        "KVM_CREATE_DEVICE(KVM_DEV_TYPE_ARM_VGIC_V3), with its addresses set: 0, -EEXIST if there "
        "is one, -EBUSY once a vCPU has run.")
attr.op("arm_init_vgic", [], "int",
        "KVM_DEV_ARM_VGIC_CTRL_INIT on the vGIC: 0 (also when already initialised), -ENXIO "
        "without a vGIC.")
attr.op("kvm_set_device_attr", [V, GROUP, ATTR,
                                Arg("value", "int", optional=True, default=0,
                                    doc="the int kvm_device_attr.addr points to (unused by INIT)")],
        "int", "KVM_SET_DEVICE_ATTR on the vCPU fd: 0 or -errno.")
attr.op("kvm_get_device_attr", [V, GROUP, ATTR], "int",
        "KVM_GET_DEVICE_ATTR on the vCPU fd: the int read (>= 0) or -errno.")
attr.op("kvm_has_device_attr", [V, GROUP, ATTR], "int",
        "KVM_HAS_DEVICE_ATTR on the vCPU fd: 0 if the vCPU has the attribute, else -ENXIO.")
attr.op("arm_vcpu_run", [V], "int",
        "KVM_RUN of an arm64 vCPU, as far as the configuration goes: the first successful one "
        "initialises a created vGIC if needed and validates the timer and PMU interrupts "
        "(-EINVAL if they collide or the PMU is not initialised); the guest then runs and exits "
        "at once. 0 or -errno.")

# The overridable steps of the bundled backends (arch/arm64/kvm/pmu-emul.c, arch_timer.c, arm.c), each
# called with the VM's configuration lock held; @c is the backend's per-vCPU state.
attr.step("kvm_arm_pmu_v3_set_attr", ("c", "attr", "value"), "int", "kvm_arm_pmu_v3_set_attr()",
          "KVM_SET_DEVICE_ATTR of the PMUv3 group: ENODEV, EBUSY once initialised, then the IRQ "
          "(EINVAL, EBUSY if set) or kvm_arm_pmu_v3_init.")
attr.step("valid_pmu_irq", ("irq",), "bool", "irq_is_ppi() || irq_is_spi() in kvm_arm_pmu_v3_set_attr()",
          "'This interrupt could be a PPI or SPI'.")
attr.step("pmu_irq_is_valid", ("c", "irq"), "bool", "pmu_irq_is_valid()",
          "One type for every vCPU: the same PPI on all, or a distinct SPI per vCPU.")
attr.step("kvm_arm_pmu_v3_init", ("c",), "int", "kvm_arm_pmu_v3_init()",
          "PMU_V3_INIT: after the vGIC is initialised (ENODEV) and the IRQ set (ENXIO).")
attr.step("kvm_arm_pmu_v3_get_attr", ("c", "attr"), "int", "kvm_arm_pmu_v3_get_attr()",
          "KVM_GET_DEVICE_ATTR of the PMUv3 group: the IRQ, or ENXIO, EINVAL, ENODEV.")
attr.step("kvm_arm_timer_set_attr", ("c", "attr", "value"), "int", "kvm_arm_timer_set_attr()",
          "KVM_SET_DEVICE_ATTR of the timer group: EINVAL (no vGIC, not a PPI), EBUSY once "
          "immutable, then every vCPU of timer_set_targets.")
attr.step("timer_ppis_immutable", ("c",), "bool", "KVM_ARCH_FLAG_TIMER_PPIS_IMMUTABLE",
          "'-EBUSY One or more VCPUs has already run'.")
attr.step("valid_timer_irq", ("irq",), "bool", "irq_is_ppi() in kvm_arm_timer_set_attr()",
          "'These must be a PPI (16 <= intid < 32)'.")
attr.step("timer_set_targets", ("c",), "list of vCPUs", "set_timer_irqs() (before 6.4): kvm_for_each_vcpu()",
          "The vCPUs a timer setting configures: 'all VCPUs created at that time'.")
attr.step("kvm_arm_timer_get_attr", ("c", "attr"), "int", "kvm_arm_timer_get_attr()",
          "KVM_GET_DEVICE_ATTR of the timer group: the vCPU's timer IRQ, or ENXIO.")
attr.step("new_vcpu_timer_irqs", (), "(int, int)", "kvm_timer_vcpu_init()",
          "A new vCPU's (vtimer, ptimer) interrupts: the defaults.")
attr.step("kvm_arch_vcpu_run_pid_change", ("c",), "int", "kvm_arch_vcpu_run_pid_change()",
          "A vCPU's first KVM_RUN: the vGIC initialised lazily, timer_irqs_are_valid (EINVAL), the "
          "timers immutable from now on, a PMU initialised (EINVAL).")
attr.step("timer_irqs_are_valid", ("c",), "bool", "timer_irqs_are_valid()",
          "'Setting the same PPI for different timers will prevent the VCPUs from running'.")

attr.observables.update({
    "arm_vcpus": "list of the VM's vCPUs; arm_vcpus[i] has id, pmu_irq (-1 if not set), "
                 "pmu_initialized, vtimer, ptimer (the timer interrupt ids it uses), has_run",
    "vgic_created": "the VM has an in-kernel irqchip (vGIC)",
    "vgic_initialized": "the vGIC is initialised (KVM_DEV_ARM_VGIC_CTRL_INIT, or lazily by the first KVM_RUN)",
    "pmu_supported": "the host supports PMUv3 (machine option pmu)",
    "any_ran": "some KVM_RUN has returned 0",
    "run_attempts": "KVM_RUN calls made so far",
})
