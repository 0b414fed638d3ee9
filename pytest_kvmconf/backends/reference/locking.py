"""Model of locking.rst: KVM paths taking instrumented locks in the documented orders.

Every lock is taken through :meth:`LockingModel.lock_acquire` and released through
:meth:`LockingModel.lock_release`, which record the acquisition with the locks held
(:class:`~pytest_kvmconf.engine.lockdep.LockRecorder`) and yield a scheduling
point; a contended lock is a ``Wait``, so two paths taking locks in opposite
orders really deadlock when the engine interleaves them so. The SRCU is
modelled with its grace periods: ``synchronize_srcu()`` waits for the read-side
sections that began before it.

Which text is modelled follows ``--kvm-doc-version``: before 6.12, kvm_lock
protects kvm_usage_count and is taken inside cpus_read_lock(); from 6.12,
kvm_usage_lock protects it and is taken outside cpus_read_lock().

Each path is a method named after the kernel function, so a broken variant
overrides exactly one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator
from typing import Any

from ...backend import MachineConfig, ThreadContext
from ...engine.lockdep import READ, SRCU, WRITE, LockRecorder
from ...facets.locking import LOCKS
from ...scheduling import Point, Wait
from ...spec.versions import parse_version

Steps = Generator[Point | Wait, None, Any]

_LOCK_FN = {"mutex": "mutex_lock", "spinlock": "spin_lock", "raw_spinlock": "raw_spin_lock"}
_UNLOCK_FN = {"mutex": "mutex_unlock", "spinlock": "spin_unlock", "raw_spinlock": "raw_spin_unlock"}


def lock_label(kind: str, instance: str, mode: str, release: bool) -> str:
    """The kernel call that takes or releases a lock, for timelines and lockdep reports."""
    if kind == "rwsem":  # cpu_hotplug_lock
        side = "read" if mode == READ else "write"
        return f"cpus_{side}_{'unlock' if release else 'lock'}()"
    if kind == "rwlock":
        return f"{'read' if mode == READ else 'write'}_{'unlock' if release else 'lock'}(&{instance})"
    fn = (_UNLOCK_FN if release else _LOCK_FN)[kind]
    return f"{fn}(&{instance})"


class ModelLock:
    """A sleeping or spinning lock of the model: one writer, or readers (rwlock/rwsem)."""

    def __init__(self, kind: str):
        self.kind = kind
        self.writer: str | None = None
        self.readers: list[str] = []

    def free_for(self, mode: str) -> bool:
        if self.writer is not None:
            return False
        return (mode == READ and self.kind in ("rwlock", "rwsem")) or not self.readers

    def try_take(self, thread: str, mode: str) -> bool:
        """Take the lock if it is free for ``mode``; the generator model runs one thread at a time."""
        if not self.free_for(mode):
            return False
        self.take(thread, mode)
        return True

    def take(self, thread: str, mode: str) -> None:
        if mode == READ and self.kind in ("rwlock", "rwsem"):
            self.readers.append(thread)
        else:
            self.writer = thread

    def drop(self, thread: str, mode: str) -> None:
        if mode == READ and self.kind in ("rwlock", "rwsem"):
            self.readers.remove(thread)
        elif self.writer == thread:
            self.writer = None
        else:
            raise RuntimeError(f"{thread} releases a lock held by {self.writer}")


def locking_op(fn: Callable[..., Steps]) -> Callable[..., Steps]:
    """Mark a method as an operation: its acquisitions are recorded under its name, and
    the machine runs its path (:meth:`LockingModel._run_path`)."""

    @functools.wraps(fn)
    def op(self: LockingModel, ctx: ThreadContext, **args: Any) -> Any:
        self.lk_op[ctx.name] = fn.__name__
        return self._run_path(ctx, fn(self, ctx, **args))

    op.__locking_op__ = True  # type: ignore[attr-defined]
    return op


class LockingModel:
    """Facet mixin: locking."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # An override of a locking operation is a locking operation too: @locking_op is applied
        # to it here, so a broken variant that forgets it still records its acquisitions under
        # the operation's name (without it lockdep would see no operation at all).
        super().__init_subclass__(**kwargs)
        for name, value in list(vars(cls).items()):
            if not callable(value) or getattr(value, "__locking_op__", False):
                continue
            inherited = next((vars(b)[name] for b in cls.__mro__[1:] if name in vars(b)), None)
            if getattr(inherited, "__locking_op__", False):
                setattr(cls, name, locking_op(value))

    # -- state and observation ------------------------------------------------
    def init_locking(self, config: MachineConfig) -> None:
        self.lockdep = LockRecorder()
        #: 6.12 text: kvm_usage_lock, taken outside cpus_read_lock().
        self.usage_lock_text = parse_version(config.doc_version) >= (6, 12)
        self.lk_locks: dict[str, ModelLock] = {}
        self.lk_op: dict[str, str] = {}
        self.srcu_active: dict[int, str] = {}  # read-side section id -> thread
        self.srcu_nested: dict[str, list[int]] = {}
        self.srcu_next = 0
        self.vm_list: list[int] = []
        self.next_vm = 1
        self.kvm_usage_count = 0
        self.virtualization_enabled = False
        self.mn_active_invalidate_count = 0
        self.memslots_generation = 0
        self.mn_start_generation: dict[str, int] = {}
        self.mn_pairs: list[tuple[int, int]] = []

    def observe_locking(self) -> dict[str, Any]:
        return {
            **self.lockdep.view(),
            "vm_list": tuple(self.vm_list),
            "kvm_usage_count": self.kvm_usage_count,
            "virtualization_enabled": self.virtualization_enabled,
            "mn_active_invalidate_count": self.mn_active_invalidate_count,
            "memslots_generation": self.memslots_generation,
            "mn_pairs": tuple(self.mn_pairs),
        }

    def _run_path(self, ctx: ThreadContext, steps: Steps) -> Any:
        """The generator engine drives the path itself; a thread backend runs it here."""
        return steps

    # -- instrumented locks ---------------------------------------------------
    def lock_acquire(self, ctx: ThreadContext, name: str, mode: str = WRITE, instance: str | None = None) -> Steps:
        """Take lock class ``name`` (instance ``instance``): wait while contended, record, point."""
        inst = instance or name
        kind = LOCKS[name][0]
        lk = self._lock_object(inst, kind)
        label = lock_label(kind, inst, mode, release=False)
        while not lk.try_take(ctx.name, mode):
            holder = lk.writer or ", ".join(lk.readers)
            yield from self._wait(f"{label} waits for {holder}", lambda: lk.free_for(mode), inst)
        self.lockdep.acquired(ctx.name, self.lk_op.get(ctx.name, "?"), name, mode, label)
        yield Point(label)

    def _lock_object(self, instance: str, kind: str) -> ModelLock:
        return self.lk_locks.setdefault(instance, ModelLock(kind))

    def _wait(self, label: str, until: Callable[[], bool], channel: str) -> Steps:
        """Block until ``until()``; ``channel`` names the lock whose release can make it true."""
        yield Wait(label, until)

    def lock_release(self, ctx: ThreadContext, name: str, mode: str = WRITE, instance: str | None = None) -> Steps:
        inst = instance or name
        lk = self.lk_locks[inst]
        lk.drop(ctx.name, mode)
        self.lockdep.released(ctx.name, name)
        yield Point(lock_label(lk.kind, inst, mode, release=True))

    def srcu_read_lock(self, ctx: ThreadContext) -> Steps:
        self.srcu_next += 1
        self.srcu_active[self.srcu_next] = ctx.name
        self.srcu_nested.setdefault(ctx.name, []).append(self.srcu_next)
        label = f"srcu_read_lock(&{SRCU})"
        self.lockdep.acquired(ctx.name, self.lk_op.get(ctx.name, "?"), SRCU, READ, label)
        yield Point(label)

    def srcu_read_unlock(self, ctx: ThreadContext) -> Steps:
        del self.srcu_active[self.srcu_nested[ctx.name].pop()]
        self.lockdep.released(ctx.name, SRCU)
        yield Point(f"srcu_read_unlock(&{SRCU})")

    def synchronize_srcu(self, ctx: ThreadContext) -> Steps:
        """Wait for the read-side sections that began before the call (a grace period)."""
        label = f"synchronize_srcu(&{SRCU})"
        self.lockdep.synchronized(ctx.name, self.lk_op.get(ctx.name, "?"), SRCU, label)
        before = set(self.srcu_active)
        if not before:
            yield Point(label)
            return
        yield from self._wait(f"{label} waits for readers", lambda: not before & self.srcu_active.keys(), SRCU)
        yield Point(f"{label} returns")

    def access_data(self, ctx: ThreadContext, data: str, write: bool, label: str) -> None:
        self.lockdep.accessed(ctx.name, self.lk_op.get(ctx.name, "?"), data, write, label)

    def vcpu_mutex(self, vcpu: int) -> str:
        return f"vcpu{vcpu}->mutex"

    # -- VMs, hardware enabling, CPU hotplug ------------------------------------
    @locking_op
    def kvm_create_vm(self, ctx: ThreadContext) -> Steps:
        if self.usage_lock_text:
            yield from self.kvm_enable_virtualization(ctx)
        else:
            yield from self.hardware_enable_all(ctx)
        vm = self.next_vm
        self.next_vm += 1
        yield from self.lock_acquire(ctx, "kvm_lock")
        self.access_data(ctx, "vm_list", True, f"list_add(&kvm{vm}->vm_list, &vm_list)")
        self.vm_list.append(vm)
        yield from self.lock_release(ctx, "kvm_lock")
        return vm

    @locking_op
    def kvm_destroy_vm(self, ctx: ThreadContext) -> Steps:
        yield from self.lock_acquire(ctx, "kvm_lock")
        self.access_data(ctx, "vm_list", True, "list_del(&kvm->vm_list)")
        removed = self.vm_list.pop() if self.vm_list else None
        yield from self.lock_release(ctx, "kvm_lock")
        if removed is not None:
            if self.usage_lock_text:
                yield from self.kvm_disable_virtualization(ctx)
            else:
                yield from self.hardware_disable_all(ctx)

    def hardware_enable_all(self, ctx: ThreadContext) -> Steps:
        """6.8 text: cpus_read_lock() outside kvm_lock, which protects kvm_usage_count."""
        yield from self.lock_acquire(ctx, "cpu_hotplug_lock", READ)
        yield from self.lock_acquire(ctx, "kvm_lock")
        self.access_data(ctx, "kvm_usage_count", True, "kvm_usage_count++")
        self.kvm_usage_count += 1
        self.virtualization_enabled = True
        yield from self.lock_release(ctx, "kvm_lock")
        yield from self.lock_release(ctx, "cpu_hotplug_lock", READ)

    def hardware_disable_all(self, ctx: ThreadContext) -> Steps:
        yield from self.lock_acquire(ctx, "cpu_hotplug_lock", READ)
        yield from self.lock_acquire(ctx, "kvm_lock")
        self.access_data(ctx, "kvm_usage_count", True, "kvm_usage_count--")
        self.kvm_usage_count -= 1
        self.virtualization_enabled = self.kvm_usage_count > 0
        yield from self.lock_release(ctx, "kvm_lock")
        yield from self.lock_release(ctx, "cpu_hotplug_lock", READ)

    def kvm_enable_virtualization(self, ctx: ThreadContext) -> Steps:
        """6.12 text: kvm_usage_lock protects kvm_usage_count; cpuhp_setup_state() takes
        cpus_read_lock() inside it."""
        yield from self.lock_acquire(ctx, "kvm_usage_lock")
        self.access_data(ctx, "kvm_usage_count", True, "kvm_usage_count++")
        self.kvm_usage_count += 1
        if self.kvm_usage_count == 1:
            yield from self.lock_acquire(ctx, "cpu_hotplug_lock", READ)
            self.virtualization_enabled = True
            yield from self.lock_release(ctx, "cpu_hotplug_lock", READ)
        yield from self.lock_release(ctx, "kvm_usage_lock")

    def kvm_disable_virtualization(self, ctx: ThreadContext) -> Steps:
        yield from self.lock_acquire(ctx, "kvm_usage_lock")
        self.access_data(ctx, "kvm_usage_count", True, "kvm_usage_count--")
        self.kvm_usage_count -= 1
        if self.kvm_usage_count == 0:
            yield from self.lock_acquire(ctx, "cpu_hotplug_lock", READ)  # cpuhp_remove_state()
            self.virtualization_enabled = False
            yield from self.lock_release(ctx, "cpu_hotplug_lock", READ)
        yield from self.lock_release(ctx, "kvm_usage_lock")

    @locking_op
    def cpu_hotplug(self, ctx: ThreadContext, online: bool = True) -> Steps:
        yield from self.lock_acquire(ctx, "cpu_hotplug_lock", WRITE)
        yield from self.kvm_online_cpu(ctx, online)
        yield from self.lock_release(ctx, "cpu_hotplug_lock", WRITE)

    def kvm_online_cpu(self, ctx: ThreadContext, online: bool) -> Steps:
        what = "enable" if online else "disable"
        if self.usage_lock_text:
            # 6.12: the callback exists only while kvm_usage_count > 0 (cpuhp_setup_state
            # under kvm_usage_lock), so it reads no count and takes no KVM lock.
            yield Point(f"kvm_{'online' if online else 'offline'}_cpu(): {what} virtualization on the CPU")
            return
        yield from self.lock_acquire(ctx, "kvm_lock")
        self.access_data(ctx, "kvm_usage_count", False, "if (kvm_usage_count)")
        yield from self.lock_release(ctx, "kvm_lock")

    @locking_op
    def kvm_walk_vm_list(self, ctx: ThreadContext) -> Steps:
        yield from self.lock_acquire(ctx, "kvm_lock")
        self.access_data(ctx, "vm_list", False, "list_for_each_entry(kvm, &vm_list, vm_list)")
        n = len(self.vm_list)
        yield from self.lock_release(ctx, "kvm_lock")
        return n

    @locking_op
    def kvmclock_cpufreq_notifier(self, ctx: ThreadContext) -> Steps:
        # The vendor_module_lock comment of locking.rst: kvm_lock taken in a notifier
        # invoked with cpu_hotplug_lock held.
        yield from self.lock_acquire(ctx, "cpu_hotplug_lock", READ)
        yield from self.lock_acquire(ctx, "kvm_lock")
        self.access_data(ctx, "vm_list", False, "list_for_each_entry(kvm, &vm_list, vm_list)")
        yield from self.lock_release(ctx, "kvm_lock")
        yield from self.lock_release(ctx, "cpu_hotplug_lock", READ)

    @locking_op
    def set_nx_huge_pages(self, ctx: ThreadContext) -> Steps:
        """arch/x86/kvm/mmu/mmu.c set_nx_huge_pages() (b8e8c8303ff2, "kvm: mmu: ITLB_MULTIHIT
        mitigation"; read in 6.1 and 6.12): kvm->slots_lock nested inside kvm_lock, so kvm_lock is
        not a leaf although locking.rst orders only cpus_read_lock() outside it."""
        yield from self.lock_acquire(ctx, "kvm_lock")
        self.access_data(ctx, "vm_list", False, "list_for_each_entry(kvm, &vm_list, vm_list)")
        for _ in list(self.vm_list):
            yield from self.lock_acquire(ctx, "kvm->slots_lock")
            yield from self.lock_acquire(ctx, "kvm->mmu_lock", WRITE)
            self.access_data(ctx, "shadow_pages", True, "kvm_mmu_zap_all_fast()")
            yield from self.lock_release(ctx, "kvm->mmu_lock", WRITE)
            yield from self.lock_release(ctx, "kvm->slots_lock")
        yield from self.lock_release(ctx, "kvm_lock")

    # -- vCPUs --------------------------------------------------------------------
    @locking_op
    def kvm_vm_ioctl_create_vcpu(self, ctx: ThreadContext, vcpu: int) -> Steps:
        yield from self.lock_acquire(ctx, "kvm->lock")
        yield from self.lock_acquire(ctx, "vcpu->mutex", instance=self.vcpu_mutex(vcpu))
        yield from self.lock_release(ctx, "kvm->lock")
        yield from self.lock_release(ctx, "vcpu->mutex", instance=self.vcpu_mutex(vcpu))

    @locking_op
    def kvm_vcpu_ioctl_run(self, ctx: ThreadContext, vcpu: int) -> Steps:
        yield from self.lock_acquire(ctx, "vcpu->mutex", instance=self.vcpu_mutex(vcpu))
        yield from self.srcu_read_lock(ctx)
        yield from self.handle_exit(ctx, vcpu)
        yield from self.srcu_read_unlock(ctx)
        yield from self.lock_release(ctx, "vcpu->mutex", instance=self.vcpu_mutex(vcpu))

    def handle_exit(self, ctx: ThreadContext, vcpu: int) -> Steps:
        """One vmexit inside the kvm->srcu read side (vcpu->srcu_idx)."""
        self.access_data(ctx, "memslots", False, "kvm_vcpu_gfn_to_memslot()")
        self.access_data(ctx, "kvm->buses", False, "kvm_io_bus_write(KVM_MMIO_BUS)")
        yield from self.mmu_first_shadow_root_alloc(ctx)
        yield from self.kvm_tdp_mmu_map(ctx)

    def mmu_first_shadow_root_alloc(self, ctx: ThreadContext) -> Steps:
        # The example of "For SRCU": slots_arch_lock inside the read side.
        yield from self.lock_acquire(ctx, "kvm->slots_arch_lock")
        self.access_data(ctx, "memslots", False, "kvm_for_each_memslot()")
        self.access_data(ctx, "memslots.arch", True, "memslot_rmap_alloc()")
        yield from self.lock_release(ctx, "kvm->slots_arch_lock")

    def kvm_tdp_mmu_map(self, ctx: ThreadContext) -> Steps:
        yield from self.lock_acquire(ctx, "kvm->mmu_lock", READ)
        self.access_data(ctx, "shadow_pages", True, "tdp_mmu_link_sp()")
        yield from self.lock_acquire(ctx, "kvm->arch.tdp_mmu_pages_lock")
        yield from self.lock_release(ctx, "kvm->arch.tdp_mmu_pages_lock")
        yield from self.lock_acquire(ctx, "kvm->arch.mmu_unsync_pages_lock")
        yield from self.lock_release(ctx, "kvm->arch.mmu_unsync_pages_lock")
        yield from self.lock_release(ctx, "kvm->mmu_lock", READ)

    # -- memslots and MMU notifiers ---------------------------------------------------
    @locking_op
    def kvm_set_memory_region(self, ctx: ThreadContext) -> Steps:
        yield from self.lock_acquire(ctx, "kvm->slots_lock")
        yield from self.lock_acquire(ctx, "kvm->slots_arch_lock")
        self.access_data(ctx, "memslots", False, "kvm_get_memslots() (the current array)")
        yield from self.kvm_swap_active_memslots(ctx)
        yield from self.lock_release(ctx, "kvm->slots_arch_lock")
        yield from self.synchronize_srcu(ctx)
        yield from self.lock_release(ctx, "kvm->slots_lock")

    def kvm_swap_active_memslots(self, ctx: ThreadContext) -> Steps:
        yield from self.lock_acquire(ctx, "kvm->mn_invalidate_lock")
        self.access_data(ctx, "mn_active_invalidate_count", False, "while (kvm->mn_active_invalidate_count)")
        while self.mn_active_invalidate_count:
            yield from self.lock_release(ctx, "kvm->mn_invalidate_lock")
            yield from self._wait("schedule() on mn_memslots_update_rcuwait",
                                  lambda: not self.mn_active_invalidate_count, "kvm->mn_invalidate_lock")
            yield from self.lock_acquire(ctx, "kvm->mn_invalidate_lock")
            self.access_data(ctx, "mn_active_invalidate_count", False, "while (kvm->mn_active_invalidate_count)")
        self.access_data(ctx, "memslots", True, "rcu_assign_pointer(kvm->memslots[as_id], slots)")
        self.memslots_generation += 1
        yield from self.lock_release(ctx, "kvm->mn_invalidate_lock")

    @locking_op
    def kvm_mmu_notifier_invalidate_range_start(self, ctx: ThreadContext) -> Steps:
        yield from self.lock_acquire(ctx, "kvm->mn_invalidate_lock")
        self.access_data(ctx, "mn_active_invalidate_count", True, "kvm->mn_active_invalidate_count++")
        self.mn_active_invalidate_count += 1
        yield from self.lock_release(ctx, "kvm->mn_invalidate_lock")
        self.mn_start_generation[ctx.name] = yield from self.kvm_handle_hva_range(ctx, "kvm_unmap_gfn_range()")

    @locking_op
    def kvm_mmu_notifier_invalidate_range_end(self, ctx: ThreadContext) -> Steps:
        gen = yield from self.kvm_handle_hva_range(ctx, "kvm_mmu_invalidate_end()")
        self.mn_pairs.append((self.mn_start_generation.pop(ctx.name, gen), gen))
        yield from self.lock_acquire(ctx, "kvm->mn_invalidate_lock")
        self.access_data(ctx, "mn_active_invalidate_count", True, "--kvm->mn_active_invalidate_count")
        if self.mn_active_invalidate_count:  # WARN_ON_ONCE(!count) in the kernel
            self.mn_active_invalidate_count -= 1
        yield from self.lock_release(ctx, "kvm->mn_invalidate_lock")

    def kvm_handle_hva_range(self, ctx: ThreadContext, handler: str) -> Steps:
        """Look the range up in the memslots (SRCU) and run the handler under mmu_lock.
        Returns the memslots generation it used."""
        yield from self.srcu_read_lock(ctx)
        self.access_data(ctx, "memslots", False, "kvm_for_each_memslot_in_hva_range()")
        gen = self.memslots_generation
        yield from self.lock_acquire(ctx, "kvm->mmu_lock", WRITE)
        self.access_data(ctx, "shadow_pages", True, handler)
        yield from self.lock_release(ctx, "kvm->mmu_lock", WRITE)
        yield from self.srcu_read_unlock(ctx)
        return gen

    # -- irqchip and routing ------------------------------------------------------------
    @locking_op
    def kvm_vm_ioctl_create_irqchip(self, ctx: ThreadContext) -> Steps:
        yield from self.lock_acquire(ctx, "kvm->lock")
        yield from self.lock_acquire(ctx, "kvm->slots_lock")
        self.access_data(ctx, "kvm->buses", True, "kvm_io_bus_register_dev(KVM_PIO_BUS, pic)")
        yield from self.synchronize_srcu(ctx)
        yield from self.kvm_setup_default_irq_routing(ctx)
        yield from self.lock_release(ctx, "kvm->slots_lock")
        yield from self.lock_release(ctx, "kvm->lock")

    def kvm_setup_default_irq_routing(self, ctx: ThreadContext) -> Steps:
        yield from self.lock_acquire(ctx, "kvm->irq_lock")
        yield from self.lock_release(ctx, "kvm->irq_lock")

    @locking_op
    def kvm_vm_ioctl_set_gsi_routing(self, ctx: ThreadContext) -> Steps:
        yield from self.lock_acquire(ctx, "kvm->irq_lock")
        yield from self.lock_release(ctx, "kvm->irq_lock")

    # -- x86 ----------------------------------------------------------------------------
    @locking_op
    def kvm_hv_set_msr_pw(self, ctx: ThreadContext, vcpu: int) -> Steps:
        yield from self.lock_acquire(ctx, "vcpu->mutex", instance=self.vcpu_mutex(vcpu))
        yield from self.lock_acquire(ctx, "kvm->arch.hyperv.hv_lock")
        yield from self.lock_release(ctx, "kvm->arch.hyperv.hv_lock")
        yield from self.lock_release(ctx, "vcpu->mutex", instance=self.vcpu_mutex(vcpu))

    @locking_op
    def kvm_xen_vcpu_set_attr(self, ctx: ThreadContext, vcpu: int) -> Steps:
        yield from self.lock_acquire(ctx, "vcpu->mutex", instance=self.vcpu_mutex(vcpu))
        yield from self.lock_acquire(ctx, "kvm->arch.xen.xen_lock")
        yield from self.lock_release(ctx, "kvm->arch.xen.xen_lock")
        yield from self.lock_release(ctx, "vcpu->mutex", instance=self.vcpu_mutex(vcpu))

    @locking_op
    def kvm_xen_hvm_set_attr(self, ctx: ThreadContext) -> Steps:
        yield from self.lock_acquire(ctx, "kvm->arch.xen.xen_lock")
        yield from self.lock_release(ctx, "kvm->arch.xen.xen_lock")

    @locking_op
    def kvm_synchronize_tsc(self, ctx: ThreadContext, vcpu: int) -> Steps:
        yield from self.lock_acquire(ctx, "vcpu->mutex", instance=self.vcpu_mutex(vcpu))
        yield from self.lock_acquire(ctx, "kvm->arch.tsc_write_lock")
        self.access_data(ctx, "kvm->arch.last_tsc_write", True, "kvm->arch.last_tsc_write = data")
        yield from self.lock_release(ctx, "kvm->arch.tsc_write_lock")
        yield from self.lock_release(ctx, "vcpu->mutex", instance=self.vcpu_mutex(vcpu))

    @locking_op
    def pi_enable_wakeup_handler(self, ctx: ThreadContext, vcpu: int) -> Steps:
        yield from self.lock_acquire(ctx, "wakeup_vcpus_on_cpu_lock")
        self.access_data(ctx, "wakeup_vcpus_on_cpu", True, f"list_add_tail(&vcpu{vcpu}->pi_wakeup_list)")
        yield from self.lock_release(ctx, "wakeup_vcpus_on_cpu_lock")

    @locking_op
    def pi_wakeup_handler(self, ctx: ThreadContext) -> Steps:
        yield from self.lock_acquire(ctx, "wakeup_vcpus_on_cpu_lock")
        self.access_data(ctx, "wakeup_vcpus_on_cpu", False, "list_for_each_entry(vmx, wakeup_list)")
        yield from self.lock_release(ctx, "wakeup_vcpus_on_cpu_lock")
