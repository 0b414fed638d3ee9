"""devices/vcpu.rst as a concurrent program: arm64 vCPU attributes set from real OS threads.

Any VMM thread may make these ioctls. As in KVM, the VM's configuration is
guarded by one mutex (kvm->arch.config_lock / kvm->lock): each ioctl takes it,
checks and changes the configuration, drops it, then reaches a scheduling
point, so ioctls from several threads interleave whole. The error rules are
those of :mod:`..reference.attr` (the document's tables, with the kernel's
order where the document gives none), written here over the VM's own structs.
"""

from __future__ import annotations

import threading
from typing import Any

from ...backend import MachineConfig, ThreadContext
from ...facets.attr import (
    DEFAULT_PTIMER_IRQ,
    DEFAULT_VTIMER_IRQ,
    EBADF,
    EBUSY,
    EEXIST,
    EINVAL,
    ENODEV,
    ENXIO,
    KVM_ARM_VCPU_PMU_V3_CTRL,
    KVM_ARM_VCPU_PMU_V3_INIT,
    KVM_ARM_VCPU_PMU_V3_IRQ,
    KVM_ARM_VCPU_TIMER_CTRL,
    KVM_ARM_VCPU_TIMER_IRQ_PTIMER,
    KVM_ARM_VCPU_TIMER_IRQ_VTIMER,
    MAX_VCPUS,
    attr_name,
    is_ppi,
    is_spi,
)
from ...scheduling import point
from ..reference.attr import shown


class ArmVcpuState:
    """struct kvm_vcpu's arch parts these attributes touch."""

    def __init__(self, vcpu_id: int):
        self.id = vcpu_id
        self.timer_irq = {KVM_ARM_VCPU_TIMER_IRQ_VTIMER: DEFAULT_VTIMER_IRQ,
                          KVM_ARM_VCPU_TIMER_IRQ_PTIMER: DEFAULT_PTIMER_IRQ}
        self.pmu_irq_num = -1
        self.pmu_created = False
        self.has_run_once = False


class AttrThreads:
    """Facet mixin: attr."""

    def init_attr(self, config: MachineConfig) -> None:
        self.config_lock = threading.Lock()
        self.arm_pmu = bool(config.options.get("pmu", True))
        self.arm_vcpu_states = [ArmVcpuState(i) for i in range(config.vcpus)]
        self.arm_vgic_created = False
        self.arm_vgic_ready = False
        self.arm_timer_ppis_immutable = False
        self.arm_ran_once = False
        self.arm_run_attempts = 0

    def observe_attr(self) -> dict[str, Any]:
        return {
            "arm_vcpus": [{"id": c.id, "pmu_irq": c.pmu_irq_num, "pmu_initialized": c.pmu_created,
                           "vtimer": c.timer_irq[KVM_ARM_VCPU_TIMER_IRQ_VTIMER],
                           "ptimer": c.timer_irq[KVM_ARM_VCPU_TIMER_IRQ_PTIMER],
                           "has_run": c.has_run_once}
                          for c in list(self.arm_vcpu_states)],
            "vgic_created": self.arm_vgic_created,
            "vgic_initialized": self.arm_vgic_ready,
            "pmu_supported": self.arm_pmu,
            "any_ran": self.arm_ran_once,
            "run_attempts": self.arm_run_attempts,
        }

    def arm_ioctl_done(self, text: str, ret: int) -> int:
        point(f"{text} = {shown(ret)}")
        return ret

    def arm_vcpu_state(self, vcpu: int) -> ArmVcpuState | None:
        states = self.arm_vcpu_states
        return states[vcpu] if 0 <= vcpu < len(states) else None

    # -- VM ioctls --------------------------------------------------------------------
    def arm_create_vcpu(self, ctx: ThreadContext) -> int:
        with self.config_lock:
            if len(self.arm_vcpu_states) >= MAX_VCPUS:
                ret = -EINVAL
            elif self.arm_vgic_ready:
                ret = -EBUSY
            else:
                ret = len(self.arm_vcpu_states)
                self.arm_vcpu_states.append(ArmVcpuState(ret))
        return self.arm_ioctl_done("KVM_CREATE_VCPU", ret)

    def arm_create_vgic(self, ctx: ThreadContext) -> int:
        with self.config_lock:
            if self.arm_vgic_created:
                ret = -EEXIST
            elif any(c.has_run_once for c in self.arm_vcpu_states):
                ret = -EBUSY
            else:
                self.arm_vgic_created = True
                ret = 0
        return self.arm_ioctl_done("KVM_CREATE_DEVICE(VGIC_V3)", ret)

    def arm_init_vgic(self, ctx: ThreadContext) -> int:
        with self.config_lock:
            ret = 0 if self.arm_vgic_created else -ENXIO
            if ret == 0:
                self.arm_vgic_ready = True
        return self.arm_ioctl_done("KVM_DEV_ARM_VGIC_CTRL_INIT", ret)

    # -- vCPU attribute ioctls --------------------------------------------------------
    def kvm_set_device_attr(self, ctx: ThreadContext, vcpu: int, group: int, attr: int,
                            value: int = 0) -> int:
        with self.config_lock:
            c = self.arm_vcpu_state(vcpu)
            if c is None:
                ret = -EBADF
            elif group == KVM_ARM_VCPU_PMU_V3_CTRL:
                ret = self.arm_pmu_set_attr(c, attr, value)
            elif group == KVM_ARM_VCPU_TIMER_CTRL:
                ret = self.arm_timer_set_attr(attr, value)
            else:
                ret = -ENXIO
        return self.arm_ioctl_done(f"vcpu{vcpu}: KVM_SET_DEVICE_ATTR({attr_name(group, attr)}, {value})", ret)

    def kvm_get_device_attr(self, ctx: ThreadContext, vcpu: int, group: int, attr: int) -> int:
        with self.config_lock:
            c = self.arm_vcpu_state(vcpu)
            if c is None:
                ret = -EBADF
            elif group == KVM_ARM_VCPU_PMU_V3_CTRL:
                if attr != KVM_ARM_VCPU_PMU_V3_IRQ:
                    ret = -ENXIO
                elif not self.arm_vgic_created:
                    ret = -EINVAL
                elif not self.arm_pmu:
                    ret = -ENODEV
                else:
                    ret = c.pmu_irq_num if c.pmu_irq_num >= 0 else -ENXIO
            elif group == KVM_ARM_VCPU_TIMER_CTRL:
                ret = c.timer_irq.get(attr, -ENXIO)
            else:
                ret = -ENXIO
        return self.arm_ioctl_done(f"vcpu{vcpu}: KVM_GET_DEVICE_ATTR({attr_name(group, attr)})", ret)

    def kvm_has_device_attr(self, ctx: ThreadContext, vcpu: int, group: int, attr: int) -> int:
        c = self.arm_vcpu_state(vcpu)
        if c is None:
            ret = -EBADF
        elif group == KVM_ARM_VCPU_PMU_V3_CTRL:
            ret = 0 if self.arm_pmu and attr in (KVM_ARM_VCPU_PMU_V3_IRQ, KVM_ARM_VCPU_PMU_V3_INIT) \
                else -ENXIO
        elif group == KVM_ARM_VCPU_TIMER_CTRL:
            ret = 0 if attr in c.timer_irq else -ENXIO
        else:
            ret = -ENXIO
        return self.arm_ioctl_done(f"vcpu{vcpu}: KVM_HAS_DEVICE_ATTR({attr_name(group, attr)})", ret)

    def arm_pmu_set_attr(self, c: ArmVcpuState, attr: int, irq: int) -> int:
        """kvm_arm_pmu_v3_set_attr(), config_lock held."""
        if not self.arm_pmu:
            return -ENODEV
        if c.pmu_created:
            return -EBUSY
        if attr == KVM_ARM_VCPU_PMU_V3_INIT:
            if self.arm_vgic_created:
                if not self.arm_vgic_ready:
                    return -ENODEV
                if c.pmu_irq_num < 0:
                    return -ENXIO
            c.pmu_created = True
            return 0
        if attr != KVM_ARM_VCPU_PMU_V3_IRQ:
            return -ENXIO
        if not self.arm_vgic_created or not (is_ppi(irq) or is_spi(irq)):
            return -EINVAL
        for other in self.arm_vcpu_states:  # pmu_irq_is_valid(), against the other vCPUs
            if other is c or other.pmu_irq_num < 0:
                continue
            if is_ppi(irq) and other.pmu_irq_num != irq:
                return -EINVAL
            if is_spi(irq) and (not is_spi(other.pmu_irq_num) or other.pmu_irq_num == irq):
                return -EINVAL
        if c.pmu_irq_num >= 0:
            return -EBUSY
        c.pmu_irq_num = irq
        return 0

    def arm_timer_set_attr(self, attr: int, irq: int) -> int:
        """kvm_arm_timer_set_attr(), config_lock held: every vCPU existing now."""
        if not self.arm_vgic_created or not is_ppi(irq):
            return -EINVAL
        if self.arm_timer_ppis_immutable:
            return -EBUSY
        if attr not in (KVM_ARM_VCPU_TIMER_IRQ_VTIMER, KVM_ARM_VCPU_TIMER_IRQ_PTIMER):
            return -ENXIO
        for c in self.arm_vcpu_states:
            c.timer_irq[attr] = irq
        return 0

    # -- KVM_RUN ------------------------------------------------------------------------
    def arm_vcpu_run(self, ctx: ThreadContext, vcpu: int) -> int:
        with self.config_lock:
            c = self.arm_vcpu_state(vcpu)
            if c is None:
                ret = -EBADF
            else:
                self.arm_run_attempts += 1
                ret = 0 if c.has_run_once else self.arm_first_run(c)
                if ret == 0:
                    c.has_run_once = True
                    self.arm_ran_once = True
        return self.arm_ioctl_done(f"vcpu{vcpu}: KVM_RUN", ret)

    def arm_first_run(self, c: ArmVcpuState) -> int:
        """kvm_arch_vcpu_run_pid_change(), config_lock held."""
        if self.arm_vgic_created:
            self.arm_vgic_ready = True
            vtimer = c.timer_irq[KVM_ARM_VCPU_TIMER_IRQ_VTIMER]
            if vtimer == c.timer_irq[KVM_ARM_VCPU_TIMER_IRQ_PTIMER]:
                return -EINVAL
            self.arm_timer_ppis_immutable = True
        if self.arm_pmu and not c.pmu_created:
            return -EINVAL
        return 0
