"""locking.rst section 2 ("Exception"): the fast page fault path and lockless SPTE updates.

The vocabulary models one x86 shadow page with a few SPTEs (shadow page table
entries) and everything that changes them:

* the *fast page fault* path, which fixes a fault out of mmu_lock with a
  cmpxchg on the SPTE (setting W, or restoring an access-tracked SPTE);
* guest memory accesses, which use a vCPU's cached TLB entry when it has one
  and otherwise walk the SPTE, setting its Accessed/Dirty bits like hardware;
* operations under mmu_lock: write protection (rmap_write_protect /
  mmu_spte_update W->RO with the remote TLB-flush request), host swap-out
  (mmu_spte_clear_track_bits), the slow page fault installing an SPTE, the
  guest changing a gpte of an indirect shadow page, and access tracking
  (kvm_mmu_notifier_clear_flush_young).

Machine options: ``sp`` = "direct" (the default; each SPTE's gfn is fixed) or
"indirect" (the SPTE follows a guest PTE the guest may change), ``ad_bits``
(default true; false is EPT without A/D bits, where aging uses lockless
access tracking), ``tracked`` (default false; with ``ad_bits = false``, every
SPTE starts marked for access tracking, as after an earlier aging pass),
``nsptes`` (default 2).

Initial state: SPTE i maps gfn i; gfns 0..nsptes-1 are resident in host
pages (pfn 10 + gfn), the other gfns are not; every SPTE is present,
readable, Accessed, not writable (write-protected for dirty logging, but
Host-writable and MMU-writable, so the fast path may make it writable);
SPTE 0 is executable, the others are not. A freed pfn is reused first when a
gfn is faulted in again, so the ABA of section 2 (1) can happen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from . import Arg, Facet, register


def spte_observables(*, sptes: Sequence[Any], sp_gfn: Callable[[int], int], gfn_to_pfn: Mapping[int, int],
                     is_dirty: Callable[[Any], bool], is_accessed: Callable[[Any], bool],
                     dirty_bitmap: Iterable[int], pfn_dirty: Iterable[int], pfn_accessed: Iterable[int],
                     accesses: Iterable[Mapping[str, Any]], tlbs: Iterable[Iterable[Any]],
                     flush_pending: Iterable[bool], write_protected: Iterable[int],
                     faults: Iterable[Mapping[str, Any]], mmu_lock_held: bool, sp_role: str,
                     ad_bits: bool) -> dict[str, Any]:
    """The SPTE facet's observables, the same for every backend: each backend passes its own
    containers (plain fields in the model, atomic words and per-vCPU MMUs in the threaded one)."""
    views = []
    for i, s in enumerate(sptes):
        gfn = sp_gfn(i)
        views.append({
            "present": s.present, "r": s.r, "w": s.w, "x": s.x, "a": s.a, "d": s.d,
            "host_writable": s.host_writable, "mmu_writable": s.mmu_writable,
            "tracked": s.tracked, "saved_r": s.saved_r, "saved_x": s.saved_x, "pfn": s.pfn,
            "gfn": gfn, "host_pfn": gfn_to_pfn.get(gfn, -1),
            "dirty": is_dirty(s), "accessed": is_accessed(s),
        })
    accesses = tuple(accesses)
    return {
        "sptes": views,
        "gfn_to_pfn": dict(gfn_to_pfn),
        "dirty_bitmap": frozenset(dirty_bitmap),
        "pfn_dirty": frozenset(pfn_dirty),
        "pfn_accessed": frozenset(pfn_accessed),
        "writes": tuple({"vcpu": a["vcpu"], "gfn": a["gfn"], "pfn": a["pfn"]} for a in accesses if a["write"]),
        "accesses": tuple(dict(a) for a in accesses),
        "tlbs": [tuple({"spte": e.spte, "gfn": e.gfn, "pfn": e.pfn, "w": e.w, "d": e.d} for e in t)
                 for t in tlbs],
        "tlb_flush_pending": list(flush_pending),
        "write_protected": frozenset(write_protected),
        "faults": tuple(dict(f) for f in faults),
        "mmu_lock_held": mmu_lock_held,
        "sp_role": sp_role,
        "ad_bits": ad_bits,
    }

#: First pfn of the resident gfns: gfn g starts in pfn PFN_BASE + g.
PFN_BASE = 10

spte = register(Facet(
    "spte",
    "shadow page table entries (locking.rst section 2): fast page fault, A/D tracking, "
    "write protection with TLB flushes, lockless access tracking",
))
spte.constants.update({
    "PFN_BASE": PFN_BASE,
})
spte.named_sets.update({
    "sp_roles": lambda v: ("direct", "indirect"),
})

S = Arg("spte", "int", doc="index of the SPTE in the shadow page")
V = Arg("vcpu", "vcpu", doc="the vCPU taking the fault / making the access")
W = Arg("write", "bool", optional=True, default=False, doc="a write access (else a read)")
G = Arg("gfn", "int", doc="guest frame number")

spte.op("fast_page_fault", [V, S, W], "str",
        "fast_page_fault(): out of mmu_lock, read the SPTE, compute the fixed value (set W if "
        "Host-writable and MMU-writable and the fault is a write; restore the saved R/X bits of an "
        "access-tracked SPTE, with W only on a write), cmpxchg it against the value read (retry on "
        "failure, up to 4 times), then mark_page_dirty(gfn) if it made the SPTE writable. The gfn is "
        "the one of the faulting access, fixed before the SPTE is read. Returns 'fixed', 'spurious' "
        "(nothing to fix) or 'slow' (needs the slow path under mmu_lock: not present, write-protected "
        "by the MMU, or an indirect shadow page whose fast path is disabled).", vcpu_thread=True)
spte.op("guest_access", [V, S, W], "bool",
        "The guest reads or writes the page behind SPTE @spte, in one step: first a pending "
        "KVM_REQ_TLB_FLUSH is handled (the vCPU's TLB emptied); a cached TLB entry that allows the "
        "access is used as is; otherwise the SPTE is walked, hardware sets Accessed (and Dirty on a "
        "write) atomically when A/D bits are enabled, and the translation is cached. "
        "Returns false when the access faults (nothing happens).", vcpu_thread=True)
spte.op("map_spte", [S], "none",
        "The slow page fault under mmu_lock: fault the SPTE's gfn in (a freed pfn is reused first) "
        "and install a present, Accessed, read-only SPTE (MMU-writable unless the gfn is "
        "write-protected).")
spte.op("write_protect", [G, Arg("pt_protect", "bool", optional=True, default=True,
                                   doc="shadow-page write protection: also clear MMU-writable")],
        "none",
        "rmap_write_protect() under mmu_lock: for each SPTE of @gfn, mmu_spte_update() clearing W "
        "(and MMU-writable), atomically since the SPTE is volatile; if an SPTE went from writable to "
        "read-only, kvm_flush_remote_tlbs() (KVM_REQ_TLB_FLUSH to every vCPU). On return the "
        "write protection is relied on (@gfn joins write_protected when pt_protect).")
spte.op("host_swap_out", [G], "none",
        "The host reclaims the page of @gfn: under mmu_lock, mmu_spte_clear_track_bits() on each "
        "SPTE mapping it (propagating Accessed/Dirty to the pfn), a remote TLB flush, then the pfn is "
        "freed (unless the fast path pinned it) and @gfn is no longer resident.")
spte.op("guest_set_gpte", [S, G], "none",
        "The guest points its PTE behind SPTE @spte to @gfn. The shadowed guest page table is "
        "write-protected, so KVM zaps the SPTE under mmu_lock and the SPTE then translates @gfn. "
        "For a direct shadow page the SPTE's gfn is fixed: nothing changes.")
spte.op("clear_flush_young", [G], "bool",
        "kvm_mmu_notifier_clear_flush_young() for @gfn under mmu_lock: with A/D bits, clear Accessed "
        "atomically; without (EPT without A/D), mark each present SPTE for access tracking: not "
        "present, R/X saved in ignored bits, W not saved; then a remote TLB flush. Returns whether "
        "the page was young.")

# The overridable steps of the bundled backends (arch/x86/kvm/mmu/: mmu.c, spte.c, spte.h). @i is an
# SPTE's index, @s/@old/@new SPTE values.
spte.step("sp_gfn", ("i",), "int", "kvm_mmu_page_get_gfn()",
          "The gfn SPTE @i translates: fixed for a direct sp, the guest PTE's for an indirect one.")
spte.step("make_spte", ("i", "pfn"), "Spte", "make_spte()",
          "The slow path's SPTE: present, readable, read-only (dirty logging); MMU-writable unless "
          "the gfn is write-protected.")
spte.step("is_dirty_spte", ("s",), "bool", "is_dirty_spte()", "D with A/D bits; without them, W.")
spte.step("is_accessed_spte", ("s",), "bool", "is_accessed_spte()", "A with A/D bits; without them, present.")
spte.step("spte_has_volatile_bits", ("s",), "bool", "spte_has_volatile_bits()",
          "Can the SPTE change out of mmu_lock (the fast path, or the hardware setting A/D)?")
spte.step("is_access_allowed", ("s", "write"), "bool", "is_access_allowed()",
          "Does the SPTE allow the access (W for a write, R for a read)?")
spte.step("fast_path_allowed", (), "bool", "fast_page_fault() on a direct sp only (locking.rst 2 (1))",
          "Whether the fast path runs here: direct shadow pages, or indirect ones with the pfn pinned.")
spte.step("fast_pf_new_spte", ("old", "write"), "Spte | None", "the new SPTE fast_page_fault() computes",
          "Restore an access-tracked SPTE, set W on a write when Host- and MMU-writable; None if that "
          "does not allow the access.")
spte.step("restore_acc_track_spte", ("old",), "Spte", "restore_acc_track_spte()",
          "Present again with the saved R/X; W stays clear.")
spte.step("gfn_to_pfn_memslot_atomic", ("gfn", "old"), "int | bool | None",
          "gfn_to_pfn_memslot_atomic() (the document's solution for indirect sp)",
          "Indirect sp: pin the gfn's pfn, which must be the SPTE's (False: give up); None for a direct sp.",
          points=True)
spte.step("kvm_release_pfn_clean", ("pfn",), "none", "kvm_release_pfn_clean()",
          "Drop the pin gfn_to_pfn_memslot_atomic took (nothing for None/False).")
spte.step("fast_pf_fix_direct_spte", ("i", "old", "new"), "bool", "fast_pf_fix_direct_spte() (cmpxchg64)",
          "Install @new only if the SPTE is still @old.", points=True)
spte.step("mark_page_dirty", ("gfn",), "none", "mark_page_dirty()", "Log @gfn in the dirty bitmap.",
          points=True)
spte.step("spte_write_protect", ("i", "pt_protect"), "bool", "spte_write_protect()",
          "Clear W (and MMU-writable for pt_protect); returns whether the TLBs must be flushed.", points=True)
spte.step("mmu_spte_update", ("i", "old", "new"), "bool | None", "mmu_spte_update()",
          "Update a volatile SPTE atomically against @old (None: it changed, read again); returns "
          "wrprot_needs_flush.", points=True)
spte.step("wrprot_needs_flush", ("old", "new"), "bool", "the flush decision of mmu_spte_update()",
          "Writable to read-only: the TLBs must be flushed.")
spte.step("mmu_spte_clear_track_bits", ("i",), "none", "mmu_spte_clear_track_bits()",
          "Zap the SPTE (xchg if it has volatile bits, else a plain store), then set_pfn_accessed_dirty.",
          points=True)
spte.step("set_pfn_accessed_dirty", ("old",), "none",
          "kvm_set_pfn_accessed() / kvm_set_pfn_dirty() in mmu_spte_clear_track_bits()",
          "Hand the zapped SPTE's Accessed and Dirty bits to the pfn.", points=True)
spte.step("mmu_spte_age", ("i",), "bool", "mmu_spte_age() without A/D bits",
          "cmpxchg the SPTE to mark_spte_for_access_track's value (the pfn dirty if it was writable); "
          "returns whether it was young.", points=True)
spte.step("mark_spte_for_access_track", ("old",), "Spte", "mark_spte_for_access_track()",
          "Clear R/W/X, save R/X (not W) in ignored bits.")

spte.observables.update({
    "sptes": "list of SPTEs; sptes[i] has present, r, w, x, a, d, host_writable, mmu_writable, "
             "tracked (marked for access tracking), saved_r, saved_x, pfn (-1 if none), gfn (the gfn it "
             "translates), host_pfn (the host's current pfn of that gfn, -1 if not resident), "
             "dirty/accessed (what mmu_spte_clear_track_bits would propagate: D/A with A/D bits, "
             "W/present without)",
    "gfn_to_pfn": "dict gfn -> pfn of the resident gfns",
    "dirty_bitmap": "set of gfns marked dirty (mark_page_dirty)",
    "pfn_dirty": "set of pfns marked dirty (kvm_set_pfn_dirty)",
    "pfn_accessed": "set of pfns marked accessed (kvm_set_pfn_accessed)",
    "writes": "tuple of the guest's writes, in order: each {vcpu, gfn, pfn}",
    "accesses": "tuple of all the guest's accesses, in order: each {vcpu, gfn, pfn, write}",
    "tlbs": "per vCPU, the tuple of cached translations: each {spte, gfn, pfn, w, d}",
    "tlb_flush_pending": "per vCPU, a KVM_REQ_TLB_FLUSH is pending (handled before its next access)",
    "write_protected": "set of gfns whose write_protect(pt_protect) has returned: protection relied on",
    "faults": "tuple of the fast page faults in progress: each {vcpu, spte, write}",
    "mmu_lock_held": "some thread holds kvm->mmu_lock",
    "sp_role": "'direct' or 'indirect'",
    "ad_bits": "the SPTEs use hardware Accessed/Dirty bits (false: lockless access tracking)",
})
