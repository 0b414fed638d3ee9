"""Broken variants of the SPTE model (locking.rst section 2): each breaks one rule.

Each is a reference (or threaded) machine with one kernel function replaced by
the version the document warns against; BROKEN maps each to the spec that must
catch it.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import replace

from pytest_kvmconf.backends.reference import ReferenceBackend, ReferenceMachine
from pytest_kvmconf.backends.reference.spte import Spte
from pytest_kvmconf.backends.threaded import ThreadedBackend, ThreadedMachine
from pytest_kvmconf.scheduling import Point, point

from . import running


class PlainStoreFastPath(ReferenceMachine):
    """The fast path writes its computed SPTE with a plain store instead of cmpxchg,
    so a zap or write protection between its read and its write is undone."""

    def fast_pf_fix_direct_spte(self, i: int, old: Spte, new: Spte) -> Generator[Point, None, bool]:
        self.shadow_mmu.sptes[i] = new
        yield Point(f"spte{i} = {new.text()} (plain store)")
        return True


class IndirectFastPathUnpinned(ReferenceMachine):
    """Fast page fault enabled on indirect shadow pages without pinning the pfn: the ABA of
    section 2 (1) dirty-logs gfn1 while the SPTE now maps gfn2."""

    def fast_path_allowed(self) -> bool:
        return True

    def gfn_to_pfn_memslot_atomic(self, gfn: int, old: Spte) -> Generator[Point, None, None]:
        return None
        yield  # a generator that pins nothing


class NonAtomicClearTrackBits(ReferenceMachine):
    """The "origin code": a read-only SPTE with Accessed set counts as not volatile, so
    mmu_spte_clear_track_bits() zaps it with a plain store after reading it; a W and D set
    in between by the fast path and the guest are lost."""

    def spte_has_volatile_bits(self, s: Spte) -> bool:
        if s.present and s.a and not s.w:
            return False
        return super().spte_has_volatile_bits(s)


class NoFlushOnWriteProtect(ReferenceMachine):
    """mmu_spte_update() never asks for a TLB flush when it makes an SPTE read-only."""

    def wrprot_needs_flush(self, old: Spte, new: Spte) -> bool:
        return False


class FlushDecisionFromStaleRead(ReferenceMachine):
    """Write protection decides on the TLB flush from a plain read of the SPTE, then xchg()s
    the read-only value: W set by the fast path in between is overwritten without a flush."""

    def spte_write_protect(self, i: int, pt_protect: bool) -> Generator[Point, None, bool]:
        m = self.shadow_mmu
        old = m.sptes[i]
        yield Point(f"spte{i} = {old.text()}")
        if not old.shadow_present or not (old.w or (pt_protect and old.mmu_writable)):
            return False
        m.sptes[i] = replace(m.sptes[i], w=False, mmu_writable=old.mmu_writable and not pt_protect)
        yield Point(f"xchg(spte{i}, read-only)")
        return old.w


class RestoresWOnRead(ReferenceMachine):
    """Access tracking keeps the W bit, so a read fault restores a writable SPTE."""

    def mark_spte_for_access_track(self, old: Spte) -> Spte:
        return replace(super().mark_spte_for_access_track(old), w=old.w)


class RestoresWritableOnRead(ReferenceMachine):
    """Restoration of an access-tracked SPTE sets W whenever the SPTE is Host- and
    MMU-writable, also on a read access."""

    def fast_pf_new_spte(self, old: Spte, write: bool) -> Spte | None:
        new = super().fast_pf_new_spte(old, write)
        if new is not None and old.tracked and old.host_writable and old.mmu_writable:
            new = replace(new, w=True)
        return new


class RestoresWithoutSavedRX(ReferenceMachine):
    """Restoration of an access-tracked SPTE makes it readable and executable whatever
    R/X bits were saved."""

    def restore_acc_track_spte(self, old: Spte) -> Spte:
        return replace(super().restore_acc_track_spte(old), r=True, x=True)


class ZapWithoutPropagation(ReferenceMachine):
    """mmu_spte_clear_track_bits() zaps the SPTE but forgets to hand its Dirty bit to the pfn."""

    def set_pfn_accessed_dirty(self, old: Spte) -> Generator[Point, None, None]:
        yield from ()  # the zapped SPTE's A/D bits are dropped


class AccessedNotPropagated(ReferenceMachine):
    """mmu_spte_clear_track_bits() hands the Dirty bit to the pfn but forgets Accessed."""

    def set_pfn_accessed_dirty(self, old: Spte) -> Generator[Point, None, None]:
        if self.is_dirty_spte(old):
            self.shadow_mmu.pfn_dirty.add(old.pfn)
            yield Point(f"kvm_set_pfn_dirty({old.pfn})")


class NonAtomicRestore(ReferenceMachine):
    """The fast path restores an access-tracked SPTE with a plain store (it only uses
    cmpxchg to set W on a present one)."""

    def fast_pf_fix_direct_spte(self, i: int, old: Spte, new: Spte) -> Generator[Point, None, bool]:
        if not old.tracked:
            return (yield from super().fast_pf_fix_direct_spte(i, old, new))
        self.shadow_mmu.sptes[i] = new
        yield Point(f"spte{i} = {new.text()} (plain store)")
        return True


# The same mistakes in the threaded backend, a real concurrent program.

class ThreadedPlainStoreFastPath(ThreadedMachine):
    """The threaded fast path writes the SPTE word with a plain store instead of cmpxchg64."""

    def fast_pf_fix_direct_spte(self, i: int, old: Spte, new: Spte) -> bool:
        self.spte_words[i].write(new)
        point(f"spte{i} = {new.text()} (plain store)")
        return True


class ThreadedNonAtomicClearTrackBits(ThreadedMachine):
    """The threaded mmu_spte_clear_track_bits() with the "origin code" test for volatile bits."""

    def spte_has_volatile_bits(self, s: Spte) -> bool:
        if s.present and s.a and not s.w:
            return False
        return super().spte_has_volatile_bits(s)


def backend(machine: type) -> ReferenceBackend | ThreadedBackend:
    return running(machine, f"broken-{machine.__name__}")


#: broken machine -> the guarantee that must catch it.
BROKEN: dict[type, str] = {
    PlainStoreFastPath: "SPTE-01",
    IndirectFastPathUnpinned: "SPTE-02",
    NonAtomicClearTrackBits: "SPTE-03.a",  # and SPTE-03 (the threaded variant is judged by that one)
    ZapWithoutPropagation: "SPTE-03.a",
    AccessedNotPropagated: "SPTE-03",  # the Accessed bit: only the texts up to 6.12 speak of it
    NoFlushOnWriteProtect: "SPTE-04",
    FlushDecisionFromStaleRead: "SPTE-04",
    RestoresWOnRead: "SPTE-05",
    RestoresWritableOnRead: "SPTE-05",
    RestoresWithoutSavedRX: "SPTE-05",
    NonAtomicRestore: "SPTE-05",
    ThreadedPlainStoreFastPath: "SPTE-01",
    ThreadedNonAtomicClearTrackBits: "SPTE-03",
}
