"""devices/vcpu.rst as a concurrent program: arm64 vCPU attributes set from real OS threads.

Any VMM thread may make these ioctls. As in KVM, the VM's configuration is
guarded by one mutex (kvm->arch.config_lock / kvm->lock): each ioctl takes it,
checks and changes the configuration, drops it, then reaches a scheduling
point, so ioctls from several threads interleave whole. The error rules are
those of :mod:`..reference.attr` (the document's tables, with the kernel's
order where the document gives none), written here over the VM's own structs,
as the same steps (the facet's vocabulary, :mod:`pytest_kvmconf.facets.attr`).
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

    def __init__(self, vcpu_id: int, vtimer: int, ptimer: int):
        self.id = vcpu_id
        self.timer_irq = {KVM_ARM_VCPU_TIMER_IRQ_VTIMER: vtimer, KVM_ARM_VCPU_TIMER_IRQ_PTIMER: ptimer}
        self.pmu_irq_num = -1
        self.pmu_created = False
        self.has_run_once = False


class AttrThreads:
    """Facet mixin: attr."""

    def init_attr(self, config: MachineConfig) -> None:
        self.config_lock = threading.Lock()
        self.arm_pmu = bool(config.options.get("pmu", True))
        self.arm_vcpu_states = [ArmVcpuState(i, *self.new_vcpu_timer_irqs()) for i in range(config.vcpus)]
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

    def _ioctl(self, text: str, ret: int) -> int:
        point(f"{text} = {shown(ret)}")
        return ret

    def _vcpu(self, vcpu: int) -> ArmVcpuState | None:
        states = self.arm_vcpu_states
        return states[vcpu] if 0 <= vcpu < len(states) else None

    def new_vcpu_timer_irqs(self) -> tuple[int, int]:
        """The defaults: a setting made before the vCPU existed was for "all VCPUs created at that time"."""
        return DEFAULT_VTIMER_IRQ, DEFAULT_PTIMER_IRQ

    # -- VM ioctls --------------------------------------------------------------------
    def arm_create_vcpu(self, ctx: ThreadContext) -> int:
        with self.config_lock:
            if len(self.arm_vcpu_states) >= MAX_VCPUS:
                ret = -EINVAL
            elif self.arm_vgic_ready:
                ret = -EBUSY
            else:
                ret = len(self.arm_vcpu_states)
                self.arm_vcpu_states.append(ArmVcpuState(ret, *self.new_vcpu_timer_irqs()))
        return self._ioctl("KVM_CREATE_VCPU", ret)

    def arm_create_vgic(self, ctx: ThreadContext) -> int:
        with self.config_lock:
            if self.arm_vgic_created:
                ret = -EEXIST
            elif any(c.has_run_once for c in self.arm_vcpu_states):
                ret = -EBUSY
            else:
                self.arm_vgic_created = True
                ret = 0
        return self._ioctl("KVM_CREATE_DEVICE(VGIC_V3)", ret)

    def arm_init_vgic(self, ctx: ThreadContext) -> int:
        with self.config_lock:
            ret = 0 if self.arm_vgic_created else -ENXIO
            if ret == 0:
                self.arm_vgic_ready = True
        return self._ioctl("KVM_DEV_ARM_VGIC_CTRL_INIT", ret)

    # -- vCPU attribute ioctls --------------------------------------------------------
    def kvm_set_device_attr(self, ctx: ThreadContext, vcpu: int, group: int, attr: int,
                            value: int = 0) -> int:
        with self.config_lock:
            c = self._vcpu(vcpu)
            if c is None:
                ret = -EBADF
            elif group == KVM_ARM_VCPU_PMU_V3_CTRL:
                ret = self.kvm_arm_pmu_v3_set_attr(c, attr, value)
            elif group == KVM_ARM_VCPU_TIMER_CTRL:
                ret = self.kvm_arm_timer_set_attr(c, attr, value)
            else:
                ret = -ENXIO
        return self._ioctl(f"vcpu{vcpu}: KVM_SET_DEVICE_ATTR({attr_name(group, attr)}, {value})", ret)

    def kvm_get_device_attr(self, ctx: ThreadContext, vcpu: int, group: int, attr: int) -> int:
        with self.config_lock:
            c = self._vcpu(vcpu)
            if c is None:
                ret = -EBADF
            elif group == KVM_ARM_VCPU_PMU_V3_CTRL:
                ret = self.kvm_arm_pmu_v3_get_attr(c, attr)
            elif group == KVM_ARM_VCPU_TIMER_CTRL:
                ret = self.kvm_arm_timer_get_attr(c, attr)
            else:
                ret = -ENXIO
        return self._ioctl(f"vcpu{vcpu}: KVM_GET_DEVICE_ATTR({attr_name(group, attr)})", ret)

    def kvm_has_device_attr(self, ctx: ThreadContext, vcpu: int, group: int, attr: int) -> int:
        c = self._vcpu(vcpu)
        if c is None:
            ret = -EBADF
        elif group == KVM_ARM_VCPU_PMU_V3_CTRL:
            ret = 0 if self.arm_pmu and attr in (KVM_ARM_VCPU_PMU_V3_IRQ, KVM_ARM_VCPU_PMU_V3_INIT) \
                else -ENXIO
        elif group == KVM_ARM_VCPU_TIMER_CTRL:
            ret = 0 if attr in c.timer_irq else -ENXIO
        else:
            ret = -ENXIO
        return self._ioctl(f"vcpu{vcpu}: KVM_HAS_DEVICE_ATTR({attr_name(group, attr)})", ret)

    # -- the PMUv3 group (config_lock held) ---------------------------------------------
    def kvm_arm_pmu_v3_set_attr(self, c: ArmVcpuState, attr: int, value: int) -> int:
        if not self.arm_pmu:
            return -ENODEV
        if c.pmu_created:
            return -EBUSY
        if attr == KVM_ARM_VCPU_PMU_V3_INIT:
            return self.kvm_arm_pmu_v3_init(c)
        if attr != KVM_ARM_VCPU_PMU_V3_IRQ:
            return -ENXIO
        if not self.arm_vgic_created or not self.valid_pmu_irq(value) or not self.pmu_irq_is_valid(c, value):
            return -EINVAL
        if c.pmu_irq_num >= 0:
            return -EBUSY
        c.pmu_irq_num = value
        return 0

    def valid_pmu_irq(self, irq: int) -> bool:
        return is_ppi(irq) or is_spi(irq)

    def pmu_irq_is_valid(self, c: ArmVcpuState, irq: int) -> bool:
        """One type for every vCPU: the same PPI on all, or a distinct SPI per vCPU."""
        for other in self.arm_vcpu_states:
            if other is c or other.pmu_irq_num < 0:
                continue
            if is_ppi(irq) and other.pmu_irq_num != irq:
                return False
            if is_spi(irq) and (not is_spi(other.pmu_irq_num) or other.pmu_irq_num == irq):
                return False
        return True

    def kvm_arm_pmu_v3_init(self, c: ArmVcpuState) -> int:
        if self.arm_vgic_created:
            if not self.arm_vgic_ready:
                return -ENODEV
            if c.pmu_irq_num < 0:
                return -ENXIO
        c.pmu_created = True
        return 0

    def kvm_arm_pmu_v3_get_attr(self, c: ArmVcpuState, attr: int) -> int:
        if attr != KVM_ARM_VCPU_PMU_V3_IRQ:
            return -ENXIO
        if not self.arm_vgic_created:
            return -EINVAL
        if not self.arm_pmu:
            return -ENODEV
        return c.pmu_irq_num if c.pmu_irq_num >= 0 else -ENXIO

    # -- the timer group (config_lock held) ----------------------------------------------
    def kvm_arm_timer_set_attr(self, c: ArmVcpuState, attr: int, value: int) -> int:
        if not self.arm_vgic_created or not self.valid_timer_irq(value):
            return -EINVAL
        if self.timer_ppis_immutable(c):
            return -EBUSY
        if attr not in (KVM_ARM_VCPU_TIMER_IRQ_VTIMER, KVM_ARM_VCPU_TIMER_IRQ_PTIMER):
            return -ENXIO
        for target in self.timer_set_targets(c):
            target.timer_irq[attr] = value
        return 0

    def timer_ppis_immutable(self, c: ArmVcpuState) -> bool:
        return self.arm_timer_ppis_immutable

    def valid_timer_irq(self, irq: int) -> bool:
        return is_ppi(irq)

    def timer_set_targets(self, c: ArmVcpuState) -> list[ArmVcpuState]:
        """Every vCPU existing now."""
        return list(self.arm_vcpu_states)

    def kvm_arm_timer_get_attr(self, c: ArmVcpuState, attr: int) -> int:
        return c.timer_irq.get(attr, -ENXIO)

    # -- KVM_RUN ------------------------------------------------------------------------
    def arm_vcpu_run(self, ctx: ThreadContext, vcpu: int) -> int:
        with self.config_lock:
            c = self._vcpu(vcpu)
            if c is None:
                ret = -EBADF
            else:
                self.arm_run_attempts += 1
                ret = 0 if c.has_run_once else self.kvm_arch_vcpu_run_pid_change(c)
                if ret == 0:
                    c.has_run_once = True
                    self.arm_ran_once = True
        return self._ioctl(f"vcpu{vcpu}: KVM_RUN", ret)

    def kvm_arch_vcpu_run_pid_change(self, c: ArmVcpuState) -> int:
        """config_lock held."""
        if self.arm_vgic_created:
            self.arm_vgic_ready = True
            if not self.timer_irqs_are_valid(c):
                return -EINVAL
            self.arm_timer_ppis_immutable = True
        if self.arm_pmu and not c.pmu_created:
            return -EINVAL
        return 0

    def timer_irqs_are_valid(self, c: ArmVcpuState) -> bool:
        return c.timer_irq[KVM_ARM_VCPU_TIMER_IRQ_VTIMER] != c.timer_irq[KVM_ARM_VCPU_TIMER_IRQ_PTIMER]
