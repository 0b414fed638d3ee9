"""Broken variants of the reference model of locking.rst.

Each class breaks one documented locking rule the way a KVM patch could (an
inverted order, a lock taken in the wrong context, data touched without its
lock) and names the guarantees that must catch it, with the document text it
runs under. The classes are mixins of overrides, composed with a machine by
:func:`machine_class`, so the same broken paths run on the reference model
and on the threaded backend's real locks.
"""

from __future__ import annotations

from typing import Any

from pytest_kvmconf.backends.reference import ReferenceBackend, ReferenceMachine
from pytest_kvmconf.backends.reference.locking import locking_op
from pytest_kvmconf.engine.lockdep import READ, WRITE
from pytest_kvmconf.scheduling import Point

from . import running

#: variant name -> (overrides mixin, guarantee ids that must catch it, document version, what is broken)
VARIANTS: dict[str, tuple[type, tuple[str, ...], str, str]] = {}


def variant(*gids: str, doc: str, version: str = "6.18"):
    def register(cls: type) -> type:
        VARIANTS[cls.__name__] = (cls, gids, version, doc)
        return cls
    return register


def machine_class(name: str, base: type = ReferenceMachine) -> type:
    """The broken variant's overrides on top of a machine: the reference one, or any
    machine with the locking mixin (the threaded backend's), since the overrides are
    paths over the model's lock primitives."""
    return type(f"{name}On{base.__name__}", (VARIANTS[name][0], base), {})


def backend(name: str, base: Any = None) -> Any:
    """A backend (the reference one unless ``base`` is given) running the named broken machine."""
    b = base if base is not None else ReferenceBackend()
    return running(machine_class(name, b.machine_class), f"broken:{name}", b)


@variant("LOCK-01", doc="KVM_CREATE_IRQCHIP sets up the routing (irq_lock) before registering devices (slots_lock)")
class IrqLockOutsideSlotsLock:
    @locking_op
    def kvm_vm_ioctl_create_irqchip(self, ctx):
        yield from self.lock_acquire(ctx, "kvm->lock")
        yield from self.lock_acquire(ctx, "kvm->irq_lock")
        yield from self.lock_acquire(ctx, "kvm->slots_lock")
        yield from self.lock_release(ctx, "kvm->slots_lock")
        yield from self.lock_release(ctx, "kvm->irq_lock")
        yield from self.lock_release(ctx, "kvm->lock")


@variant("LOCK-01", "LOCK-09",
         doc="walking vm_list unknowingly triggers cpus_read_lock() while holding kvm_lock")
class WalkTakesCpusReadLock:
    @locking_op
    def kvm_walk_vm_list(self, ctx):
        yield from self.lock_acquire(ctx, "kvm_lock")
        self.access_data(ctx, "vm_list", False, "list_for_each_entry(kvm, &vm_list, vm_list)")
        yield from self.lock_acquire(ctx, "cpu_hotplug_lock", READ)  # static_call_update() in the loop
        yield from self.lock_release(ctx, "cpu_hotplug_lock", READ)
        yield from self.lock_release(ctx, "kvm_lock")
        return len(self.vm_list)


@variant("LOCK-02", "LOCK-09", version="6.12",
         doc="the CPU-online callback takes kvm_usage_lock inside the CPU hotplug lock (as the first "
             "kvm_usage_lock fix did, before the 6.12 text turned the order around)")
class OnlineCpuTakesUsageLock:
    def kvm_online_cpu(self, ctx, online):
        yield from self.lock_acquire(ctx, "kvm_usage_lock")
        self.access_data(ctx, "kvm_usage_count", False, "if (kvm_usage_count)")
        yield from self.lock_release(ctx, "kvm_usage_lock")


@variant("LOCK-02.a", "LOCK-01", version="6.8",
         doc="hardware_enable_all() takes kvm_lock, then cpus_read_lock() inside it")
class EnableTakesKvmLockFirst:
    def hardware_enable_all(self, ctx):
        yield from self.lock_acquire(ctx, "kvm_lock")
        yield from self.lock_acquire(ctx, "cpu_hotplug_lock", READ)
        self.access_data(ctx, "kvm_usage_count", True, "kvm_usage_count++")
        self.kvm_usage_count += 1
        self.virtualization_enabled = True
        yield from self.lock_release(ctx, "cpu_hotplug_lock", READ)
        yield from self.lock_release(ctx, "kvm_lock")


@variant("LOCK-02.a", version="6.8", doc="kvm_usage_count is counted outside kvm_lock")
class UsageCountOutsideKvmLock:
    def hardware_enable_all(self, ctx):
        yield from self.lock_acquire(ctx, "cpu_hotplug_lock", READ)
        self.access_data(ctx, "kvm_usage_count", True, "kvm_usage_count++")
        self.kvm_usage_count += 1
        yield from self.lock_acquire(ctx, "kvm_lock")
        self.virtualization_enabled = True
        yield from self.lock_release(ctx, "kvm_lock")
        yield from self.lock_release(ctx, "cpu_hotplug_lock", READ)


@variant("LOCK-03", doc="invalidate_range_end() takes kvm->slots_lock to look the range up")
class NotifierTakesSlotsLock:
    @locking_op
    def kvm_mmu_notifier_invalidate_range_end(self, ctx):
        yield from self.lock_acquire(ctx, "kvm->slots_lock")
        yield from self.lock_release(ctx, "kvm->slots_lock")
        yield from super().kvm_mmu_notifier_invalidate_range_end(ctx)


@variant("LOCK-03", doc="a memslot update installs the new array without waiting for mn_active_invalidate_count")
class UpdateIgnoresInvalidations:
    def kvm_swap_active_memslots(self, ctx):
        yield from self.lock_acquire(ctx, "kvm->mn_invalidate_lock")
        self.access_data(ctx, "memslots", True, "rcu_assign_pointer(kvm->memslots[as_id], slots)")
        self.memslots_generation += 1
        yield from self.lock_release(ctx, "kvm->mn_invalidate_lock")


@variant("LOCK-04", "LOCK-09", doc="a vmexit takes kvm->slots_lock inside its kvm->srcu read side")
class VmexitTakesSlotsLock:
    def handle_exit(self, ctx, vcpu):
        yield from self.lock_acquire(ctx, "kvm->slots_lock")
        yield from self.lock_release(ctx, "kvm->slots_lock")
        yield from super().handle_exit(ctx, vcpu)


@variant("LOCK-05", "LOCK-09", doc="a memslot update calls synchronize_srcu() before releasing slots_arch_lock")
class SyncUnderSlotsArchLock:
    @locking_op
    def kvm_set_memory_region(self, ctx):
        yield from self.lock_acquire(ctx, "kvm->slots_lock")
        yield from self.lock_acquire(ctx, "kvm->slots_arch_lock")
        self.access_data(ctx, "memslots", False, "kvm_get_memslots() (the current array)")
        yield from self.kvm_swap_active_memslots(ctx)
        yield from self.synchronize_srcu(ctx)
        yield from self.lock_release(ctx, "kvm->slots_arch_lock")
        yield from self.lock_release(ctx, "kvm->slots_lock")


@variant("LOCK-06", doc="the TDP MMU links a page into tdp_mmu_pages after dropping mmu_lock")
class TdpPagesLockWithoutMmuLock:
    def kvm_tdp_mmu_map(self, ctx):
        yield from self.lock_acquire(ctx, "kvm->mmu_lock", READ)
        self.access_data(ctx, "shadow_pages", True, "tdp_mmu_link_sp()")
        yield from self.lock_release(ctx, "kvm->mmu_lock", READ)
        yield from self.lock_acquire(ctx, "kvm->arch.tdp_mmu_pages_lock")
        yield from self.lock_release(ctx, "kvm->arch.tdp_mmu_pages_lock")


@variant("LOCK-06", "LOCK-09", doc="KVM_XEN_HVM_SET_ATTR takes a vcpu->mutex inside xen_lock to update the vCPUs")
class XenHvmTakesVcpuMutex:
    @locking_op
    def kvm_xen_hvm_set_attr(self, ctx):
        yield from self.lock_acquire(ctx, "kvm->arch.xen.xen_lock")
        yield from self.lock_acquire(ctx, "vcpu->mutex", instance=self.vcpu_mutex(1))
        yield from self.lock_release(ctx, "vcpu->mutex", instance=self.vcpu_mutex(1))
        yield from self.lock_release(ctx, "kvm->arch.xen.xen_lock")


@variant("LOCK-07", doc="invalidate_range_start() zaps under mmu_lock while still holding mn_invalidate_lock")
class NotifierNestsInLeaf:
    @locking_op
    def kvm_mmu_notifier_invalidate_range_start(self, ctx):
        yield from self.lock_acquire(ctx, "kvm->mn_invalidate_lock")
        self.access_data(ctx, "mn_active_invalidate_count", True, "kvm->mn_active_invalidate_count++")
        self.mn_active_invalidate_count += 1
        yield from self.lock_acquire(ctx, "kvm->mmu_lock", WRITE)
        self.access_data(ctx, "shadow_pages", True, "kvm_unmap_gfn_range()")
        yield from self.lock_release(ctx, "kvm->mmu_lock", WRITE)
        yield from self.lock_release(ctx, "kvm->mn_invalidate_lock")
        self.mn_start_generation[ctx.name] = self.memslots_generation


@variant("LOCK-08", version="6.12",
         doc="under the 6.12 text, the CPU-online callback still reads kvm_usage_count under kvm_lock only")
class OnlineCpuReadsCountUnderKvmLock:
    def kvm_online_cpu(self, ctx, online):
        yield from self.lock_acquire(ctx, "kvm_lock")
        self.access_data(ctx, "kvm_usage_count", False, "if (kvm_usage_count)")
        yield from self.lock_release(ctx, "kvm_lock")


@variant("LOCK-08.a", "LOCK-08", version="6.8", doc="vm_list is walked without kvm_lock")
class WalkWithoutKvmLock:
    @locking_op
    def kvm_walk_vm_list(self, ctx):
        self.access_data(ctx, "vm_list", False, "list_for_each_entry(kvm, &vm_list, vm_list)")
        yield Point("list_for_each_entry(kvm, &vm_list, vm_list)")
        return len(self.vm_list)


@variant("LOCK-08", doc="a vmexit looks the memslots up after srcu_read_unlock()")
class MemslotsReadOutsideSrcu:
    @locking_op
    def kvm_vcpu_ioctl_run(self, ctx, vcpu):
        yield from super().kvm_vcpu_ioctl_run(ctx, vcpu=vcpu)
        self.access_data(ctx, "memslots", False, "kvm_vcpu_gfn_to_memslot() after srcu_read_unlock()")
        yield Point("kvm_vcpu_gfn_to_memslot()")


@variant("LOCK-09",
         doc="a vCPU ioctl takes kvm->lock inside vcpu->mutex: AB-BA against KVM_CREATE_VCPU")
class TscSyncTakesKvmLock:
    @locking_op
    def kvm_synchronize_tsc(self, ctx, vcpu):
        yield from self.lock_acquire(ctx, "vcpu->mutex", instance=self.vcpu_mutex(vcpu))
        yield from self.lock_acquire(ctx, "kvm->lock")
        self.access_data(ctx, "kvm->arch.last_tsc_write", True, "kvm->arch.last_tsc_write = data")
        yield from self.lock_release(ctx, "kvm->lock")
        yield from self.lock_release(ctx, "vcpu->mutex", instance=self.vcpu_mutex(vcpu))


@variant("LOCK-01", doc="a memslot update takes kvm->lock inside kvm->slots_lock (e.g. to update every vCPU)")
class MemslotUpdateTakesKvmLock:
    @locking_op
    def kvm_set_memory_region(self, ctx):
        yield from self.lock_acquire(ctx, "kvm->slots_lock")
        yield from self.lock_acquire(ctx, "kvm->lock")
        yield from self.lock_release(ctx, "kvm->lock")
        yield from self.lock_release(ctx, "kvm->slots_lock")


@variant("LOCK-07", doc="kvm_synchronize_tsc() takes kvm->mmu_lock inside the raw tsc_write_lock")
class TscSyncNestsInLeaf:
    @locking_op
    def kvm_synchronize_tsc(self, ctx, vcpu):
        yield from self.lock_acquire(ctx, "vcpu->mutex", instance=self.vcpu_mutex(vcpu))
        yield from self.lock_acquire(ctx, "kvm->arch.tsc_write_lock")
        self.access_data(ctx, "kvm->arch.last_tsc_write", True, "kvm->arch.last_tsc_write = data")
        yield from self.lock_acquire(ctx, "kvm->mmu_lock", WRITE)
        yield from self.lock_release(ctx, "kvm->mmu_lock", WRITE)
        yield from self.lock_release(ctx, "kvm->arch.tsc_write_lock")
        yield from self.lock_release(ctx, "vcpu->mutex", instance=self.vcpu_mutex(vcpu))
