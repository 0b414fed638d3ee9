"""Every SPTE spec bites: the reference passes, and each broken variant is caught.

Plus the document's own races replayed step by step: the ABA table of section 2 (1)
and the lost Dirty bit table of section 2 (2).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_kvmconf.backends.reference import ReferenceBackend, ReferenceMachine
from pytest_kvmconf.backends.threaded import ThreadedBackend, ThreadedMachine
from pytest_kvmconf.engine.runner import RunOptions, run_schedule
from pytest_kvmconf.engine.schedule import Schedule
from pytest_kvmconf.spec.versions import NEWEST
from pytest_kvmconf.strategies import schedule_strategy

from .bite import BUDGET, applicable, guarantees, model_ids, newest_text, verdict
from .broken.spte import BROKEN, IndirectFastPathUnpinned, NonAtomicClearTrackBits, backend

SPTE_IDS = model_ids("SPTE-")


class PinningMachine(ReferenceMachine):
    """The document's "solution for indirect sp": fast path on, pfn pinned first."""

    pin_indirect = True


def pinning_backend() -> ReferenceBackend:
    b = ReferenceBackend()
    b.name = "reference-pinning"
    b.machine_class = PinningMachine
    return b


def test_all_five_guarantees_have_specs() -> None:
    assert SPTE_IDS == ["SPTE-01", "SPTE-02", "SPTE-03", "SPTE-03.a", "SPTE-04", "SPTE-05"]


@pytest.mark.parametrize("gid", SPTE_IDS)
def test_reference_passes(gid: str) -> None:
    found = verdict(gid, ReferenceBackend(), newest_text(gid))
    assert found is None, str(found)


@pytest.mark.parametrize("gid", ["SPTE-01", "SPTE-02", "SPTE-03", "SPTE-03.a"])
def test_pinning_reference_passes(gid: str) -> None:
    found = verdict(gid, pinning_backend(), newest_text(gid))
    assert found is None, str(found)


@pytest.mark.parametrize("machine,gid", list(BROKEN.items()), ids=[m.__name__ for m in BROKEN])
def test_broken_variant_is_caught(machine: type, gid: str) -> None:
    b = backend(machine)
    assert applicable(guarantees()[gid], b, newest_text(gid))
    found = verdict(gid, b, newest_text(gid))
    assert found is not None, f"{machine.__name__} was not caught by {gid} within {BUDGET} examples"
    assert found.outcome.guarantee.id == gid


@pytest.mark.parametrize("gid", SPTE_IDS)
def test_threaded_passes(gid: str) -> None:
    found = verdict(gid, ThreadedBackend(), newest_text(gid), max_examples=30)
    assert found is None, str(found)


class PinningThreads(ThreadedMachine):
    pin_indirect = True


def test_threaded_pinning_passes_spte02_and_keeps_the_pfn() -> None:
    b = ThreadedBackend()
    b.machine_class = PinningThreads
    assert verdict("SPTE-02", b, max_examples=30) is None
    out = replay("SPTE-02", b, (("sp", "indirect"),), ABA_TAPE)
    assert out.violation is None
    # The pin came after the swap-out: gfn 0 no longer has the SPTE's pfn, so the fast
    # path gave up, and the guest's write faulted instead of going to gfn 2 unlogged.
    assert out.final_state["writes"] == () and out.final_state["dirty_bitmap"] == frozenset()


def test_every_spte_guarantee_has_a_broken_variant() -> None:
    assert set(SPTE_IDS) <= set(BROKEN.values())


def replay(gid: str, b: ReferenceBackend, params: tuple, tape: tuple) -> object:
    g = guarantees()[gid]
    return run_schedule(g, b, Schedule(gid, params, (), tape), RunOptions(newest_text(gid)))


# SPTE-02 threads: vcpu0 (fast path + write), cpu1 (swap out, gpte -> gfn2, map).
# Tape (0, 0, 1): vcpu0 starts, reads old_spte, then cpu1 runs the whole ABA.
ABA_TAPE = (0, 0, 1)


def test_aba_of_the_document_loses_gfn2_without_pinning() -> None:
    out = replay("SPTE-02", backend(IndirectFastPathUnpinned), (("sp", "indirect"),), ABA_TAPE)
    assert out.violation is not None and out.violation.kind == "final"
    state = out.final_state
    assert [w["gfn"] for w in state["writes"]] == [2]
    assert state["dirty_bitmap"] == frozenset({0})  # gfn1 of the document dirty-logged, gfn2 lost


@pytest.mark.parametrize("b", [ReferenceBackend(), pinning_backend()], ids=["disabled", "pinned"])
def test_aba_schedule_is_harmless_on_indirect_sp_done_right(b: ReferenceBackend) -> None:
    out = replay("SPTE-02", b, (("sp", "indirect"),), ABA_TAPE)
    assert out.violation is None
    state = out.final_state
    assert {w["gfn"] for w in state["writes"]} <= state["dirty_bitmap"]


def test_aba_on_direct_sp_dirty_logs_the_right_gfn() -> None:
    out = replay("SPTE-02", ReferenceBackend(), (("sp", "direct"),), ABA_TAPE)
    assert out.violation is None
    assert out.final_state["writes"] and out.final_state["dirty_bitmap"] == frozenset({0})


# SPTE-03 threads: vcpu0 (fast path + write), mmu (host_swap_out). Tape (1, 0, 1): the
# mmu thread reads old_spte in mmu_spte_clear_track_bits(), then vcpu0 makes the SPTE
# writable and writes (Dirty = 1), then the mmu thread stores 0.
LOST_DIRTY_TAPE = (1, 0, 1)


def test_lost_dirty_bit_of_the_document() -> None:
    out = replay("SPTE-03", backend(NonAtomicClearTrackBits), (), LOST_DIRTY_TAPE)
    assert out.violation is not None and out.violation.kind == "final"
    assert out.final_state["writes"] and out.final_state["pfn_dirty"] == frozenset()


def test_xchg_keeps_the_dirty_bit() -> None:
    out = replay("SPTE-03", ReferenceBackend(), (), LOST_DIRTY_TAPE)
    assert out.violation is None
    assert out.final_state["pfn_dirty"] == frozenset({10})


@pytest.mark.parametrize("machine", [PinningMachine, PinningThreads], ids=["reference", "threaded"])
def test_a_pinned_pfn_is_not_reused(machine: type) -> None:
    b = ReferenceBackend() if issubclass(machine, ReferenceMachine) else ThreadedBackend()
    b.machine_class = machine
    # vcpu0 reads old_spte and pins pfn 10, then cpu1 runs the whole ABA.
    out = replay("SPTE-02", b, (("sp", "indirect"),), (0, 1, 1))
    assert out.violation is None
    state = out.final_state
    assert state["gfn_to_pfn"] == {0: 10, 1: 11, 2: 12}  # gfn 2 got a new pfn, not the pinned one
    assert state["sptes"][0]["pfn"] == 12 and state["writes"] == ()


def test_both_backends_observe_exactly_the_declared_observables() -> None:
    from pytest_kvmconf.backend import MachineConfig
    from pytest_kvmconf.facets import FACETS, all_observables

    all_observables()  # loads the facets
    declared = set(FACETS["spte"].observables)
    config = MachineConfig(2, "x86_64", NEWEST, {"sp": "indirect", "ad_bits": False})
    ref = ReferenceBackend().new_machine(config).observe_spte()
    thr = ThreadedBackend().new_machine(config).observe_spte()
    assert set(ref) == set(thr) == declared
    assert ref == thr


SPTE_KEYS = ("sptes", "gfn_to_pfn", "dirty_bitmap", "pfn_dirty", "pfn_accessed", "accesses", "tlbs",
             "tlb_flush_pending", "write_protected")


@settings(max_examples=25, database=None, deadline=None)
@given(data=st.data())
def test_threaded_runs_the_same_schedules_as_the_reference(data: st.DataObject) -> None:
    gid = data.draw(st.sampled_from(SPTE_IDS))
    g = guarantees()[gid]
    s = data.draw(schedule_strategy(g, NEWEST))
    ref = run_schedule(g, ReferenceBackend(), s, RunOptions(NEWEST))
    thr = run_schedule(g, ThreadedBackend(), s, RunOptions(NEWEST))
    assert [(e.thread, e.texts) for e in thr.timeline] == [(e.thread, e.texts) for e in ref.timeline]
    assert {k: thr.final_state[k] for k in SPTE_KEYS} == {k: ref.final_state[k] for k in SPTE_KEYS}
    assert thr.violation is None and ref.violation is None
