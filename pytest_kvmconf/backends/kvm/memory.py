"""The memslots facet on a real VM: a data memslot the guest writes while userspace changes it.

:class:`MemoryOps` is a mixin of :class:`.machine.KvmMachine`. With the machine option
``data_slot`` set, the VM gets a second memslot (slot 1, :data:`.memguest.DATA_GPA`) backed
by a memfd, every vCPU runs the writer guest of :mod:`.memguest` in a run loop of its own
(a VMM's: KVM_RUN again after each exit, MMIO writes recorded), and the specs' threads change
the slot, its host mapping or its dirty log underneath.

What userspace can observe, and how this module observes it:

* *Frozen memory.* Each backing memfd has a second, private view mapping, which KVM never
  sees. When an operation returns after which no memslot maps a backing writably at the
  GPA the guest writes (the slot deleted, moved, made read-only, or the host mapping
  replaced under it), the backing's content is snapshotted; any later difference is a guest
  write through the old mapping after the kernel said it was gone (``mem.stray``).
* *Dirty logs.* A migration copy of the data region starts as its (zeroed) content; each
  harvest copies the reported pages *after* re-protecting them. After the guests stopped and
  a last harvest, a page whose copy differs from memory was written and never reported
  (``mem.copy_stale``): every guest write carries its pass number, so a lost dirty bit shows.
* *Guest progress.* Every wait is on the guest's own pass counter (in guest memory), bounded
  by :data:`EVIDENCE_BOUND`; a bound exceeded makes the example "undecided under load"
  (``mem.undecided``), which no check counts as a violation.
* *Hangs.* Operations that may block in the kernel run on a helper thread with the bound
  :data:`OP_BOUND`; past it, the threads of the VM are sampled in /proc: only when all of them
  slept and used no CPU time for :data:`QUIET` seconds is it a deadlock (``mem.hangs``),
  otherwise the example is undecided.

What it cannot see: the kernel's TLBs, SPTEs and requests themselves (only their effect on
guest writes), a write that lands and is overwritten with the same value, and anything a
guest does not write (reads through a stale mapping).
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from ...backend import MachineConfig
from ...scheduling import Point
from ...spec.expr import Expr
from . import memguest, memuapi, uapi

Steps = Generator[Point, None, Any]

DATA_SLOT = 1
SCRATCH_SLOT = 2
SCRATCH_GPA = 0x20000
#: Longest wait for guest progress (passes) before an example is undecided under load.
EVIDENCE_BOUND = 3.0
#: Longest an operation may block before its threads are examined for a deadlock.
OP_BOUND = 2.0
#: How long every thread must sleep without using CPU time to count as deadlocked.
QUIET = 1.0
#: Pause of a run loop after an MMIO exit (seconds).
MMIO_PAUSE = 0.0002
#: Dirty ring size in bytes per vCPU: the largest the kernel allows (KVM_DIRTY_RING_MAX_ENTRIES
#: entries, 1 MiB), so that the guests rarely fill it between two harvests. A full ring is
#: harvested by the run loop as the document asks, but a kernel that pushes more than its
#: reserved entries before the exit overwrites entries: kvm_pvm's real-mode emulation pushes
#: one per emulated write, up to a batch of 1024 instructions (a WARN in kvm_dirty_ring_push).
RING_BYTES = 1 << 20
ENTRY = ctypes.sizeof(memuapi.kvm_dirty_gfn)

DATA_SLOT_MODES = {
    "plain": "a writable slot, no dirty logging",
    "dirty_bitmap": "KVM_MEM_LOG_DIRTY_PAGES, harvested with KVM_GET_DIRTY_LOG",
    "dirty_manual": "KVM_MEM_LOG_DIRTY_PAGES with KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: "
                    "KVM_GET_DIRTY_LOG, then KVM_CLEAR_DIRTY_LOG re-protects",
    "dirty_ring": "KVM_MEM_LOG_DIRTY_PAGES with KVM_CAP_DIRTY_LOG_RING(_ACQ_REL): per-vCPU rings, "
                  "KVM_RESET_DIRTY_RINGS re-protects",
}
MEMORY_OPTIONS = {"data_slot": "the memslots facet's data slot: " + "; ".join(
    f"{k}: {d}" for k, d in DATA_SLOT_MODES.items())}
#: The capability each mode needs beyond the base ones: (cap, its name).
MODE_CAPS = {
    "dirty_manual": ((memuapi.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2"),),
    "dirty_ring": ((memuapi.KVM_CAP_DIRTY_LOG_RING, "KVM_CAP_DIRTY_LOG_RING"),),
}


@dataclass
class Backing:
    """One memfd behind the data region: ``hva`` is where KVM is told it is (0 once the
    mapping was replaced), ``view`` a mapping of the same pages only this module reads."""

    index: int
    fd: int
    hva: int
    view: int
    frozen: bytes | None = None
    frozen_since: str = ""


@dataclass
class Region:
    """A memslot as the last successful KVM_SET_USER_MEMORY_REGION left it."""

    gpa: int
    hva: int
    flags: int


class MemoryOps:
    """The memslots facet's operations and observables, mixed into KvmMachine."""

    vm: Any
    config: MachineConfig

    # -- hooks called by KvmMachine ----------------------------------------------
    def _memory_init(self, config: MachineConfig) -> None:
        mode = config.options.get("data_slot")
        if mode is not None and mode not in DATA_SLOT_MODES:
            raise ValueError(f"the kvm backend has no data_slot mode {mode!r} (it has {', '.join(DATA_SLOT_MODES)})")
        self.data_mode: str | None = mode
        self.mem_lock = threading.RLock()
        self.backings: list[Backing] = []
        self.slots: dict[int, Region] = {}
        self.loops: dict[int, RunLoop] = {}
        self.stray: list[dict[str, Any]] = []
        self.mmio_writes = 0
        self.run_errors: list[str] = []
        self.mem_undecided = ""
        self.lost_track = False
        self.hangs: list[str] = []
        self.copy = bytearray(memguest.DATA_SIZE)
        self.harvests = 0
        self.ring_full_exits = 0
        self.reported = 0
        self.final_harvest = False
        self.rings: dict[int, tuple[int, int]] = {}  # vcpu -> (address, fetch index)
        self.scratch: Backing | None = None
        self.mem_fds: list[int] = []
        #: vCPUs created by create_vcpu: this module's to close (the mp facet sees the VM's own).
        self.extra_vcpus: list[Any] = []
        self.vm_fd = -1
        self.ring_bytes = RING_BYTES
        #: One harvest of the rings at a time: the migration thread's, or a run loop's on a full ring.
        self.ring_lock = threading.Lock()
        self.op_bound, self.quiet = OP_BOUND, QUIET

    def _memory_before_vcpus(self, vm: Any) -> None:
        """After KVM_CREATE_VM and slot 0, before any vCPU (the dirty ring must be enabled then)."""
        if self.data_mode is None:
            return
        self.vm_fd = vm.fd
        memguest.load(vm.ram)
        if self.data_mode == "dirty_manual":
            cap = uapi.kvm_enable_cap(cap=memuapi.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)
            cap.args[0] = memuapi.KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE
            uapi.ioctl(vm.fd, uapi.KVM_ENABLE_CAP, cap, "KVM_ENABLE_CAP(MANUAL_DIRTY_LOG_PROTECT2)")
        if self.data_mode == "dirty_ring":
            which = memuapi.KVM_CAP_DIRTY_LOG_RING_ACQ_REL
            if uapi.ioctl(vm.fd, uapi.KVM_CHECK_EXTENSION, which, "KVM_CHECK_EXTENSION") <= 0:
                which = memuapi.KVM_CAP_DIRTY_LOG_RING
            cap = uapi.kvm_enable_cap(cap=which)
            largest = uapi.ioctl(vm.fd, uapi.KVM_CHECK_EXTENSION, which, "KVM_CHECK_EXTENSION")
            self.ring_bytes = min(RING_BYTES, largest) if largest > 0 else RING_BYTES
            cap.args[0] = self.ring_bytes
            uapi.ioctl(vm.fd, uapi.KVM_ENABLE_CAP, cap, "KVM_ENABLE_CAP(DIRTY_LOG_RING)")
        b = self._new_backing(0)
        flags = memuapi.KVM_MEM_LOG_DIRTY_PAGES if self.data_mode.startswith("dirty") else 0
        self._set_region(DATA_SLOT, memguest.DATA_GPA, b.hva, flags, "create")

    def _memory_after_vcpus(self) -> None:
        if self.data_mode == "dirty_ring":
            for v in self._vcpus():
                self._map_ring(v)

    def _memory_observe(self) -> dict[str, Any]:
        if self.data_mode is None:
            return {}
        with self.mem_lock:
            self._check_frozen()
            state = {
                "mode": self.data_mode,
                "undecided": self.mem_undecided,
                "gens": [memguest.gen(self.vm.ram, i) for i in range(len(self._vcpus()))] if self.vm else [],
                "running": len(self.loops),
                "stray": tuple(self.stray),
                "frozen": sum(1 for b in self.backings if b.frozen is not None),
                "mmio_writes": self.mmio_writes,
                "harvests": self.harvests,
                "reported": self.reported,
                "copy_stale": self._copy_stale(),
                "hangs": tuple(self.hangs),
                "corrupt": self._corrupt(),
                "run_errors": tuple(self.run_errors),
            }
        evidence = state["stray"] or state["copy_stale"] or state["corrupt"]
        if self.mem_undecided and not state["hangs"] and (self.lost_track or not evidence):
            # The engine's notion (a live machine's ``undecided``): the example decides nothing.
            # Evidence of a violation decides it whatever the timing, unless an operation that
            # did not return may have changed the memslots behind the observers' back.
            self.undecided = self.mem_undecided
        return {"mem": state}

    def _memory_close(self) -> None:
        loops, self.loops = self.loops, {}
        stop_all(loops)
        for v in self.extra_vcpus:
            v.stop()
        self.extra_vcpus.clear()
        for addr, _ in self.rings.values():
            uapi.unmap_memory(addr, self.ring_bytes)
        self.rings.clear()
        for b in self.backings + ([self.scratch] if self.scratch else []):
            if b.hva:
                uapi.unmap_memory(b.hva, memguest.DATA_SIZE)
                b.hva = 0
            if b.view:
                uapi.unmap_memory(b.view, memguest.DATA_SIZE)
                b.view = 0
        for fd in self.mem_fds:
            os.close(fd)
        self.mem_fds.clear()

    def _vcpus(self) -> list[Any]:
        return (list(self.vm.vcpus) if self.vm is not None else []) + self.extra_vcpus

    # -- backings and memslots ----------------------------------------------------
    def _new_backing(self, hva: int) -> Backing:
        """A fresh zeroed memfd, mapped at ``hva`` (MAP_FIXED over what is there) or anywhere."""
        fd = memuapi.memfd(memguest.DATA_SIZE, f"kvmconf-data{len(self.backings)}")
        self.mem_fds.append(fd)
        at = memuapi.map_shared(fd, memguest.DATA_SIZE, at=hva)
        view = memuapi.map_shared(fd, memguest.DATA_SIZE)
        b = Backing(len(self.backings), fd, at, view)
        self.backings.append(b)
        return b

    def _set_region(self, slot: int, gpa: int, hva: int, flags: int, why: str) -> int:
        size = memguest.DATA_SIZE if hva else 0
        region = uapi.kvm_userspace_memory_region(slot=slot, flags=flags, guest_phys_addr=gpa,
                                                  memory_size=size, userspace_addr=hva)
        with self.mem_lock:
            self._check_frozen()  # before a change that may make a frozen backing writable again
        ret = self._vm_ioctl(uapi.KVM_SET_USER_MEMORY_REGION, region, f"KVM_SET_USER_MEMORY_REGION({why})")
        if ret == 0:
            if size:
                self.slots[slot] = Region(gpa, hva, flags)
            else:
                self.slots.pop(slot, None)
            self._refreeze(f"after {why} returned")
        return ret

    def _vm_ioctl(self, request: int, arg: Any, label: str) -> int:
        """A VM ioctl within the operation bound: its result, -errno, or -ETIMEDOUT when it had
        not returned (then the example has lost track of the kernel's state: see _bounded)."""
        box: list[int] = []

        def call() -> None:
            try:
                box.append(uapi.ioctl(self.vm_fd, request, arg, label))
            except uapi.KvmError as exc:
                box.append(-(exc.errno or 1))

        return box[0] if self._bounded(label, call) else -errno.ETIMEDOUT

    def _guest_writable(self, b: Backing) -> bool:
        return any(r.hva == b.hva and r.gpa == memguest.DATA_GPA and not r.flags & memuapi.KVM_MEM_READONLY
                   for r in self.slots.values()) and b.hva != 0

    def _refreeze(self, since: str) -> None:
        """Snapshot each backing the guest can no longer write; forget the snapshot of one it can
        (its frozen content was checked before the change)."""
        with self.mem_lock:
            for b in self.backings:
                if self._guest_writable(b):
                    b.frozen = None
                elif b.frozen is None:
                    b.frozen, b.frozen_since = ctypes.string_at(b.view, memguest.DATA_SIZE), since

    def _check_frozen(self) -> None:
        """Record every stamp that changed in a frozen backing (once per change)."""
        for b in self.backings:
            if b.frozen is None:
                continue
            now = ctypes.string_at(b.view, memguest.DATA_SIZE)
            if now == b.frozen:
                continue
            for off in range(0, memguest.DATA_SIZE, 4):
                was = int.from_bytes(b.frozen[off:off + 4], "little")
                new = int.from_bytes(now[off:off + 4], "little")
                if was != new:
                    self.stray.append({"backing": b.index, "page": off // memguest.PAGE,
                                       "offset": off % memguest.PAGE, "was": was, "now": new,
                                       "frozen_since": b.frozen_since})
            b.frozen = now

    def _data_backing(self) -> Backing | None:
        r = self.slots.get(DATA_SLOT)
        return next((b for b in self.backings if r is not None and b.hva == r.hva), None)

    # -- guests ---------------------------------------------------------------------
    def _undecided(self, why: str) -> None:
        if not self.mem_undecided:
            self.mem_undecided = why

    def _wait_for(self, what: str, done: Any, bound: float = EVIDENCE_BOUND) -> bool:
        deadline = time.monotonic() + bound
        while not done():
            if time.monotonic() >= deadline:
                self._undecided(f"{what}: not within {bound} s (the machine may be loaded)")
                return False
            time.sleep(0.0005)
        return True

    def op_start_guests(self) -> Steps:
        for i, v in enumerate(self._vcpus()):
            if i not in self.loops:
                self.loops[i] = self._new_loop(v)
        self.final_harvest = False
        self._wait_for("the guests to start", lambda: all(memguest.gen(self.vm.ram, i) > 0 for i in self.loops))
        yield Point(f"run loops of vcpu {', '.join(map(str, self.loops))} started; the guests write")

    def _new_loop(self, v: Any) -> RunLoop:
        return RunLoop(self, v)

    def op_stop_guests(self) -> Steps:
        loops, self.loops = self.loops, {}
        for i in stop_all(loops):
            self._undecided(f"vcpu{i} did not leave KVM_RUN within its stop bound")
        yield Point("every vCPU out of KVM_RUN (immediate_exit + kick): the guests stopped writing")

    def op_wait_passes(self, passes: int = 2) -> Steps:
        base = {i: memguest.gen(self.vm.ram, i) for i in self.loops}
        self._wait_for(f"{passes} more passes of every guest",
                       lambda: all(memguest.gen(self.vm.ram, i) - g >= passes for i, g in base.items()))
        yield Point(f"the guests wrote {passes} more passes")

    # -- memslot changes --------------------------------------------------------------
    def op_change_data_slot(self, how: str) -> Steps:
        with self.mem_lock:
            self._check_frozen()
        r = self.slots.get(DATA_SLOT)
        live = self._data_backing()
        if how == "delete":  # of a missing slot too: the kernel says -EINVAL
            ret = self._set_region(DATA_SLOT, r.gpa if r else memguest.DATA_GPA, 0, 0, "delete")
        elif how == "move":  # nothing to move: -ENOENT, no ioctl (it would create a slot)
            ret = self._set_region(DATA_SLOT, memguest.MOVED_GPA, r.hva, r.flags, "move") if r else -2
        elif how == "readonly":
            ret = self._recreate(r, r.hva if r else 0, memuapi.KVM_MEM_READONLY, "read-only")
        elif how == "replace":
            ret = self._recreate(r, self._new_backing(0).hva, 0, "new backing")
        elif how == "restore":
            hva = live.hva if live else next((b.hva for b in reversed(self.backings) if b.hva), 0)
            ret = self._recreate(r, hva, 0, "restore")
        elif how == "remap":
            ret = self._remap(live)
        else:
            raise ValueError(f"change_data_slot: no change {how!r}")
        yield Point(f"change_data_slot({how}) returned {ret}")
        return ret

    def _recreate(self, r: Region | None, hva: int, flags: int, why: str) -> int:
        """Delete the data slot (flags other than dirty logging cannot change in place), then
        create it again at the data GPA."""
        if r is not None:
            ret = self._set_region(DATA_SLOT, r.gpa, 0, 0, f"delete for {why}")
            if ret != 0:
                return ret
        if not hva:
            return -22
        keep = r.flags & memuapi.KVM_MEM_LOG_DIRTY_PAGES if r else 0
        return self._set_region(DATA_SLOT, memguest.DATA_GPA, hva, flags | keep, why)

    def _remap(self, live: Backing | None) -> int:
        """mmap(MAP_FIXED) a fresh memfd over the slot's host pages: the MMU notifier's
        invalidation, not a memslot change. The old memfd is frozen when mmap returns."""
        if live is None:
            return -2
        with self.mem_lock:
            self._check_frozen()
        hva = live.hva
        live.hva = 0
        if not self._bounded("mmap(MAP_FIXED) over the data slot's host mapping", lambda: self._new_backing(hva)):
            return -errno.ETIMEDOUT
        self._refreeze("after mmap(MAP_FIXED) over the slot's host mapping returned")
        return 0

    def op_madvise_dontneed(self) -> Steps:
        live = self._data_backing()
        if live is not None:
            self._bounded("madvise(MADV_DONTNEED)",
                          lambda: memuapi.madvise(live.hva, memguest.DATA_SIZE, memuapi.MADV_DONTNEED))
        yield Point("madvise(MADV_DONTNEED) on the data slot's host mapping returned"
                    if live else "madvise: the data slot has no host mapping")

    def op_scratch_slot(self, create: bool = True) -> Steps:
        """Create or delete slot 2 (memory no guest touches): memslot updates racing the others."""
        if self.scratch is None:
            fd = memuapi.memfd(memguest.DATA_SIZE, "kvmconf-scratch")
            self.mem_fds.append(fd)
            self.scratch = Backing(-1, fd, memuapi.map_shared(fd, memguest.DATA_SIZE), 0)
        hva = self.scratch.hva if create else 0
        ret = self._set_region(SCRATCH_SLOT, SCRATCH_GPA, hva, 0, "scratch")
        yield Point(f"scratch slot {'created' if create else 'deleted'}: {ret}")
        return ret

    def op_toggle_dirty_logging(self) -> Steps:
        r = self.slots.get(DATA_SLOT)
        ret = None
        if r is not None:
            ret = self._set_region(DATA_SLOT, r.gpa, r.hva, r.flags ^ memuapi.KVM_MEM_LOG_DIRTY_PAGES, "flags")
        yield Point(f"dirty logging of the data slot toggled: {ret}")
        return ret

    def op_create_vcpu(self) -> Steps:
        """One more vCPU, from this thread while the others run (it runs the writer if they do)."""
        from .vm import Vcpu

        index = len(self._vcpus())
        box: list[Any] = []
        self._bounded(f"KVM_CREATE_VCPU({index})", lambda: box.append(Vcpu(self.vm, index, self._notify)))
        if box:
            self.extra_vcpus.append(box[0])
            if self.data_mode == "dirty_ring":
                self._map_ring(box[0])
            if self.loops:
                self.loops[index] = self._new_loop(box[0])
        yield Point(f"KVM_CREATE_VCPU({index}) {'returned' if box else 'did not return'}")

    def op_vcpu_ioctl(self, vcpu: int) -> Steps:
        """KVM_GET_REGS the way a VMM must: on the vCPU's thread, between two KVM_RUNs (its run
        loop is paused by immediate_exit + the kick signal, then resumed)."""
        vcpus = self._vcpus()
        vcpu %= len(vcpus)
        loop = self.loops.get(vcpu)
        regs = uapi.kvm_regs()
        box: list[int] = []

        def call() -> None:
            if loop is not None:
                loop.pause()
            try:
                box.append(vcpus[vcpu].ioctl(uapi.KVM_GET_REGS, regs, "KVM_GET_REGS"))
            finally:
                if loop is not None:
                    loop.resume()

        self._bounded(f"KVM_GET_REGS(vcpu{vcpu})", call)
        yield Point(f"KVM_GET_REGS(vcpu{vcpu}) = {box[0] if box else 'no return'}")

    # -- dirty logging -----------------------------------------------------------------
    def op_harvest_dirty(self) -> Steps:
        mode = self.data_mode or "plain"
        if mode == "dirty_ring":
            pages, ret = self.harvest_rings()
            yield Point(f"dirty rings collected: pages {sorted(pages)}; KVM_RESET_DIRTY_RINGS = {ret}: "
                        "the pages are write-protected again")
            yield Point(f"pages {sorted(pages)} copied (after their re-protection)")
            return len(pages)
        if mode in ("dirty_bitmap", "dirty_manual"):
            bitmap = (ctypes.c_uint64 * 1)()
            log = memuapi.kvm_dirty_log(slot=DATA_SLOT, dirty_bitmap=ctypes.addressof(bitmap))
            ret = self._vm_ioctl(memuapi.KVM_GET_DIRTY_LOG, log, "KVM_GET_DIRTY_LOG")
            pages = {p for p in range(memguest.DATA_PAGES) if bitmap[0] >> p & 1} if ret == 0 else set()
            yield Point(f"KVM_GET_DIRTY_LOG = {ret}: pages {sorted(pages)}")
            if mode == "dirty_manual" and pages:
                clear = memuapi.kvm_clear_dirty_log(slot=DATA_SLOT, num_pages=memguest.DATA_PAGES, first_page=0,
                                                    dirty_bitmap=ctypes.addressof(bitmap))
                ret = self._vm_ioctl(memuapi.KVM_CLEAR_DIRTY_LOG, clear, "KVM_CLEAR_DIRTY_LOG")
                yield Point(f"KVM_CLEAR_DIRTY_LOG = {ret}: the pages are write-protected again")
        else:
            raise NotImplementedError("harvest_dirty needs a data_slot with dirty logging")
        self._copy_pages(pages)
        yield Point(f"pages {sorted(pages)} copied (after their re-protection)")
        return len(pages)

    def _copy_pages(self, pages: set[int]) -> None:
        b = self._data_backing()
        if b is None:
            return
        for p in sorted(pages):
            off = p * memguest.PAGE
            self.copy[off:off + memguest.PAGE] = ctypes.string_at(b.view + off, memguest.PAGE)
        self.harvests += 1
        self.reported += len(pages)
        self.final_harvest = not self.loops

    def harvest_rings(self) -> tuple[set[int], int]:
        """Collect every ring, KVM_RESET_DIRTY_RINGS, copy the pages: one step, since a run loop
        whose ring is full harvests too (from its vCPU's side, as a VMM must before re-entering)."""
        with self.ring_lock:
            pages = self._collect_ring()
            ret = self._vm_ioctl(memuapi.KVM_RESET_DIRTY_RINGS, 0, "KVM_RESET_DIRTY_RINGS")
            self._copy_pages(pages)
        return pages, ret

    def _map_ring(self, v: Any) -> None:
        addr = memuapi.map_shared(v.fd, self.ring_bytes, offset=memuapi.KVM_DIRTY_LOG_PAGE_OFFSET * memuapi.PAGE_SIZE)
        self.rings[v.index] = (addr, 0)

    def _collect_ring(self) -> set[int]:
        """Take every dirty entry of every vCPU's ring (marking it for reset), in ring order."""
        pages: set[int] = set()
        n = self.ring_bytes // ENTRY
        for i, (addr, fetch) in list(self.rings.items()):
            while True:
                e = memuapi.kvm_dirty_gfn.from_address(addr + (fetch % n) * ENTRY)
                if not e.flags & memuapi.KVM_DIRTY_GFN_F_DIRTY:
                    break
                if e.slot & 0xFFFF == DATA_SLOT:
                    pages.add(e.offset)
                e.flags = memuapi.KVM_DIRTY_GFN_F_RESET
                fetch += 1
            self.rings[i] = (addr, fetch)
        return pages

    def _copy_stale(self) -> tuple[dict[str, int], ...] | None:
        """Stamps whose migration copy differs from memory, once the guests stopped and were
        harvested again; None before (the copy can only be complete then)."""
        b = self._data_backing()
        if not self.final_harvest or b is None or not (self.data_mode or "").startswith("dirty"):
            return None
        now = ctypes.string_at(b.view, memguest.DATA_SIZE)
        stale = []
        for p in range(memguest.DATA_PAGES):
            for i in range(len(self._vcpus())):
                off = p * memguest.PAGE + memguest.STRIDE * i
                copied = int.from_bytes(self.copy[off:off + 4], "little")
                real = int.from_bytes(now[off:off + 4], "little")
                if copied != real:
                    stale.append({"page": p, "vcpu": i, "copied": copied, "memory": real})
        return tuple(stale)

    def _corrupt(self) -> tuple[dict[str, int], ...]:
        """Words of any backing that no guest wrote: a non-stamp word not zero, or a stamp
        newer than the pass its vCPU has reached."""
        datas = [(b, ctypes.string_at(b.view, memguest.DATA_SIZE)) for b in self.backings]
        # Read after the data: a guest stamps a page only after counting its pass.
        gens = [memguest.gen(self.vm.ram, i) for i in range(len(self._vcpus()))] if self.vm else []
        bad = []
        for b, data in datas:
            for off in range(0, memguest.DATA_SIZE, 4):
                value = int.from_bytes(data[off:off + 4], "little")
                if not value:
                    continue
                where = off % memguest.PAGE
                vcpu = where // memguest.STRIDE if where % memguest.STRIDE == 0 else -1
                if vcpu < 0 or vcpu >= len(gens) or value > gens[vcpu]:
                    bad.append({"backing": b.index, "page": off // memguest.PAGE, "offset": where, "value": value})
        return tuple(bad)

    # -- bounded operations and the deadlock evidence -------------------------------------
    def _bounded(self, label: str, fn: Any) -> bool:
        """Run ``fn`` on a helper thread; past OP_BOUND, decide from /proc whether it is a deadlock."""
        if self.lost_track:
            # An earlier call never returned: the example is undecided already, and one more
            # bounded call per operation could add up past the engine's point timeout.
            return False
        errors: list[BaseException] = []

        def body() -> None:
            try:
                fn()
            except BaseException as exc:
                errors.append(exc)

        helper = threading.Thread(target=body, name=f"kvmconf-mem-op {label}", daemon=True)
        helper.start()
        helper.join(self.op_bound)
        if helper.is_alive():
            # Bound + quiet window stay under the engine's point timeout (5 s by default).
            evidence = quiescence([helper] + [v.thread for v in self._vcpus()]
                                  + [loop.thread for loop in self.loops.values()], self.quiet)
            if evidence is None:
                self._undecided(f"{label} took over {self.op_bound} s while some thread of the VM still ran")
            else:
                self.hangs.append(f"{label} did not return: {evidence}")
            # It may still return, behind this module's back: what it changed is not tracked.
            self.lost_track = True
            return False
        if errors:
            raise errors[0]
        return True


def stop_all(loops: Mapping[int, RunLoop], bound: float = OP_BOUND) -> list[int]:
    """Stop run loops together (one bound for all): the vCPUs that did not leave KVM_RUN in time."""
    for loop in loops.values():
        loop.stopping.set()
        with loop.paused:
            loop.paused.notify_all()
    deadline = time.monotonic() + bound
    while any(loop.thread.is_alive() for loop in loops.values()) and time.monotonic() < deadline:
        for loop in loops.values():
            if loop.thread.is_alive():
                loop.kick()
        time.sleep(0.002)
    for loop in loops.values():
        if loop.v.run is not None:
            loop.v.run.immediate_exit = 0
    return [i for i, loop in loops.items() if loop.thread.is_alive()]


def quiescence(threads: list[threading.Thread], window: float) -> str | None:
    """Evidence of a deadlock: every thread sleeps (S or D) and uses no CPU time for
    ``window`` seconds, sampled from /proc/self/task/<tid>/stat; None if one ran."""
    tids = [t.native_id for t in threads if t.is_alive() and t.native_id is not None]

    def sample() -> dict[int, tuple[str, int]] | None:
        out = {}
        for tid in tids:
            try:
                fields = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                return None
            out[tid] = (fields[0], int(fields[11]) + int(fields[12]))  # state, utime + stime
        return out

    first = sample()
    deadline = time.monotonic() + window
    while first is not None and time.monotonic() < deadline:
        now = sample()
        if now is None or any(s not in "SD" or now[t][1] != first[t][1] for t, (s, _) in now.items()):
            return None
        time.sleep(0.02)
    if first is None:
        return None
    wchan = {}
    for tid in tids:
        try:
            wchan[tid] = open(f"/proc/self/task/{tid}/wchan").read() or "?"
        except OSError:
            wchan[tid] = "?"
    return (f"for {window:.1f} s every thread of the VM slept and used no CPU time ("
            + ", ".join(f"{tid}: {first[tid][0]} in {wchan[tid]}" for tid in tids) + ")")


class RunLoop:
    """A VMM's run loop for one vCPU: KVM_RUN on the vCPU's thread again after every exit,
    MMIO writes recorded, until stopped by immediate_exit and the kick signal."""

    def __init__(self, machine: MemoryOps, vcpu: Any):
        self.m, self.v = machine, vcpu
        self.stopping = threading.Event()
        self.paused = threading.Condition()
        self.pause_requests = 0
        self.parked = False
        self.thread = threading.Thread(target=self._loop, name=f"kvmconf-kvm-runloop{vcpu.index}", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        v, m = self.v, self.m
        while not self.stopping.is_set():
            with self.paused:
                while self.pause_requests and not self.stopping.is_set():
                    self.parked = True
                    self.paused.notify_all()
                    self.paused.wait()
                self.parked = False
            ticket = v.start_run()
            ticket.done.wait()
            r = ticket.result
            if r is None or r.ret == -4:  # -EINTR: a kick
                continue
            if r.ret < 0:
                m.run_errors.append(f"vcpu{v.index}: KVM_RUN returned {r.ret}")
                return
            if r.exit_reason == memuapi.KVM_EXIT_MMIO:
                self.on_mmio(memuapi.kvm_run_mmio.from_address(v.run_addr + uapi.kvm_run.exit.offset))
                # A Python run loop holds the GIL: without a pause, 100,000 MMIO exits per example
                # starve the spec threads on a loaded machine. The guest only writes more slowly.
                time.sleep(MMIO_PAUSE)
            elif r.exit_reason == memuapi.KVM_EXIT_DIRTY_RING_FULL:
                m.ring_full_exits += 1
                m.harvest_rings()
            else:
                m.run_errors.append(f"vcpu{v.index}: unexpected exit_reason {r.exit_reason}")
                return

    def on_mmio(self, mmio: Any) -> None:
        """A guest access with no writable memslot behind it (the VMM's MMIO dispatch)."""
        if mmio.is_write and memguest.stamp_of(mmio.phys_addr) is not None:
            self.m.mmio_writes += 1

    def kick(self) -> None:
        run = self.v.run
        if run is not None:
            run.immediate_exit = 1
        self.v.kick()

    def pause(self) -> None:
        """Bring the vCPU out of KVM_RUN and keep it out until resume()."""
        with self.paused:
            self.pause_requests += 1
        deadline = time.monotonic() + OP_BOUND
        while self.thread.is_alive() and time.monotonic() < deadline:
            self.kick()
            with self.paused:
                if self.parked or self.paused.wait_for(lambda: self.parked, 0.005):
                    break
        if self.v.run is not None:
            self.v.run.immediate_exit = 0

    def resume(self) -> None:
        with self.paused:
            self.pause_requests -= 1
            self.paused.notify_all()


@cache
def _offered(cap: int) -> bool:
    """KVM_CHECK_EXTENSION on /dev/kvm (the memory capabilities are answered there too)."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return uapi.ioctl(fd, uapi.KVM_CHECK_EXTENSION, cap, "KVM_CHECK_EXTENSION") > 0
    except uapi.KvmError:
        return False
    finally:
        os.close(fd)


def missing_caps(options: Mapping[str, Any], ops: set[str]) -> list[str]:
    """The capabilities a guarantee's data slot mode and operations need that the kernel lacks."""
    mode = options.get("data_slot")
    if mode is None:
        return []
    if isinstance(mode, Expr):
        mode = mode.evaluate({}) if not mode.names else None
    wanted = list(MODE_CAPS.get(mode, ()))
    if ops & {"change_data_slot", "madvise_dontneed"}:
        # The host-mapping changes rely on the MMU notifier; read-only slots on READONLY_MEM.
        wanted += [(memuapi.KVM_CAP_SYNC_MMU, "KVM_CAP_SYNC_MMU"),
                   (memuapi.KVM_CAP_READONLY_MEM, "KVM_CAP_READONLY_MEM")]
    return [name for cap, name in wanted if not _offered(cap)]
