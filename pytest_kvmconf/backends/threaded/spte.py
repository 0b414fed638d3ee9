"""locking.rst section 2 as a concurrent program: SPTEs shared by real OS threads.

Each SPTE is a 64-bit word in memory (:class:`SpteWord`): READ_ONCE is a plain
load, and WRITE_ONCE, cmpxchg64 and xchg64 are indivisible read-modify-writes
(a small lock standing for the CPU's locked instruction). The fast page fault
path runs on the vCPU's thread without mmu_lock and fixes the SPTE with a real
cmpxchg against the value it read; the page walker sets Accessed/Dirty with an
atomic RMW; everything else takes ``kvm->mmu_lock``, a real lock whose
contended acquisition blocks through
:func:`~pytest_kvmconf.engine.threads.wait_on`. A remote TLB flush is a
KVM_REQ_TLB_FLUSH flag per vCPU, handled by the vCPU before its next access.

A scheduling point follows every SPTE read, write, cmpxchg and xchg, with the
labels of the reference model, and no Python lock is held at a point.
The value type of an SPTE (:class:`~..reference.spte.Spte`) is shared with the
reference model; the code that changes SPTEs is this module's own.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

from ...backend import MachineConfig, ThreadContext
from ...engine.threads import wait_on
from ...facets.spte import PFN_BASE, spte_observables
from ...scheduling import point
from ..reference.spte import ZERO, Spte, TlbEntry
from .atomics import AtomicWord

#: fast_page_fault() gives up after this many failed cmpxchgs.
FAST_PF_RETRIES = 4


class SpteWord(AtomicWord):
    """A u64 SPTE with the kernel's accessors (READ_ONCE, WRITE_ONCE, cmpxchg, xchg)
    and the page walker's atomic A/D update."""

    __slots__ = ()

    def walk(self, write: bool, ad_bits: bool) -> Spte | None:
        """The page walker: if the SPTE allows the access, set Accessed (and Dirty on a
        write) atomically when A/D bits are enabled; the SPTE used, or None (a fault)."""
        with self._lock:
            s = self._value
            if not (s.present and (s.w if write else s.r)):
                return None
            if ad_bits:
                s = self._value = replace(s, a=True, d=s.d or write)
            return s


class MmuLock:
    """kvm->mmu_lock held for write: the owner's name, or None."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.owner: str | None = None

    def lock(self, who: str) -> None:
        while True:
            with self.cond:
                if self.owner is None:
                    self.owner = who
                    return
            wait_on(self.cond, "write_lock(&kvm->mmu_lock): contended", lambda: self.owner is None)

    def unlock(self) -> None:
        with self.cond:
            self.owner = None
            self.cond.notify_all()


class VcpuMmu:
    """A vCPU's TLB and its pending KVM_REQ_TLB_FLUSH; the lock stands for the CPU."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tlb: dict[int, TlbEntry] = {}
        self.flush_pending = False


class SpteThreads:
    """Facet mixin: spte."""

    #: Run the fast path on indirect shadow pages too, pinning the pfn first.
    pin_indirect: bool = False

    def init_spte(self, config: MachineConfig) -> None:
        opts = config.options
        self.sp_role = opts.get("sp", "direct")
        if self.sp_role not in ("direct", "indirect"):
            raise ValueError(f"machine option sp must be 'direct' or 'indirect', not {self.sp_role!r}")
        self.ad_bits = bool(opts.get("ad_bits", True))
        n = int(opts.get("nsptes", 2))
        self.gptes = list(range(n))
        # Host memory: gfn -> pfn, free pfns, pins; dirty log and pfn marks. Short critical sections.
        self.host_lock = threading.Lock()
        self.gfn_to_pfn = {g: PFN_BASE + g for g in range(n)}
        self.free_pfns: list[int] = []
        self.next_pfn = PFN_BASE + n
        self.pins: dict[int, int] = {}
        self.dirty_bitmap: set[int] = set()
        self.pfn_dirty: set[int] = set()
        self.pfn_accessed: set[int] = set()
        self.accesses: list[dict[str, Any]] = []
        self.faults: list[dict[str, Any]] = []
        self.wp_gfns: set[int] = set()  # only changed under mmu_lock
        self.write_protected: set[int] = set()
        self.mmu_lock = MmuLock()
        self.vcpu_mmus = [VcpuMmu() for _ in range(config.vcpus)]
        self.spte_words = [SpteWord(ZERO) for _ in range(n)]
        for i in range(n):
            s = self.make_spte(i, self.gfn_to_pfn[i])
            if opts.get("tracked", False):  # aged before the run: marked for access tracking
                s = self.mark_spte_for_access_track(s)
            self.spte_words[i].write(s)

    def observe_spte(self) -> dict[str, Any]:
        return spte_observables(
            sptes=[word.read() for word in self.spte_words], sp_gfn=self.sp_gfn, gfn_to_pfn=self.gfn_to_pfn,
            is_dirty=self.is_dirty_spte, is_accessed=self.is_accessed_spte, dirty_bitmap=self.dirty_bitmap,
            pfn_dirty=self.pfn_dirty, pfn_accessed=self.pfn_accessed, accesses=self.accesses,
            tlbs=(vm.tlb.values() for vm in self.vcpu_mmus),
            flush_pending=[vm.flush_pending for vm in self.vcpu_mmus], write_protected=self.write_protected,
            faults=self.faults, mmu_lock_held=self.mmu_lock.owner is not None, sp_role=self.sp_role,
            ad_bits=self.ad_bits)

    # -- SPTE bits -------------------------------------------------------------
    def sp_gfn(self, i: int) -> int:
        return i if self.sp_role == "direct" else self.gptes[i]

    def make_spte(self, i: int, pfn: int) -> Spte:
        return Spte(present=True, r=True, x=i == 0, a=self.ad_bits, host_writable=True,
                    mmu_writable=self.sp_gfn(i) not in self.wp_gfns, pfn=pfn)

    def is_dirty_spte(self, s: Spte) -> bool:
        return s.present and (s.d if self.ad_bits else s.w)

    def is_accessed_spte(self, s: Spte) -> bool:
        return s.present and (s.a if self.ad_bits else True)

    def spte_has_volatile_bits(self, s: Spte) -> bool:
        if not s.shadow_present:
            return False
        if s.tracked or (s.host_writable and s.mmu_writable):
            return True
        return self.ad_bits and (not s.a or (s.w and not s.d))

    def is_access_allowed(self, s: Spte, write: bool) -> bool:
        return s.present and (s.w if write else s.r)

    def _flush_remote_tlbs(self) -> None:
        for vm in self.vcpu_mmus:
            with vm.lock:
                vm.flush_pending = True
        point("kvm_flush_remote_tlbs(): KVM_REQ_TLB_FLUSH to every vCPU")

    # -- the fast page fault path ------------------------------------------------
    def fast_page_fault(self, ctx: ThreadContext, vcpu: int, spte: int, write: bool = False) -> str:
        gfn = self.sp_gfn(spte)
        fault = {"vcpu": vcpu, "spte": spte, "write": write}
        with self.host_lock:
            self.faults.append(fault)
        try:
            return self._fast_page_fault(spte, gfn, write)
        finally:
            with self.host_lock:
                self.faults.remove(fault)

    def fast_path_allowed(self) -> bool:
        return self.sp_role == "direct" or self.pin_indirect

    def _fast_page_fault(self, i: int, gfn: int, write: bool) -> str:
        if not self.fast_path_allowed():
            point("indirect shadow page: fast page fault disabled, take the slow path")
            return "slow"
        word = self.spte_words[i]
        for _ in range(1 + FAST_PF_RETRIES):
            old = word.read()
            point(f"{'write' if write else 'read'} fault, gfn {gfn}: old_spte = *spte{i}: {old.text()}")
            if self.is_access_allowed(old, write):
                point("access allowed already: spurious fault")
                return "spurious"
            new = self.fast_pf_new_spte(old, write)
            if new is None:
                point("cannot be fixed out of mmu_lock: slow path")
                return "slow"
            pinned = self.gfn_to_pfn_memslot_atomic(gfn, old)
            if pinned is False:
                return "slow"
            ok = self.fast_pf_fix_direct_spte(i, old, new)
            if ok and new.w and not old.w:
                self.mark_page_dirty(gfn)
            self.kvm_release_pfn_clean(pinned)
            if ok:
                return "fixed"
        point("too many retries: slow path")
        return "slow"

    def fast_pf_fix_direct_spte(self, i: int, old: Spte, new: Spte) -> bool:
        """fast_pf_fix_direct_spte(): cmpxchg64 against the value read."""
        ok = self.spte_words[i].cmpxchg(old, new) == old
        point(f"cmpxchg(spte{i}, old_spte, {new.text()}) "
              f"{'succeeded' if ok else 'failed: the SPTE changed'}")
        return ok

    def fast_pf_new_spte(self, old: Spte, write: bool) -> Spte | None:
        if not old.shadow_present:
            return None
        new = self.restore_acc_track_spte(old) if old.tracked else old
        if write and old.host_writable and old.mmu_writable:
            new = replace(new, w=True)
        if new == old or not self.is_access_allowed(new, write):
            return None
        return new

    def restore_acc_track_spte(self, old: Spte) -> Spte:
        """The saved R/X, W stays clear."""
        return replace(old, present=True, tracked=False, r=old.saved_r, x=old.saved_x,
                       saved_r=False, saved_x=False)

    def gfn_to_pfn_memslot_atomic(self, gfn: int, old: Spte) -> int | bool | None:
        """Indirect sp: pin the pfn, which must be the SPTE's (False: give up); None for a direct sp."""
        if self.sp_role == "direct":
            return None
        with self.host_lock:
            pfn = self.gfn_to_pfn.get(gfn)
            ok = pfn is not None and pfn == old.pfn
            if ok:
                self.pins[pfn] = self.pins.get(pfn, 0) + 1
        if not ok:
            point(f"gfn_to_pfn_memslot_atomic(gfn {gfn}) = {pfn}: not the SPTE's pfn, give up")
            return False
        point(f"gfn_to_pfn_memslot_atomic(gfn {gfn}): pfn {pfn} pinned")
        return pfn

    def kvm_release_pfn_clean(self, pfn: int | bool | None) -> None:
        if not isinstance(pfn, int) or isinstance(pfn, bool):
            return  # nothing was pinned
        with self.host_lock:
            self.pins[pfn] -= 1
            if not self.pins[pfn]:
                del self.pins[pfn]

    def mark_page_dirty(self, gfn: int) -> None:
        with self.host_lock:
            self.dirty_bitmap.add(gfn)
        point(f"mark_page_dirty(gfn {gfn})")

    # -- the guest ---------------------------------------------------------------
    def guest_access(self, ctx: ThreadContext, vcpu: int, spte: int, write: bool = False) -> bool:
        vm = self.vcpu_mmus[vcpu]
        kind = "write" if write else "read"
        with vm.lock:  # one access: the TLB-flush IPI cannot split it
            flushed = ""
            if vm.flush_pending:
                vm.tlb.clear()
                vm.flush_pending = False
                flushed = "TLB flushed (KVM_REQ_TLB_FLUSH); "
            e = vm.tlb.get(spte)
            if e is not None and (not write or (e.w and e.d)):
                how = "TLB hit"
            else:
                s = self.spte_words[spte].walk(write, self.ad_bits)
                if s is None:
                    e = None
                else:
                    e = TlbEntry(spte, self.sp_gfn(spte), s.pfn, s.w, s.d if self.ad_bits else s.w)
                    vm.tlb[spte] = e
                how = "page walk"
            if e is not None:
                with self.host_lock:
                    self.accesses.append({"vcpu": vcpu, "gfn": e.gfn, "pfn": e.pfn, "write": write})
        if e is None:
            point(f"{flushed}guest {kind} via spte{spte} {self.spte_words[spte].read().text()}: page fault")
            return False
        point(f"{flushed}guest {kind} of gfn {e.gfn} (pfn {e.pfn}), {how}")
        return True

    # -- under mmu_lock ------------------------------------------------------------
    def _sptes_of(self, gfn: int) -> list[int]:
        return [i for i, w in enumerate(self.spte_words)
                if w.read().shadow_present and self.sp_gfn(i) == gfn]

    def map_spte(self, ctx: ThreadContext, spte: int) -> None:
        self.mmu_lock.lock(ctx.name)
        try:
            if self.spte_words[spte].read().shadow_present:
                self.mmu_spte_clear_track_bits(spte)
            gfn = self.sp_gfn(spte)
            with self.host_lock:
                pfn = self.gfn_to_pfn.get(gfn)
                faulted = pfn is None
                if faulted:
                    if self.free_pfns:
                        pfn = self.free_pfns.pop()
                    else:
                        pfn, self.next_pfn = self.next_pfn, self.next_pfn + 1
                    self.gfn_to_pfn[gfn] = pfn
            if faulted:
                point(f"gfn {gfn} faulted in: pfn {pfn}")
            new = self.make_spte(spte, pfn)
            self.spte_words[spte].write(new)
            point(f"mmu_spte_set(spte{spte}, {new.text()})")
        finally:
            self.mmu_lock.unlock()
        point("write_unlock(&kvm->mmu_lock)")

    def write_protect(self, ctx: ThreadContext, gfn: int, pt_protect: bool = True) -> None:
        self.mmu_lock.lock(ctx.name)
        try:
            if pt_protect:
                self.wp_gfns.add(gfn)
            flush = False
            for i in self._sptes_of(gfn):
                flush = self.spte_write_protect(i, pt_protect) or flush
            if flush:
                self._flush_remote_tlbs()
            if pt_protect:
                with self.host_lock:
                    self.write_protected.add(gfn)
        finally:
            self.mmu_lock.unlock()
        point("write_unlock(&kvm->mmu_lock)")

    def spte_write_protect(self, i: int, pt_protect: bool) -> bool:
        word = self.spte_words[i]
        while True:
            old = word.read()
            point(f"spte{i} = {old.text()}")
            if not old.shadow_present or not (old.w or (pt_protect and old.mmu_writable)):
                return False
            new = replace(old, w=False, mmu_writable=old.mmu_writable and not pt_protect)
            flush = self.mmu_spte_update(i, old, new)
            if flush is not None:
                return flush

    def mmu_spte_update(self, i: int, old: Spte, new: Spte) -> bool | None:
        """A volatile SPTE: cmpxchg against the value read (None if it changed: read again);
        True if it went from writable to read-only (the TLBs must be flushed)."""
        ok = self.spte_words[i].cmpxchg(old, new) == old
        point(f"mmu_spte_update(spte{i}, {new.text()}) "
              f"{'done' if ok else 'lost a race: the SPTE changed'}")
        return self.wrprot_needs_flush(old, new) if ok else None

    def wrprot_needs_flush(self, old: Spte, new: Spte) -> bool:
        return old.w and not new.w

    def host_swap_out(self, ctx: ThreadContext, gfn: int) -> None:
        self.mmu_lock.lock(ctx.name)
        try:
            pfn = self.gfn_to_pfn.get(gfn)
            if pfn is None:
                point(f"gfn {gfn} is not resident")
                return
            for i in self._sptes_of(gfn):
                self.mmu_spte_clear_track_bits(i)
            self._flush_remote_tlbs()
            with self.host_lock:
                pinned = bool(self.pins.get(pfn))
                if not pinned:
                    del self.gfn_to_pfn[gfn]
                    self.free_pfns.append(pfn)
            point(f"pfn {pfn} is pinned: not freed" if pinned else f"pfn {pfn} freed; gfn {gfn} swapped out")
        finally:
            self.mmu_lock.unlock()
            point("write_unlock(&kvm->mmu_lock)")

    def mmu_spte_clear_track_bits(self, i: int) -> None:
        """mmu_spte_clear_track_bits(): xchg when the SPTE has volatile bits."""
        word = self.spte_words[i]
        old = word.read()
        point(f"old_spte = *spte{i}: {old.text()}")
        if not self.spte_has_volatile_bits(old):
            word.write(ZERO)
            point(f"spte{i} = 0 (no volatile bits: plain store)")
        else:
            old = word.xchg(ZERO)
            point(f"old_spte = xchg(spte{i}, 0): {old.text()}")
        self.set_pfn_accessed_dirty(old)

    def set_pfn_accessed_dirty(self, old: Spte) -> None:
        marks = []
        with self.host_lock:
            if self.is_accessed_spte(old):
                self.pfn_accessed.add(old.pfn)
                marks.append(f"kvm_set_pfn_accessed({old.pfn})")
            if self.is_dirty_spte(old):
                self.pfn_dirty.add(old.pfn)
                marks.append(f"kvm_set_pfn_dirty({old.pfn})")
        if marks:
            point("; ".join(marks))

    def guest_set_gpte(self, ctx: ThreadContext, spte: int, gfn: int) -> None:
        if self.sp_role == "direct":
            point(f"guest PTE -> gfn {gfn}: a direct sp's spte{spte} keeps its gfn")
            return
        self.mmu_lock.lock(ctx.name)
        try:
            if self.spte_words[spte].read().shadow_present:
                self.mmu_spte_clear_track_bits(spte)
                self._flush_remote_tlbs()
            self.gptes[spte] = gfn
            point(f"guest PTE behind spte{spte} -> gfn {gfn}")
        finally:
            self.mmu_lock.unlock()
        point("write_unlock(&kvm->mmu_lock)")

    def clear_flush_young(self, ctx: ThreadContext, gfn: int) -> bool:
        self.mmu_lock.lock(ctx.name)
        try:
            young = False
            for i in self._sptes_of(gfn):
                word = self.spte_words[i]
                if self.ad_bits:
                    while True:  # test_and_clear_bit(Accessed)
                        old = word.read()
                        if word.cmpxchg(old, replace(old, a=False)) == old:
                            break
                    young = young or old.a
                    point(f"test_and_clear_bit(Accessed, spte{i}) = {str(old.a).lower()}")
                else:
                    young = self.mmu_spte_age(i) or young
            if young:
                self._flush_remote_tlbs()
        finally:
            self.mmu_lock.unlock()
        point("write_unlock(&kvm->mmu_lock)")
        return young

    def mmu_spte_age(self, i: int) -> bool:
        word = self.spte_words[i]
        while True:
            old = word.read()
            point(f"spte{i} = {old.text()}")
            if not old.present:
                return False
            new = self.mark_spte_for_access_track(old)
            ok = word.cmpxchg(old, new) == old
            point(f"cmpxchg(spte{i}, old, {new.text()}) {'succeeded' if ok else 'failed'}")
            if ok:
                if self.is_dirty_spte(old):
                    with self.host_lock:
                        self.pfn_dirty.add(old.pfn)
                    point(f"kvm_set_pfn_dirty({old.pfn}): it was writable")
                return True

    def mark_spte_for_access_track(self, old: Spte) -> Spte:
        """Clear R/W/X, save R/X (not W) in ignored bits."""
        return replace(old, present=False, tracked=True, r=False, w=False, x=False,
                       saved_r=old.r, saved_x=old.x)
