"""locking.rst: the locks of KVM, their acquisition orders, and what each protects.

The operations are KVM paths that take locks (creating a VM and vCPUs, a vCPU
run with a vmexit, a memslot update, MMU-notifier invalidations, CPU hotplug,
irqchip and routing ioctls, x86 Hyper-V/Xen/TSC paths...). A backend takes
every lock through instrumented locks that record the acquisition (thread,
operation, label, locks held) with :class:`pytest_kvmconf.engine.lockdep.LockRecorder`;
each acquisition and release is a scheduling point, so concurrent workloads
interleave there and can really deadlock. Specs state the documented rules in
a ``[guarantee.locks]`` table (see :mod:`pytest_kvmconf.spec.locks`).

Lock names are lock classes, spelled as in locking.rst. ``cpu_hotplug_lock``
is the lock behind ``cpus_read_lock()`` (its read side) and CPU hotplug
(``cpus_write_lock()``).
"""

from __future__ import annotations

from . import Arg, Facet, register

#: lock class -> (type, what locking.rst says of it).
LOCKS: dict[str, tuple[str, str]] = {
    "cpu_hotplug_lock": ("rwsem", "cpus_read_lock() / cpus_write_lock() (CPU hotplug)"),
    "kvm_usage_lock": ("mutex", "kvm_usage_count, hardware virtualization enable/disable (6.12 text)"),
    "kvm_lock": ("mutex", "vm_list (and, in the 6.8 text, kvm_usage_count and hardware enable/disable)"),
    "kvm->lock": ("mutex", "VM-wide state; outside vcpu->mutex, kvm->slots_lock and kvm->irq_lock"),
    "vcpu->mutex": ("mutex", "one vCPU's state; held by vCPU ioctls"),
    "kvm->slots_lock": ("mutex", "memslot updates (calls synchronize_srcu)"),
    "kvm->slots_arch_lock": ("mutex", "arch fields of memslots modified in a kvm->srcu read side"),
    "kvm->irq_lock": ("mutex", "irq routing"),
    "kvm->mn_invalidate_lock": ("spinlock", "mn_active_invalidate_count, mn_memslots_update_rcuwait"),
    "kvm->mmu_lock": ("rwlock", "shadow pages / shadow TLB entries (an rwlock on x86)"),
    "kvm->srcu": ("srcu", "memslots and kvm->buses (read side)"),
    "kvm->arch.tdp_mmu_pages_lock": ("spinlock", "x86 TDP MMU page lists, only under kvm->mmu_lock"),
    "kvm->arch.mmu_unsync_pages_lock": ("spinlock", "x86 unsync shadow pages, only under kvm->mmu_lock"),
    "kvm->arch.hyperv.hv_lock": ("mutex", "x86 Hyper-V partition-wide state"),
    "kvm->arch.xen.xen_lock": ("mutex", "x86 Xen VM state"),
    "kvm->arch.tsc_write_lock": ("raw_spinlock", "x86 kvm_arch::{last_tsc_write,last_tsc_nsec,last_tsc_offset}"),
    "wakeup_vcpus_on_cpu_lock": ("raw_spinlock", "x86 per-CPU list of vCPUs blocked with posted interrupts"),
}

#: data named in section 3 of locking.rst, as recorded by backends' accesses.
DATA: dict[str, str] = {
    "vm_list": "the list of VMs",
    "kvm_usage_count": "number of users of hardware virtualization",
    "mn_active_invalidate_count": "MMU-notifier invalidations in progress",
    "shadow_pages": "shadow pages / shadow TLB entries",
    "memslots": "the pointer to the current memslots array and its contents",
    "memslots.arch": "arch-specific fields of memslots (rmaps...) modified in a read side",
    "kvm->buses": "in-kernel MMIO/PIO address -> device mapping",
    "kvm->arch.last_tsc_write": "last_tsc_write, last_tsc_nsec, last_tsc_offset",
    "wakeup_vcpus_on_cpu": "per-CPU list of blocked vCPUs to wake on a posted-interrupt wakeup",
}

locking = register(Facet(
    "locking",
    "KVM paths taking the locks of locking.rst through recorded, instrumented locks (lockdep)",
))
V = Arg("vcpu", "vcpu", doc="index of the vCPU")
locking.op("kvm_create_vm", [], "int",
           "KVM_CREATE_VM: enable hardware virtualization (kvm_usage_count), then add the VM to "
           "vm_list under kvm_lock. Returns the VM's id.")
locking.op("kvm_destroy_vm", [], "none",
           "Last reference to a VM dropped: remove it from vm_list under kvm_lock, then disable "
           "hardware virtualization if it was the last user. Nothing when vm_list is empty.")
locking.op("cpu_hotplug", [Arg("online", "bool", optional=True, default=True)], "none",
           "Bring a CPU online (or offline) under cpus_write_lock(); KVM's hotplug callback "
           "enables (disables) virtualization on it if KVM is in use.")
locking.op("kvm_walk_vm_list", [], "int",
           "Walk vm_list under kvm_lock (e.g. the kvmclock cpufreq notifier). Returns how many VMs.")
locking.op("kvmclock_cpufreq_notifier", [], "none",
           "x86 __kvmclock_cpufreq_notifier() called with cpus_read_lock() held (e.g. from "
           "cpufreq_boost_trigger_state()): walks vm_list under kvm_lock.")
locking.op("set_nx_huge_pages", [], "none",
           "x86: a write of the kvm.nx_huge_pages module parameter (set_nx_huge_pages() in "
           "arch/x86/kvm/mmu/mmu.c): kvm_lock, then for each VM on vm_list kvm->slots_lock around "
           "kvm_mmu_zap_all_fast() (kvm->mmu_lock inside).")
locking.op("kvm_vm_ioctl_create_vcpu", [V], "none",
           "KVM_CREATE_VCPU: kvm->lock, then the new vCPU's vcpu->mutex.")
locking.op("kvm_vcpu_ioctl_run", [V], "none",
           "KVM_RUN with one vmexit: vcpu->mutex; in a kvm->srcu read side: memslot lookup, MMIO bus "
           "lookup, shadow-root allocation under kvm->slots_arch_lock, a page fault under kvm->mmu_lock "
           "(read) taking tdp_mmu_pages_lock and mmu_unsync_pages_lock.")
locking.op("kvm_set_memory_region", [], "none",
           "KVM_SET_USER_MEMORY_REGION: kvm->slots_lock, kvm->slots_arch_lock, wait while "
           "mn_active_invalidate_count is non-zero, install the new memslots, release "
           "slots_arch_lock, synchronize_srcu(&kvm->srcu), release slots_lock.")
locking.op("kvm_mmu_notifier_invalidate_range_start", [], "none",
           "MMU notifier: mn_active_invalidate_count++ under mn_invalidate_lock, then zap under "
           "kvm->srcu and kvm->mmu_lock (write). Pair it with _end in the same thread.")
locking.op("kvm_mmu_notifier_invalidate_range_end", [], "none",
           "MMU notifier: finish under kvm->srcu and kvm->mmu_lock, then mn_active_invalidate_count-- "
           "under mn_invalidate_lock and wake a waiting memslot update.")
locking.op("kvm_vm_ioctl_create_irqchip", [], "none",
           "KVM_CREATE_IRQCHIP: kvm->lock; register the PIC/IOAPIC devices on kvm->buses under "
           "kvm->slots_lock (synchronize_srcu), with the default routing under kvm->irq_lock nested "
           "inside it (the documented, rare slots_lock -> irq_lock pair).")
locking.op("kvm_vm_ioctl_set_gsi_routing", [], "none", "KVM_SET_GSI_ROUTING: update routing under kvm->irq_lock.")
locking.op("kvm_hv_set_msr_pw", [V], "none",
           "x86: KVM_SET_MSRS of a partition-wide Hyper-V MSR: vcpu->mutex, then kvm->arch.hyperv.hv_lock.")
locking.op("kvm_xen_vcpu_set_attr", [V], "none",
           "x86: KVM_XEN_VCPU_SET_ATTR: vcpu->mutex, then kvm->arch.xen.xen_lock.")
locking.op("kvm_xen_hvm_set_attr", [], "none", "x86: KVM_XEN_HVM_SET_ATTR: kvm->arch.xen.xen_lock alone.")
locking.op("kvm_synchronize_tsc", [V], "none",
           "x86: KVM_SET_TSC_KHZ/MSR write: vcpu->mutex, then kvm->arch.tsc_write_lock (raw) "
           "around last_tsc_write.")
locking.op("pi_enable_wakeup_handler", [V], "none",
           "x86 VT-d posted interrupts: a blocking vCPU adds itself to wakeup_vcpus_on_cpu under "
           "wakeup_vcpus_on_cpu_lock.")
locking.op("pi_wakeup_handler", [], "none",
           "x86 posted-interrupt wakeup vector: walk wakeup_vcpus_on_cpu under its lock.")
# The overridable steps of the bundled backends. The threaded backend runs the reference model's paths
# (LockingThreads subclasses LockingModel) over real blocking locks, so its steps are the same generators.
# A variant writes an operation's path out of the lock steps; the sub-paths are parts of operations.
locking.step("lock_acquire", ("ctx", "name", "mode", "instance"), "none",
             "mutex_lock(), spin_lock(), read_lock()/write_lock(), cpus_read_lock()/cpus_write_lock()",
             "Take lock class @name (of LOCKS; @instance names one of several, e.g. vcpu_mutex(0)) in "
             "@mode (engine.lockdep READ or WRITE, default WRITE): wait while contended, record the "
             "acquisition with the locks held.", points=True)
locking.step("lock_release", ("ctx", "name", "mode", "instance"), "none",
             "mutex_unlock(), spin_unlock(), read_unlock()/write_unlock(), cpus_read_unlock()",
             "Release a lock lock_acquire took.", points=True)
locking.step("srcu_read_lock", ("ctx",), "none", "srcu_read_lock(&kvm->srcu)",
             "Enter a kvm->srcu read-side section.", points=True)
locking.step("srcu_read_unlock", ("ctx",), "none", "srcu_read_unlock(&kvm->srcu)",
             "Leave the innermost read-side section.", points=True)
locking.step("synchronize_srcu", ("ctx",), "none", "synchronize_srcu(&kvm->srcu)",
             "Wait for the read-side sections that began before the call (recorded with the locks held).",
             points=True)
locking.step("access_data", ("ctx", "data", "write", "label"), "none",
             "an access to data section 3 of locking.rst names",
             "Record a read or write of @data (of DATA) with the locks held; @label is the kernel's code.")
locking.step("vcpu_mutex", ("vcpu",), "str", "&vcpu->mutex", "The instance name of vCPU @vcpu's vcpu->mutex.")
locking.step("hardware_enable_all", ("ctx",), "none", "hardware_enable_all() (6.8 text)",
             "cpus_read_lock(), kvm_lock, kvm_usage_count++.", points=True)
locking.step("hardware_disable_all", ("ctx",), "none", "hardware_disable_all() (6.8 text)",
             "cpus_read_lock(), kvm_lock, kvm_usage_count--.", points=True)
locking.step("kvm_enable_virtualization", ("ctx",), "none", "kvm_enable_virtualization() (6.12 text)",
             "kvm_usage_lock, kvm_usage_count++, cpuhp_setup_state() (cpus_read_lock()) for the first user.",
             points=True)
locking.step("kvm_disable_virtualization", ("ctx",), "none", "kvm_disable_virtualization() (6.12 text)",
             "kvm_usage_lock, kvm_usage_count--, cpuhp_remove_state() for the last user.", points=True)
locking.step("kvm_online_cpu", ("ctx", "online"), "none", "kvm_online_cpu() / kvm_offline_cpu()",
             "The hotplug callback, under cpus_write_lock() (6.8: reads kvm_usage_count under kvm_lock).",
             points=True)
locking.step("handle_exit", ("ctx", "vcpu"), "none", "kvm_x86_ops.handle_exit() in the kvm->srcu read side",
             "One vmexit: memslot and MMIO bus lookups, mmu_first_shadow_root_alloc, kvm_tdp_mmu_map.",
             points=True)
locking.step("mmu_first_shadow_root_alloc", ("ctx",), "none", "mmu_first_shadow_root_alloc()",
             "kvm->slots_arch_lock inside the read side (the example of 'For SRCU').", points=True)
locking.step("kvm_tdp_mmu_map", ("ctx",), "none", "kvm_tdp_mmu_map()",
             "A page fault under kvm->mmu_lock (read), with tdp_mmu_pages_lock and mmu_unsync_pages_lock.",
             points=True)
locking.step("kvm_swap_active_memslots", ("ctx",), "none", "kvm_swap_active_memslots()",
             "Under mn_invalidate_lock, wait while mn_active_invalidate_count, then install the memslots.",
             points=True)
locking.step("kvm_handle_hva_range", ("ctx", "handler"), "int", "kvm_handle_hva_range()",
             "Look the range up in the memslots (SRCU), run @handler under kvm->mmu_lock (write); "
             "returns the memslots generation it used.", points=True)
locking.step("kvm_setup_default_irq_routing", ("ctx",), "none", "kvm_setup_default_irq_routing()",
             "The default routing under kvm->irq_lock.", points=True)

locking.observables.update({
    "lock_events": "every acquisition (mode read/write) and synchronize_srcu (mode sync), with the "
                   "locks held: records with thread, op, lock, mode, label, held",
    "data_accesses": "every access to documented data: records with thread, op, data, write, label, held",
    "lock_pairs": "set of (held, taken) lock-name pairs seen, e.g. ('kvm->lock', 'vcpu->mutex') in lock_pairs",
    "locks_taken": "set of lock names taken at least once",
    "srcu_synced_under": "set of lock names held by some synchronize_srcu(&kvm->srcu)",
    "data_accessed": "set of data names accessed at least once",
    "vm_list": "tuple of the ids of the VMs on vm_list",
    "kvm_usage_count": "number of VMs using hardware virtualization",
    "virtualization_enabled": "whether hardware virtualization is enabled",
    "mn_active_invalidate_count": "MMU-notifier invalidations between start and end",
    "memslots_generation": "how many memslot updates were installed",
    "mn_pairs": "per finished invalidate start/end pair: (memslots generation at start, at end)",
})
