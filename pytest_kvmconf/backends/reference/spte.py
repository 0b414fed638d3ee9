"""Model of locking.rst section 2: SPTEs changed out of mmu_lock by the fast
page fault path and by hardware (Accessed/Dirty), and under mmu_lock by write
protection, zapping and access tracking.

Every read, write, cmpxchg and xchg of an SPTE is its own scheduling point, so
the engine can put another thread between the fast path's read of the old
SPTE and its cmpxchg, or between mmu_spte_clear_track_bits()' read and its
store: the windows the document's tables draw. A guest access is one step
(a vCPU's access cannot be split by the TLB-flush IPI that waits for it).

Each kernel function is a small method, so a broken variant overrides one.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field, replace
from typing import Any

from ...backend import MachineConfig, ThreadContext
from ...facets.spte import PFN_BASE, spte_observables
from ...scheduling import Point, Wait

Steps = Generator[Point | Wait, None, Any]

#: fast_page_fault() gives up after this many failed cmpxchgs (the kernel's retry_count > 4).
FAST_PF_RETRIES = 4


@dataclass(frozen=True)
class Spte:
    """One SPTE's bits. Equality is bit equality: what cmpxchg compares."""

    present: bool = False
    r: bool = False
    w: bool = False
    x: bool = False
    a: bool = False
    d: bool = False
    host_writable: bool = False
    mmu_writable: bool = False
    tracked: bool = False  # marked for access tracking (not present, R/X saved)
    saved_r: bool = False
    saved_x: bool = False
    pfn: int = -1

    @property
    def shadow_present(self) -> bool:
        """The SPTE maps a pfn (present, or not present only for access tracking)."""
        return self.present or self.tracked

    def text(self) -> str:
        if not self.shadow_present:
            return "0"
        bits = [b for b, on in (("P", self.present), ("R", self.r), ("W", self.w), ("X", self.x),
                                ("A", self.a), ("D", self.d), ("HW", self.host_writable),
                                ("MW", self.mmu_writable)) if on]
        if self.tracked:
            bits.append(f"TRACKED(saved {'R' if self.saved_r else ''}{'X' if self.saved_x else ''})")
        return f"{{{' '.join(bits)} pfn={self.pfn}}}"


ZERO = Spte()


@dataclass(frozen=True)
class TlbEntry:
    spte: int
    gfn: int
    pfn: int
    w: bool
    d: bool


@dataclass
class ShadowMmu:
    role: str
    ad_bits: bool
    sptes: list[Spte]
    gptes: list[int]  # indirect sp: the gfn the guest PTE behind each SPTE points to
    gfn_to_pfn: dict[int, int]
    next_pfn: int
    nr_vcpus: int
    free_pfns: list[int] = field(default_factory=list)
    pinned: dict[int, int] = field(default_factory=dict)
    wp_gfns: set[int] = field(default_factory=set)  # the MMU's record: gfn is write-protected
    write_protected: set[int] = field(default_factory=set)  # protection returned: relied on
    dirty_bitmap: set[int] = field(default_factory=set)
    pfn_dirty: set[int] = field(default_factory=set)
    pfn_accessed: set[int] = field(default_factory=set)
    accesses: list[dict[str, Any]] = field(default_factory=list)
    tlbs: list[dict[int, TlbEntry]] = field(default_factory=list)
    flush_pending: list[bool] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)
    mmu_lock: str | None = None


class SpteModel:
    """Facet mixin: spte."""

    #: Run the fast path on indirect shadow pages too, pinning the pfn first
    #: (the document's "solution for indirect sp"); False disables it there.
    pin_indirect: bool = False

    def init_spte(self, config: MachineConfig) -> None:
        opts = config.options
        role = opts.get("sp", "direct")
        if role not in ("direct", "indirect"):
            raise ValueError(f"machine option sp must be 'direct' or 'indirect', not {role!r}")
        if opts.get("tracked", False) and opts.get("ad_bits", True):
            raise ValueError("machine option tracked needs ad_bits = false (access tracking)")
        n = int(opts.get("nsptes", 2))
        m = ShadowMmu(role=role, ad_bits=bool(opts.get("ad_bits", True)), sptes=[ZERO] * n,
                      gptes=list(range(n)), gfn_to_pfn={g: PFN_BASE + g for g in range(n)},
                      next_pfn=PFN_BASE + n, nr_vcpus=config.vcpus)
        m.tlbs = [{} for _ in range(config.vcpus)]
        m.flush_pending = [False] * config.vcpus
        self.shadow_mmu = m
        for i in range(n):
            m.sptes[i] = self.make_spte(i, m.gfn_to_pfn[i])
            if opts.get("tracked", False):
                m.sptes[i] = self.mark_spte_for_access_track(m.sptes[i])

    def observe_spte(self) -> dict[str, Any]:
        m = self.shadow_mmu
        return spte_observables(
            sptes=m.sptes, sp_gfn=self.sp_gfn, gfn_to_pfn=m.gfn_to_pfn, is_dirty=self.is_dirty_spte,
            is_accessed=self.is_accessed_spte, dirty_bitmap=m.dirty_bitmap, pfn_dirty=m.pfn_dirty,
            pfn_accessed=m.pfn_accessed, accesses=m.accesses, tlbs=(t.values() for t in m.tlbs),
            flush_pending=m.flush_pending, write_protected=m.write_protected, faults=m.faults,
            mmu_lock_held=m.mmu_lock is not None, sp_role=m.role, ad_bits=m.ad_bits)

    # -- SPTE helpers ---------------------------------------------------------
    def sp_gfn(self, i: int) -> int:
        """The gfn SPTE i translates: fixed for a direct sp, the guest PTE's for an indirect one."""
        m = self.shadow_mmu
        return i if m.role == "direct" else m.gptes[i]

    def make_spte(self, i: int, pfn: int) -> Spte:
        """make_spte() of the slow path: present, readable, read-only (dirty logging)."""
        m = self.shadow_mmu
        return Spte(present=True, r=True, x=i == 0, a=m.ad_bits, host_writable=True,
                    mmu_writable=self.sp_gfn(i) not in m.wp_gfns, pfn=pfn)

    def is_dirty_spte(self, s: Spte) -> bool:
        """is_dirty_spte(): D with A/D bits; without them a writable SPTE counts as dirty."""
        return s.present and (s.d if self.shadow_mmu.ad_bits else s.w)

    def is_accessed_spte(self, s: Spte) -> bool:
        return s.present and (s.a if self.shadow_mmu.ad_bits else True)

    def spte_has_volatile_bits(self, s: Spte) -> bool:
        """spte_has_volatile_bits(): can the SPTE change out of mmu_lock?"""
        if not s.shadow_present:
            return False
        if s.tracked or (s.host_writable and s.mmu_writable):
            return True  # the fast path may restore it or make it writable
        return self.shadow_mmu.ad_bits and (not s.a or (s.w and not s.d))  # hardware may set A/D

    def is_access_allowed(self, s: Spte, write: bool) -> bool:
        return s.present and (s.w if write else s.r)

    def _mmu_lock(self, who: str) -> Steps:
        m = self.shadow_mmu
        # Uncontended, taking the lock is part of the first step under it: a switch just
        # before it is the same interleaving as a switch before the operation started.
        if m.mmu_lock is not None:
            yield Wait("write_lock(&kvm->mmu_lock): contended", lambda: m.mmu_lock is None)
        m.mmu_lock = who

    def _mmu_unlock(self) -> Steps:
        self.shadow_mmu.mmu_lock = None
        yield Point("write_unlock(&kvm->mmu_lock)")

    def _flush_remote_tlbs(self) -> Steps:
        """kvm_flush_remote_tlbs(): KVM_REQ_TLB_FLUSH to every vCPU; a vCPU handles it before
        it next runs guest code (REQ-22), so the request is the flush as far as the guest sees."""
        m = self.shadow_mmu
        m.flush_pending = [True] * m.nr_vcpus
        yield Point("kvm_flush_remote_tlbs(): KVM_REQ_TLB_FLUSH to every vCPU")

    # -- the fast page fault path (out of mmu_lock) ---------------------------
    def fast_page_fault(self, ctx: ThreadContext, vcpu: int, spte: int, write: bool = False) -> Steps:
        m = self.shadow_mmu
        gfn = self.sp_gfn(spte)  # from the guest's walk, before the SPTE is read
        fault = {"vcpu": vcpu, "spte": spte, "write": write}
        m.faults.append(fault)
        result = yield from self._fast_page_fault(spte, gfn, write)
        m.faults.remove(fault)
        return result

    def fast_path_allowed(self) -> bool:
        m = self.shadow_mmu
        return m.role == "direct" or self.pin_indirect

    def _fast_page_fault(self, i: int, gfn: int, write: bool) -> Steps:
        m = self.shadow_mmu
        if not self.fast_path_allowed():
            yield Point("indirect shadow page: fast page fault disabled, take the slow path")
            return "slow"
        for _ in range(1 + FAST_PF_RETRIES):
            old = m.sptes[i]
            yield Point(f"{'write' if write else 'read'} fault, gfn {gfn}: old_spte = *spte{i}: {old.text()}")
            if self.is_access_allowed(old, write):
                yield Point("access allowed already: spurious fault")
                return "spurious"
            new = self.fast_pf_new_spte(old, write)
            if new is None:
                yield Point("cannot be fixed out of mmu_lock: slow path")
                return "slow"
            pinned = yield from self.gfn_to_pfn_memslot_atomic(gfn, old)
            if pinned is False:
                return "slow"
            ok = yield from self.fast_pf_fix_direct_spte(i, old, new)
            if ok and new.w and not old.w:
                yield from self.mark_page_dirty(gfn)
            self.kvm_release_pfn_clean(pinned)
            if ok:
                return "fixed"
        yield Point("too many retries: slow path")
        return "slow"

    def fast_pf_new_spte(self, old: Spte, write: bool) -> Spte | None:
        """The value the fast path wants: restore an access-tracked SPTE's R/X, and set W on a
        write when Host-writable and MMU-writable; None if that does not allow the access."""
        if not old.shadow_present:
            return None
        new = self.restore_acc_track_spte(old) if old.tracked else old
        if write and old.host_writable and old.mmu_writable:
            new = replace(new, w=True)
        if new == old or not self.is_access_allowed(new, write):
            return None
        return new

    def restore_acc_track_spte(self, old: Spte) -> Spte:
        """restore_acc_track_spte(): present again with the saved R/X; W stays clear."""
        return replace(old, present=True, tracked=False, r=old.saved_r, x=old.saved_x,
                       saved_r=False, saved_x=False)

    def gfn_to_pfn_memslot_atomic(self, gfn: int, old: Spte) -> Generator[Point | Wait, None, int | bool | None]:
        """For an indirect sp: gfn_to_pfn_memslot_atomic(gfn) holds a reference on the pfn, so it
        cannot be freed and reused for another gfn; it must be the pfn the SPTE maps."""
        m = self.shadow_mmu
        if m.role == "direct":
            return None
        pfn = m.gfn_to_pfn.get(gfn)
        if pfn is None or pfn != old.pfn:
            yield Point(f"gfn_to_pfn_memslot_atomic(gfn {gfn}) = {pfn}: not the SPTE's pfn, give up")
            return False
        m.pinned[pfn] = m.pinned.get(pfn, 0) + 1
        yield Point(f"gfn_to_pfn_memslot_atomic(gfn {gfn}): pfn {pfn} pinned")
        return pfn

    def kvm_release_pfn_clean(self, pfn: int | bool | None) -> None:
        if isinstance(pfn, int) and not isinstance(pfn, bool):
            m = self.shadow_mmu
            m.pinned[pfn] -= 1
            if not m.pinned[pfn]:
                del m.pinned[pfn]

    def fast_pf_fix_direct_spte(self, i: int, old: Spte, new: Spte) -> Generator[Point, None, bool]:
        m = self.shadow_mmu
        ok = m.sptes[i] == old
        if ok:
            m.sptes[i] = new
        yield Point(f"cmpxchg(spte{i}, old_spte, {new.text()}) "
                    f"{'succeeded' if ok else 'failed: the SPTE changed'}")
        return ok

    def mark_page_dirty(self, gfn: int) -> Steps:
        self.shadow_mmu.dirty_bitmap.add(gfn)
        yield Point(f"mark_page_dirty(gfn {gfn})")

    # -- the guest ------------------------------------------------------------
    def guest_access(self, ctx: ThreadContext, vcpu: int, spte: int, write: bool = False) -> Steps:
        m = self.shadow_mmu
        tlb = m.tlbs[vcpu]
        flushed = ""
        if m.flush_pending[vcpu]:
            tlb.clear()
            m.flush_pending[vcpu] = False
            flushed = "TLB flushed (KVM_REQ_TLB_FLUSH); "
        kind = "write" if write else "read"
        e = tlb.get(spte)
        if e is not None and (not write or (e.w and e.d)):
            how = "TLB hit"
        else:
            s = m.sptes[spte]
            if not self.is_access_allowed(s, write):
                yield Point(f"{flushed}guest {kind} via spte{spte} {s.text()}: page fault")
                return False
            if m.ad_bits:
                s = replace(s, a=True, d=s.d or write)  # set atomically by the page walker
                m.sptes[spte] = s
            e = TlbEntry(spte, self.sp_gfn(spte), s.pfn, s.w, s.d if m.ad_bits else s.w)
            tlb[spte] = e
            how = "page walk"
        m.accesses.append({"vcpu": vcpu, "gfn": e.gfn, "pfn": e.pfn, "write": write})
        yield Point(f"{flushed}guest {kind} of gfn {e.gfn} (pfn {e.pfn}), {how}")
        return True

    # -- under mmu_lock -------------------------------------------------------
    def map_spte(self, ctx: ThreadContext, spte: int) -> Steps:
        m = self.shadow_mmu
        yield from self._mmu_lock(ctx.name)
        if m.sptes[spte].shadow_present:
            yield from self.mmu_spte_clear_track_bits(spte)
        gfn = self.sp_gfn(spte)
        pfn = m.gfn_to_pfn.get(gfn)
        if pfn is None:
            if m.free_pfns:
                pfn = m.free_pfns.pop()
            else:
                pfn = m.next_pfn
                m.next_pfn += 1
            m.gfn_to_pfn[gfn] = pfn
            yield Point(f"gfn {gfn} faulted in: pfn {pfn}")
        new = self.make_spte(spte, pfn)
        m.sptes[spte] = new
        yield Point(f"mmu_spte_set(spte{spte}, {new.text()})")
        yield from self._mmu_unlock()

    def write_protect(self, ctx: ThreadContext, gfn: int, pt_protect: bool = True) -> Steps:
        m = self.shadow_mmu
        yield from self._mmu_lock(ctx.name)
        if pt_protect:
            m.wp_gfns.add(gfn)
        flush = False
        for i in self._sptes_of(gfn):
            flush = (yield from self.spte_write_protect(i, pt_protect)) or flush
        if flush:
            yield from self._flush_remote_tlbs()
        if pt_protect:
            m.write_protected.add(gfn)
        yield from self._mmu_unlock()

    def _sptes_of(self, gfn: int) -> list[int]:
        """The rmap of @gfn: the shadow-present SPTEs translating it."""
        m = self.shadow_mmu
        return [i for i, s in enumerate(m.sptes) if s.shadow_present and self.sp_gfn(i) == gfn]

    def spte_write_protect(self, i: int, pt_protect: bool) -> Generator[Point, None, bool]:
        """spte_write_protect(): returns whether a TLB flush is needed."""
        m = self.shadow_mmu
        while True:
            old = m.sptes[i]
            yield Point(f"spte{i} = {old.text()}")
            if not old.shadow_present or not (old.w or (pt_protect and old.mmu_writable)):
                return False
            new = replace(old, w=False, mmu_writable=old.mmu_writable and not pt_protect)
            flush = yield from self.mmu_spte_update(i, old, new)
            if flush is not None:
                return flush

    def mmu_spte_update(self, i: int, old: Spte, new: Spte) -> Generator[Point, None, bool | None]:
        """mmu_spte_update() of a volatile SPTE: an atomic update against the value read (None
        if it changed: read again); True if it went from writable to read-only (flush)."""
        m = self.shadow_mmu
        ok = m.sptes[i] == old
        if ok:
            m.sptes[i] = new
        yield Point(f"mmu_spte_update(spte{i}, {new.text()}) "
                    f"{'done' if ok else 'lost a race: the SPTE changed'}")
        if not ok:
            return None
        return self.wrprot_needs_flush(old, new)

    def wrprot_needs_flush(self, old: Spte, new: Spte) -> bool:
        return old.w and not new.w

    def host_swap_out(self, ctx: ThreadContext, gfn: int) -> Steps:
        m = self.shadow_mmu
        yield from self._mmu_lock(ctx.name)
        pfn = m.gfn_to_pfn.get(gfn)
        if pfn is None:
            yield Point(f"gfn {gfn} is not resident")
            yield from self._mmu_unlock()
            return
        for i in self._sptes_of(gfn):
            yield from self.mmu_spte_clear_track_bits(i)
        yield from self._flush_remote_tlbs()
        if m.pinned.get(pfn):
            yield Point(f"pfn {pfn} is pinned: not freed")
        else:
            del m.gfn_to_pfn[gfn]
            m.free_pfns.append(pfn)
            yield Point(f"pfn {pfn} freed; gfn {gfn} swapped out")
        yield from self._mmu_unlock()

    def mmu_spte_clear_track_bits(self, i: int) -> Steps:
        """mmu_spte_clear_track_bits(): zap the SPTE, then propagate its A/D bits to the pfn."""
        m = self.shadow_mmu
        old = m.sptes[i]
        yield Point(f"old_spte = *spte{i}: {old.text()}")
        if not self.spte_has_volatile_bits(old):
            m.sptes[i] = ZERO
            yield Point(f"spte{i} = 0 (no volatile bits: plain store)")
        else:
            old = m.sptes[i]
            m.sptes[i] = ZERO
            yield Point(f"old_spte = xchg(spte{i}, 0): {old.text()}")
        yield from self.set_pfn_accessed_dirty(old)

    def set_pfn_accessed_dirty(self, old: Spte) -> Steps:
        m = self.shadow_mmu
        marks = []
        if self.is_accessed_spte(old):
            m.pfn_accessed.add(old.pfn)
            marks.append(f"kvm_set_pfn_accessed({old.pfn})")
        if self.is_dirty_spte(old):
            m.pfn_dirty.add(old.pfn)
            marks.append(f"kvm_set_pfn_dirty({old.pfn})")
        if marks:
            yield Point("; ".join(marks))

    def guest_set_gpte(self, ctx: ThreadContext, spte: int, gfn: int) -> Steps:
        m = self.shadow_mmu
        if m.role == "direct":
            yield Point(f"guest PTE -> gfn {gfn}: a direct sp's spte{spte} keeps its gfn")
            return
        yield from self._mmu_lock(ctx.name)
        if m.sptes[spte].shadow_present:
            yield from self.mmu_spte_clear_track_bits(spte)
            yield from self._flush_remote_tlbs()
        m.gptes[spte] = gfn
        yield Point(f"guest PTE behind spte{spte} -> gfn {gfn}")
        yield from self._mmu_unlock()

    def clear_flush_young(self, ctx: ThreadContext, gfn: int) -> Steps:
        m = self.shadow_mmu
        yield from self._mmu_lock(ctx.name)
        young = False
        for i in self._sptes_of(gfn):
            if m.ad_bits:
                s = m.sptes[i]
                if s.a:
                    m.sptes[i] = replace(s, a=False)  # clear_bit(): an atomic RMW
                    young = True
                yield Point(f"test_and_clear_bit(Accessed, spte{i}) = {str(s.a).lower()}")
            else:
                young = (yield from self.mmu_spte_age(i)) or young
        if young:
            yield from self._flush_remote_tlbs()
        yield from self._mmu_unlock()
        return young

    def mmu_spte_age(self, i: int) -> Generator[Point, None, bool]:
        m = self.shadow_mmu
        while True:
            old = m.sptes[i]
            yield Point(f"spte{i} = {old.text()}")
            if not old.present:
                return False
            new = self.mark_spte_for_access_track(old)
            ok = m.sptes[i] == old
            if ok:
                m.sptes[i] = new
            yield Point(f"cmpxchg(spte{i}, old, {new.text()}) {'succeeded' if ok else 'failed'}")
            if ok:
                if self.is_dirty_spte(old):
                    m.pfn_dirty.add(old.pfn)
                    yield Point(f"kvm_set_pfn_dirty({old.pfn}): it was writable")
                return True

    def mark_spte_for_access_track(self, old: Spte) -> Spte:
        """mark_spte_for_access_track(): clear R/W/X, save R/X (not W) in ignored bits."""
        return replace(old, present=False, tracked=True, r=False, w=False, x=False,
                       saved_r=old.r, saved_x=old.x)
