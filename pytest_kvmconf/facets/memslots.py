"""api.rst 4.35 KVM_SET_USER_MEMORY_REGION, 4.8 KVM_GET_DIRTY_LOG, 4.117 KVM_CLEAR_DIRTY_LOG,
8.29 KVM_CAP_DIRTY_LOG_RING, seen from userspace while guests write: the VMM's side of the
memory guarantees (the memslot update's VM-wide request and TLB flush, the MMU notifier,
dirty tracking, the lock orders a hang would show).

The machine (option ``data_slot``, one of :data:`DATA_SLOT_MODES`) has a *data slot*: a
memslot of a few pages each vCPU's guest writes in passes, every write stamped with its
pass number, while the specs' threads change the slot, its host mapping or its dirty log.
Only a backend running real guests implements it (capability ``memslots``).
"""

from __future__ import annotations

from . import Arg, Facet, register

DATA_SLOT_MODES = ("plain", "dirty_bitmap", "dirty_manual", "dirty_ring")
#: Pages of the data slot; each pass of a guest writes one stamp into each.
DATA_PAGES = 8
#: change_data_slot(how): each is one or two KVM_SET_USER_MEMORY_REGION calls, or an mmap.
DATA_SLOT_CHANGES = {
    "delete": "KVM_SET_USER_MEMORY_REGION with memory_size 0",
    "move": "the same slot at another guest_phys_addr (KVM_MR_MOVE)",
    "readonly": "delete, then create again with KVM_MEM_READONLY on the same host pages",
    "replace": "delete, then create again on fresh host pages",
    "restore": "delete (if present), then create again writable at the data GPA",
    "remap": "mmap(MAP_FIXED) fresh pages over the slot's host mapping (the MMU notifier, no ioctl)",
}

memslots = register(Facet(
    "memslots",
    "memslots, host mappings and dirty logging changed by userspace while guests write "
    "(api.rst 4.35, 4.8, 4.117, 8.29; locking.rst)",
))
memslots.named_sets.update({
    "data_slot_changes": lambda v: tuple(DATA_SLOT_CHANGES),
    # Those after which the guest can no longer write the old host pages.
    "data_slot_removals": lambda v: ("delete", "move", "readonly", "replace"),
})

memslots.op("start_guests", [], "none",
            "Start every vCPU's run loop (KVM_RUN again after each exit; MMIO writes recorded) and wait "
            "until each guest has begun writing.")
memslots.op("stop_guests", [], "none",
            "Stop every run loop with the documented kick (immediate_exit, then the signal) and wait "
            "until each vCPU has left KVM_RUN: no guest writes after it.")
memslots.op("wait_passes", [Arg("passes", "int", optional=True, default=2)], "none",
            "Wait until every running guest has written @passes more passes over the data pages "
            "(bounded: past the bound the example is undecided under load).")
HOW = Arg("how", "any", doc="an expression naming one of: " + ", ".join(DATA_SLOT_CHANGES))
memslots.op("change_data_slot", [HOW], "int",
            "Change the data slot while the guests write: " + "; ".join(
                f"{k}: {d}" for k, d in DATA_SLOT_CHANGES.items()) + ". Returns 0 or -errno.")
memslots.op("madvise_dontneed", [], "none",
            "madvise(MADV_DONTNEED) on the data slot's host mapping (the MMU notifier; a shared "
            "mapping keeps its content).")
memslots.op("scratch_slot", [Arg("create", "bool", optional=True, default=True)], "int",
            "Create or delete slot 2, host memory no guest touches (a memslot update racing the others).")
memslots.op("toggle_dirty_logging", [], "int",
            "Flip KVM_MEM_LOG_DIRTY_PAGES of the data slot (a flags-only memslot update).")
memslots.op("create_vcpu", [], "none",
            "KVM_CREATE_VCPU of one more vCPU while the others run; it runs the writer if they do.")
memslots.op("vcpu_ioctl", [Arg("vcpu", "vcpu")], "none",
            "KVM_GET_REGS of vCPU @vcpu as a VMM must: on the vCPU's thread between two KVM_RUNs.")
memslots.op("harvest_dirty", [], "int",
            "Harvest the data slot's dirty log (dirty_bitmap: KVM_GET_DIRTY_LOG; dirty_manual: "
            "KVM_GET_DIRTY_LOG then KVM_CLEAR_DIRTY_LOG; dirty_ring: collect the rings, then "
            "KVM_RESET_DIRTY_RINGS), then copy the reported pages into the migration copy. "
            "Returns how many pages were reported.")

# The overridable steps of the reference model (the threaded backend has no memslots facet).
memslots.step("guest_pass", ("vcpu",), "none", "the guest code under KVM_RUN (not KVM)",
              "One pass of vCPU @vcpu: a stamp into every data page through the memslots of now "
              "(an MMIO exit where no writable slot maps them; dirty-logged if the slot logs).")
memslots.step("apply_change", ("how",), "int",
              "KVM_SET_USER_MEMORY_REGION (kvm_set_memory_region()), or a remap of the host mapping",
              "Change the data slot as @how says (delete, move, readonly, replace, restore, remap); 0 or -errno.")
memslots.step("reported_pages", (), "set of pages",
              "KVM_GET_DIRTY_LOG / KVM_CLEAR_DIRTY_LOG / the dirty rings (kvm_get_dirty_log_protect())",
              "The data pages the dirty log reports (the log is then re-armed).")
memslots.step("copy_pages", ("pages",), "none", "the VMM's copy of the reported pages (not KVM)",
              "Copy @pages into the migration copy.")

memslots.observables.update({
    "mem": "the data slot: mode, undecided (why the example could not be decided under load, or ''), "
           "gens (each vCPU's pass counter), running (run loops), stray (writes found in host pages "
           "after the guest lost its writable mapping of them: backing, page, offset, was, now, "
           "frozen_since), frozen (host backings the guests can no longer write), mmio_writes (guest "
           "writes to the data GPAs that exited to userspace), harvests, reported (pages reported), "
           "copy_stale (after the guests stopped and a last harvest: stamps whose migration copy "
           "differs from memory; None before), hangs (operations that never returned while every "
           "thread slept), corrupt (words of guest memory no guest wrote), run_errors",
})
