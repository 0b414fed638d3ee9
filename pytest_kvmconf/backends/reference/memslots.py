"""Model of the memslots facet: what userspace may rely on when it changes a memslot, the
host mapping behind it or its dirty log while guests write (the contract the live kernel's
REQ-06.live, REQ-22.live, SPTE-03/04 projections and LOCK-09.live are checked against).

The guests are modelled by their passes: each vCPU's pass stamps its pass number into every
data page through the translation the memslots give *now* -- a writable slot at the data GPA
writes its host pages (and marks them dirty when the slot logs), anything else is an MMIO
exit. Passes happen when a spec starts the guests or waits for passes, so a schedule decides
which changes fall between which passes. The model has no TLB: a change is complete when its
operation returns, which is what the documents promise (the request and kick reach every
vCPU before kvm_make_all_cpus_request / kvm_flush_remote_tlbs return).

Host pages are named by *backings* as in the kvm backend; a backing no slot lets the guests
write is frozen when the change returns and compared at the end (``mem.stray``).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from ...backend import MachineConfig, ThreadContext
from ...facets.memslots import DATA_PAGES, DATA_SLOT_MODES
from ...scheduling import Point

Steps = Generator[Point, None, Any]
DATA, MOVED = "data", "moved"  # the two guest-physical places of the data slot
ENOENT, EINVAL = 2, 22


class MemslotsModel:
    def init_memslots(self, config: MachineConfig) -> None:
        mode = config.options.get("data_slot")
        if mode is not None and mode not in DATA_SLOT_MODES:
            raise ValueError(f"no data_slot mode {mode!r} (there are {', '.join(DATA_SLOT_MODES)})")
        self.data_mode: str | None = mode
        self.mem_vcpus = config.vcpus
        self.gens = [0] * config.vcpus
        self.running = False
        #: backing -> {"hva": id or 0, "words": {(page, vcpu): stamp}, "frozen": dict | None, "since": str}
        self.backings: list[dict[str, Any]] = []
        #: the data slot: (place, hva, readonly, logging), or None once deleted
        self.data_slot: tuple[str, int, bool, bool] | None = None
        self.scratch = False
        self.stray: list[dict[str, Any]] = []
        self.mmio_writes = 0
        self.dirty: set[int] = set()
        self.copy: dict[tuple[int, int], int] = {}
        self.harvests = self.reported = 0
        self.final_harvest = False
        if mode is not None:
            self.data_slot = (DATA, self._new_backing(), False, mode.startswith("dirty"))

    def _new_backing(self, hva: int = 0) -> int:
        hva = hva or len(self.backings) + 1
        self.backings.append({"hva": hva, "words": {}, "frozen": None, "since": ""})
        return hva

    # -- the guests ------------------------------------------------------------------------
    def guest_pass(self, vcpu: int) -> None:
        """One pass of vCPU ``vcpu``: a stamp into every data page through today's memslots."""
        self.gens[vcpu] += 1
        target = self._writable_backing()
        for page in range(DATA_PAGES):
            if target is None:
                self.mmio_writes += 1
                continue
            target["words"][(page, vcpu)] = self.gens[vcpu]
            if self.data_slot is not None and self.data_slot[3]:
                self.dirty.add(page)

    def _writable_backing(self) -> dict[str, Any] | None:
        if self.data_slot is None:
            return None
        place, hva, readonly, _ = self.data_slot
        if place != DATA or readonly:
            return None
        return next((b for b in self.backings if b["hva"] == hva and hva), None)

    def _passes(self, n: int) -> None:
        if self.running:
            for _ in range(n):
                for v in range(self.mem_vcpus):
                    self.guest_pass(v)

    def start_guests(self, ctx: ThreadContext) -> Steps:
        self.running = True
        self.final_harvest = False
        self._passes(1)
        yield Point("the guests write")

    def stop_guests(self, ctx: ThreadContext) -> Steps:
        self.running = False
        yield Point("the guests stopped writing")

    def wait_passes(self, ctx: ThreadContext, passes: int = 2) -> Steps:
        self._passes(passes)
        yield Point(f"the guests wrote {passes} more passes")

    # -- memslot and mapping changes ----------------------------------------------------------
    def _refreeze(self, since: str) -> None:
        self._check_frozen()
        writable = self._writable_backing()
        for b in self.backings:
            if b is writable:
                b["frozen"] = None
            elif b["frozen"] is None:
                b["frozen"], b["since"] = dict(b["words"]), since

    def _check_frozen(self) -> None:
        for b in self.backings:
            if b["frozen"] is not None and b["frozen"] != b["words"]:
                for key, now in b["words"].items():
                    if b["frozen"].get(key) != now:
                        self.stray.append({"backing": self.backings.index(b), "page": key[0], "vcpu": key[1],
                                           "was": b["frozen"].get(key, 0), "now": now,
                                           "frozen_since": b["since"]})
                b["frozen"] = dict(b["words"])

    def change_data_slot(self, ctx: ThreadContext, how: str) -> Steps:
        ret = self.apply_change(how)
        self._refreeze(f"after {how} returned")
        yield Point(f"change_data_slot({how}) returned {ret}")
        return ret

    def apply_change(self, how: str) -> int:
        slot = self.data_slot
        logging = bool(slot and slot[3])
        live = self._writable_backing() or next((b for b in self.backings if slot and b["hva"] == slot[1]), None)
        if how == "delete":
            if slot is None:
                return -EINVAL  # kvm_set_memory_region: deleting a slot that does not exist
            self.data_slot = None
        elif how == "move":
            if slot is None:
                return -ENOENT  # the VMM has nothing to move (and makes no ioctl)
            self.data_slot = (MOVED, slot[1], slot[2], slot[3])
        elif how == "readonly":
            if slot is None:
                return -EINVAL
            self.data_slot = (DATA, slot[1], True, logging)
        elif how == "replace":
            self.data_slot = (DATA, self._new_backing(), False, logging)
        elif how == "restore":
            hva = slot[1] if slot else next((b["hva"] for b in reversed(self.backings) if b["hva"]), 0)
            if not hva:
                return -EINVAL
            self.data_slot = (DATA, hva, False, logging)
        elif how == "remap":
            if live is None:
                return -ENOENT
            hva, live["hva"] = live["hva"], 0
            self._new_backing(hva)
        else:
            raise ValueError(f"change_data_slot: no change {how!r}")
        return 0

    def madvise_dontneed(self, ctx: ThreadContext) -> Steps:
        yield Point("madvise(MADV_DONTNEED): a shared mapping keeps its pages")

    def scratch_slot(self, ctx: ThreadContext, create: bool = True) -> Steps:
        self.scratch = create
        yield Point(f"scratch slot {'created' if create else 'deleted'}")
        return 0

    def toggle_dirty_logging(self, ctx: ThreadContext) -> Steps:
        ret = None
        if self.data_slot is not None:
            place, hva, readonly, logging = self.data_slot
            self.data_slot = (place, hva, readonly, not logging)
            ret = 0
        yield Point(f"dirty logging of the data slot toggled: {ret}")
        return ret

    def create_vcpu(self, ctx: ThreadContext) -> Steps:
        self.mem_vcpus += 1
        self.gens.append(0)
        yield Point(f"KVM_CREATE_VCPU({self.mem_vcpus - 1}) returned")

    def vcpu_ioctl(self, ctx: ThreadContext, vcpu: int) -> Steps:
        yield Point(f"KVM_GET_REGS(vcpu{vcpu % self.mem_vcpus})")

    # -- dirty logging ---------------------------------------------------------------------
    def harvest_dirty(self, ctx: ThreadContext) -> Steps:
        if not (self.data_mode or "").startswith("dirty"):
            raise NotImplementedError("harvest_dirty needs a data_slot with dirty logging")
        pages, self.dirty = self.reported_pages(), set()
        yield Point(f"dirty log harvested and re-protected: pages {sorted(pages)}")
        self.copy_pages(pages)
        yield Point(f"pages {sorted(pages)} copied")
        return len(pages)

    def reported_pages(self) -> set[int]:
        return set(self.dirty)

    def copy_pages(self, pages: set[int]) -> None:
        b = self._data_backing()
        if b is not None:
            for (page, vcpu), stamp in b["words"].items():
                if page in pages:
                    self.copy[(page, vcpu)] = stamp
        self.harvests += 1
        self.reported += len(pages)
        self.final_harvest = not self.running

    def _data_backing(self) -> dict[str, Any] | None:
        slot = self.data_slot
        return next((b for b in self.backings if slot and b["hva"] == slot[1] and b["hva"]), None)

    # -- observing ---------------------------------------------------------------------------
    def observe_memslots(self) -> dict[str, Any]:
        if self.data_mode is None:
            return {}
        self._check_frozen()
        b = self._data_backing()
        stale = None
        if self.final_harvest and b is not None and self.data_mode.startswith("dirty"):
            stale = tuple({"page": p, "vcpu": v, "copied": self.copy.get((p, v), 0), "memory": s}
                          for (p, v), s in sorted(b["words"].items()) if self.copy.get((p, v), 0) != s)
        return {"mem": {
            "mode": self.data_mode, "undecided": "", "gens": list(self.gens), "running": self.mem_vcpus
            if self.running else 0, "stray": tuple(self.stray),
            "frozen": sum(1 for x in self.backings if x["frozen"] is not None),
            "mmio_writes": self.mmio_writes, "harvests": self.harvests, "reported": self.reported,
            "copy_stale": stale, "hangs": (), "run_errors": (),
            "corrupt": tuple({"backing": i, "page": p, "vcpu": v, "value": s}
                             for i, x in enumerate(self.backings) for (p, v), s in x["words"].items()
                             if s > self.gens[v]),
        }}
