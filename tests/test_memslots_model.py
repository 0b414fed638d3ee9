"""The reference model of the memslots facet: the live memory specs pass on it, bite on broken
models, and one drawn schedule gives the same userspace-visible results on the model and on
the kernel (the latter skipped, with the reason, where /dev/kvm is unusable)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from pytest_kvmconf.backends.kvm import KvmBackend, probe
from pytest_kvmconf.backends.reference import ReferenceBackend, ReferenceMachine
from pytest_kvmconf.engine.runner import RunOptions, run_schedule
from pytest_kvmconf.errors import ViolationFound
from pytest_kvmconf.spec.versions import NEWEST
from pytest_kvmconf.strategies import schedule_strategy

from .bite import guarantees, verdict

LIVE_MEMORY = ("REQ-06.live", "REQ-22.live", "SPTE-03.live", "SPTE-04.live", "SPTE-03.ring", "LOCK-09.live")


class Backend(ReferenceBackend):
    def __init__(self, machine: type[ReferenceMachine]):
        self.machine_class = machine


@pytest.mark.parametrize("gid", LIVE_MEMORY)
def test_the_live_memory_specs_hold_on_the_model(gid: str) -> None:
    assert verdict(gid, ReferenceBackend()) is None


class StaleTranslation(ReferenceMachine):
    """A model whose memslot change returns before every vCPU dropped its translation (a lost
    kick): each vCPU's next pass still writes the host pages it lost."""

    def apply_change(self, how: str) -> int:
        self.stale = self._writable_backing()
        return super().apply_change(how)

    def guest_pass(self, vcpu: int) -> None:
        stale = getattr(self, "stale", None)
        if stale is not None and stale is not self._writable_backing():
            for page in range(8):
                stale["words"][(page, vcpu)] = self.gens[vcpu] + 1
        super().guest_pass(vcpu)


class LostDirtyPage(ReferenceMachine):
    """A model whose harvest re-protects every dirty page but reports all but the last."""

    def reported_pages(self) -> set[int]:
        pages = super().reported_pages()
        return pages - {max(pages, default=-1)}


@pytest.mark.parametrize("gid", ["REQ-06.live", "REQ-22.live"])
def test_a_stale_translation_is_caught_on_the_model(gid: str) -> None:
    found = verdict(gid, Backend(StaleTranslation))
    assert isinstance(found, ViolationFound) and "wrote host pages after" in str(found)


@pytest.mark.parametrize("gid", ["SPTE-03.live", "SPTE-04.live", "SPTE-03.ring"])
def test_a_lost_dirty_page_is_caught_on_the_model(gid: str) -> None:
    found = verdict(gid, Backend(LostDirtyPage))
    assert isinstance(found, ViolationFound) and found.outcome.final_state["mem"]["copy_stale"]


REASON = probe.environment()[0]


def returns(outcome) -> list[str]:  # type: ignore[no-untyped-def]
    """What userspace saw: the memslot calls' return values, thread by thread."""
    return [f"{e.thread}: {t}" for e in outcome.timeline for t in e.texts if "change_data_slot returned" in t]


@pytest.mark.skipif(REASON is not None, reason=f"kvm backend unusable here: {REASON}")
def test_one_schedule_gives_the_same_results_on_the_model_and_the_kernel() -> None:
    g = guarantees()["REQ-06.live"]
    options = RunOptions(NEWEST)
    seen = []

    @settings(max_examples=6, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(schedule_strategy(g, NEWEST))
    def same(schedule) -> None:  # type: ignore[no-untyped-def]
        model = run_schedule(g, ReferenceBackend(), schedule, options)
        kernel = run_schedule(g, KvmBackend(), schedule, options)
        assert model.violation is None and kernel.violation is None, (model.violation, kernel.violation)
        assert returns(model) == returns(kernel)
        # Where the model's passes exit to userspace the kernel's do too; the kernel may show more
        # (a guest write in the window between the delete and the create of a re-creation).
        assert kernel.final_state["mem"]["mmio_writes"] > 0 or not model.final_state["mem"]["mmio_writes"] \
            or kernel.final_state["mem"]["undecided"]
        seen.append(returns(kernel))

    same()
    assert any(seen)
