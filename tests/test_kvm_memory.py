"""The memory-side live specs against the running kernel (skipped, with the reason, where
/dev/kvm is unusable).

* each live spec holds on the kernel (a small budget: the default run stays quick);
* each is shown to fail on a VMM-side bug or a lossy observer: pages reused before the
  memslot ioctl or the mmap returned (REQ-06.live, REQ-22.live), a harvest that skips the
  last reported page (SPTE-03.live, SPTE-04.live), a dirty-ring collector that loses the last
  entry (SPTE-03.ring), a big-lock deadlock between the MMIO dispatch and a memslot update,
  and a device model writing guest memory it does not own (LOCK-09.live);
* each is skipped with the reason where its capability or channel is missing (the models,
  a kernel without the dirty ring or manual protect, no /dev/kvm);
* fds, mappings and threads are given back.
"""

from __future__ import annotations

import ctypes
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_kvmconf.backend import skip_reason
from pytest_kvmconf.backends.kvm import KvmBackend, memguest, memory, memuapi, probe
from pytest_kvmconf.backends.kvm.machine import KvmMachine
from pytest_kvmconf.backends.reference import ReferenceBackend
from pytest_kvmconf.backends.threaded import ThreadedBackend
from pytest_kvmconf.engine.explore import ViolationFound
from pytest_kvmconf.spec.versions import NEWEST

from .bite import guarantees, verdict
from .test_kvm_backend import fds, settled_threads

REASON = probe.environment()[0]
live = pytest.mark.skipif(REASON is not None, reason=f"kvm backend unusable here: {REASON}")

LIVE_MEMORY = ("REQ-06.live", "REQ-22.live", "SPTE-03.live", "SPTE-04.live", "SPTE-03.ring", "LOCK-09.live")
#: Examples per live spec in the default run (each is a VM with running guests, ~50 ms).
EXAMPLES = 12


def backend_of(machine: type[KvmMachine]) -> KvmBackend:
    class Broken(KvmBackend):
        def new_machine(self, config):  # type: ignore[no-untyped-def]
            return machine(config, self.execution)

    return Broken()


def caught(gid: str, machine: type[KvmMachine], examples: int = EXAMPLES, **how: Any) -> ViolationFound:
    found = verdict(gid, backend_of(machine), max_examples=examples, **how)
    assert isinstance(found, ViolationFound), f"{gid} did not catch {machine.__name__}: {found}"
    return found


@live
@pytest.mark.parametrize("gid", LIVE_MEMORY)
def test_memory_live_specs_hold_on_the_kernel(gid: str) -> None:
    b = KvmBackend()
    g = guarantees()[gid]
    why = skip_reason(b, g.needs, g.arch, NEWEST) or b.skip_reason(g)
    if why is not None:
        pytest.skip(why)
    found = verdict(gid, b, max_examples=EXAMPLES)
    assert found is None, str(found)


# -- the variants each spec catches ---------------------------------------------------------------

class EarlyReuse(KvmMachine):
    """A VMM that treats the old host pages as its own again *before* the memslot ioctl or the
    mmap that takes them from the guest (say, to hand them to a device or back to the host),
    while the guests write two more passes: the same evidence a stale kernel mapping leaves."""

    def _before_change(self, region: memory.Region | None) -> None:
        saved = dict(self.slots)
        if region is None:
            self.slots.pop(memory.DATA_SLOT, None)
        else:
            self.slots[memory.DATA_SLOT] = region
        self._refreeze("the VMM reused them, before the call")
        self.slots = saved
        base = {i: memguest.gen(self.vm.ram, i) for i in self.loops}
        self._wait_for("two passes", lambda: all(memguest.gen(self.vm.ram, i) - g >= 2 for i, g in base.items()))

    def _set_region(self, slot: int, gpa: int, hva: int, flags: int, why: str) -> int:
        if slot == memory.DATA_SLOT and self.loops:
            self._before_change(memory.Region(gpa, hva, flags) if hva else None)
        return super()._set_region(slot, gpa, hva, flags, why)

    def _remap(self, live: Any) -> int:
        if live is not None and self.loops:
            hva, live.hva = live.hva, 0  # as if its pages were already replaced
            self._before_change(self.slots.get(memory.DATA_SLOT))
            live.hva = hva
        return super()._remap(live)


@live
@pytest.mark.parametrize("gid", ["REQ-06.live", "REQ-22.live"])
def test_pages_reused_before_the_call_returned_are_caught(gid: str) -> None:
    found = caught(gid, EarlyReuse)
    assert "wrote host pages after" in str(found)
    assert found.outcome.final_state["mem"]["stray"]


class SkipLastPage(KvmMachine):
    """A VMM whose harvest copies every reported page but the last one."""

    def _copy_pages(self, pages: set[int]) -> None:
        super()._copy_pages(pages - {max(pages, default=-1)})


class LossyRing(KvmMachine):
    """A dirty-ring collector that loses each ring's newest entry (it marks it for reset
    without recording it): an observer that loses events."""

    def _collect_ring(self) -> set[int]:
        n = self.ring_bytes // memory.ENTRY
        newest = set()
        for addr, fetch in self.rings.values():
            last = fetch
            # A full ring is dirty all round: stop after one lap.
            while last - fetch < n and ring_entry(addr, last % n).flags & memuapi.KVM_DIRTY_GFN_F_DIRTY:
                last += 1
            if last > fetch:
                newest.add(ring_entry(addr, (last - 1) % n).offset)
        return super()._collect_ring() - newest


def ring_entry(addr: int, index: int) -> Any:
    return memuapi.kvm_dirty_gfn.from_address(addr + index * memory.ENTRY)


@live
@pytest.mark.parametrize(("gid", "machine"), [("SPTE-03.live", SkipLastPage), ("SPTE-04.live", SkipLastPage),
                                              ("SPTE-03.ring", LossyRing)])
def test_a_lost_dirty_page_is_caught(gid: str, machine: type[KvmMachine]) -> None:
    g = guarantees()[gid]
    why = KvmBackend().skip_reason(g)
    if why is not None:
        pytest.skip(why)
    found = caught(gid, machine)
    stale = found.outcome.final_state["mem"]["copy_stale"]
    assert stale and all(s["copied"] < s["memory"] for s in stale), stale


class BigLockDeadlock(KvmMachine):
    """A VMM whose MMIO dispatch takes its big lock, and whose memslot update holds that lock
    while it waits for every vCPU to acknowledge the change (a QEMU-style BQL inversion): after
    a deletion the vCPUs' next writes exit as MMIO and block on the lock for good."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.big_lock = threading.Lock()
        self.acked = threading.Event()
        self.op_bound, self.quiet = 0.3, 0.3  # a quick verdict; the evidence does not change

    def _new_loop(self, v: Any) -> memory.RunLoop:
        machine = self

        class Dispatch(memory.RunLoop):
            def on_mmio(self, mmio: Any) -> None:
                with machine.big_lock:
                    machine.acked.set()
                super().on_mmio(mmio)

        return Dispatch(self, v)

    def op_change_data_slot(self, how: str):  # type: ignore[no-untyped-def]
        with self.big_lock:
            self.acked.clear()
            ret = yield from super().op_change_data_slot(how)
            if how in ("delete", "move", "readonly") and self.loops:
                self._bounded("wait for every vCPU to acknowledge the memslot change", lambda: self.acked.wait(3.0))
        self.acked.set()  # the helper thread gives up at once, so that it does not outlive the example
        return ret


class StrayDeviceWrite(KvmMachine):
    """A device model that writes guest memory it does not own (a DMA to the wrong offset)."""

    def op_madvise_dontneed(self):  # type: ignore[no-untyped-def]
        live = self._data_backing()
        if live is not None:
            ctypes.c_uint32.from_address(live.view + 3 * memguest.PAGE + 8).value = 0xDEADBEEF
        return (yield from super().op_madvise_dontneed())


@live
def test_a_deadlock_is_caught_by_the_kernel_evidence() -> None:
    # PCT of depth 1 runs one thread's operation to its end before the next (no change points):
    # the VMM's big lock is then never held across a scheduling point while another thread
    # waits for it, which the engine would report as a hang of its own before the kernel's
    # evidence (every VM thread asleep) could decide. That evidence is what this test is about.
    found = caught("LOCK-09.live", BigLockDeadlock, examples=40, search="pct:1")
    hangs = found.outcome.final_state["mem"]["hangs"]
    assert hangs and "every thread of the VM slept and used no CPU time" in hangs[0], hangs


@live
def test_guest_memory_corruption_is_caught() -> None:
    found = caught("LOCK-09.live", StrayDeviceWrite, examples=40)
    assert "no guest wrote" in str(found)
    assert any(c["value"] == 0xDEADBEEF for c in found.outcome.final_state["mem"]["corrupt"])


@live
def test_a_busy_thread_is_undecided_not_a_deadlock() -> None:
    """An operation past its bound while a guest still runs is undecided under load."""
    m = KvmBackend().new_machine(memory_config(1))
    try:
        list(m.run_op(None, "start_guests", {}) or ())
        m.op_bound, m.quiet = 0.05, 0.2
        m._bounded("a slow operation", lambda: threading.Event().wait(0.6))
        state = m.observe()["mem"]
        assert state["hangs"] == () and "while some thread of the VM still ran" in state["undecided"]
    finally:
        m.close()


def memory_config(n: int, mode: str = "plain") -> Any:
    from pytest_kvmconf.backend import MachineConfig

    return MachineConfig(n, "x86_64", NEWEST, {"data_slot": mode})


# -- skips ------------------------------------------------------------------------------------

def test_the_threaded_model_skips_the_live_memory_specs_by_capability() -> None:
    """The reference model has the memslots facet (tests/test_memslots_model.py); the threaded one not."""
    assert "memslots" in ReferenceBackend().capabilities
    for b in (ThreadedBackend(),):
        for gid in LIVE_MEMORY:
            g = guarantees()[gid]
            why = skip_reason(b, g.needs, g.arch, NEWEST)
            assert why == f"backend {b.name!r} lacks capability memslots", (b.name, gid, why)


def test_a_kernel_without_the_capabilities_skips_with_their_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe, "environment", lambda: (None, frozenset()))
    monkeypatch.setattr(memory, "_offered", lambda cap: False)
    b = KvmBackend()
    expected = {
        "SPTE-03.ring": "KVM_CAP_DIRTY_LOG_RING",
        "SPTE-04.live": "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2",
        "REQ-06.live": "KVM_CAP_READONLY_MEM",
        "REQ-22.live": "KVM_CAP_SYNC_MMU",
    }
    for gid, cap in expected.items():
        why = b.skip_reason(guarantees()[gid])
        assert why is not None and why.startswith("the kernel lacks") and cap in why, (gid, why)


def test_without_dev_kvm_the_live_memory_specs_skip_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe, "environment",
                        lambda: ("no /dev/kvm on this machine (KVM is not available: no kvm module or not a VM host)",
                                 frozenset()))
    for gid in LIVE_MEMORY:
        assert KvmBackend().skip_reason(guarantees()[gid]).startswith("no /dev/kvm"), gid


def test_an_unknown_data_slot_mode_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no data_slot mode 'bitmap'.*plain, dirty_bitmap"):
        KvmMachine(memory_config(1, "bitmap"))


# -- resources --------------------------------------------------------------------------------

def memfd_maps() -> int:
    return Path("/proc/self/maps").read_text().count("memfd:kvmconf")


def memory_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(("kvmconf-kvm", "kvmconf-mem-op"))]


@live
def test_no_fd_mapping_or_thread_outlives_a_memory_run() -> None:
    verdict("REQ-06.live", KvmBackend(), max_examples=2)
    deadline = time.monotonic() + 5.0  # earlier tests' helpers (a caught deadlock's) finish first
    while memory_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    before_fds, before_threads, before_maps = fds(), settled_threads(), memfd_maps()
    for gid in ("REQ-06.live", "SPTE-03.ring", "LOCK-09.live"):
        verdict(gid, KvmBackend(), max_examples=3)
    verdict("SPTE-03.live", backend_of(SkipLastPage), max_examples=2)
    assert fds() == before_fds
    assert memfd_maps() == before_maps == 0
    assert settled_threads(before_threads) == before_threads
    assert not memory_threads()
