"""The threaded backend's MP facet (KVM_RUN, MP states, signals, wake-ups, system events).

* every MP spec passes on it in controlled and in free mode, on the 4.13 and the
  newest document text;
* on drawn schedules its timelines and MP states equal the reference model's;
* each broken variant of tests/broken/threaded_mp.py is caught in controlled
  mode within the budget and by free runs, and a signal that forgets to wake
  the vCPU is a lost wake-up in free runs;
* outside the engine KVM_RUN really sleeps on its OS thread until another
  thread's signal or wake-up event ends it.
"""

from __future__ import annotations

import threading

import pytest
from hypothesis import HealthCheck, given, seed, settings

from pytest_kvmconf.backend import MachineConfig, ThreadContext
from pytest_kvmconf.backends.reference import ReferenceBackend
from pytest_kvmconf.backends.threaded import ThreadedBackend, ThreadedMachine
from pytest_kvmconf.engine.runner import Outcome, RunOptions, run_schedule
from pytest_kvmconf.engine.schedule import Schedule
from pytest_kvmconf.facets.mp import (
    EINTR,
    KVM_EXIT_INTR,
    KVM_EXIT_SYSTEM_EVENT,
    KVM_MP_STATE_HALTED,
    KVM_MP_STATE_RUNNABLE,
    KVM_MP_STATE_SUSPENDED,
    KVM_SYSTEM_EVENT_WAKEUP,
)
from pytest_kvmconf.spec.versions import NEWEST
from pytest_kvmconf.strategies import schedule_strategy

from .bite import BUDGET, applicable, guarantees, model_ids, verdict
from .broken.threaded_mp import FREE_ONLY, VARIANTS, backend

# The MP specs that inject interrupts (irq facet) are live-only: tests/test_kvm_live_irq.py.
MP_IDS = model_ids("MP-")
CASES = [(g, v) for g in MP_IDS for v in ("4.13", NEWEST) if guarantees()[g].versions.contains(v)]


def newest_text(gid: str) -> str:
    return NEWEST if guarantees()[gid].versions.contains(NEWEST) else "4.13"


def free_runs(gid: str, b, version: str, n: int, point_timeout: float = 2.0) -> list[Outcome]:
    """``n`` free runs of ``gid`` over hypothesis-drawn schedules (fixed seed), all outcomes."""
    g = guarantees()[gid]
    options = RunOptions(version, free=True, point_timeout=point_timeout)
    out: list[Outcome] = []

    @seed(0)
    @settings(max_examples=n, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(schedule_strategy(g, version))
    def run(s: Schedule) -> None:
        out.append(run_schedule(g, b, s, options))

    run()
    return out


# -- conformance ------------------------------------------------------------------

def test_the_threaded_backend_offers_the_mp_facet() -> None:
    assert {"mp", "system_events"} <= ThreadedBackend.capabilities
    assert all(applicable(guarantees()[g], ThreadedBackend(), v) for g, v in CASES)


@pytest.mark.parametrize("gid,version", CASES)
def test_threaded_passes_controlled(gid: str, version: str) -> None:
    found = verdict(gid, ThreadedBackend(), version)
    assert found is None, str(found)


@pytest.mark.parametrize("gid,version", CASES)
def test_threaded_passes_free(gid: str, version: str) -> None:
    outcomes = free_runs(gid, ThreadedBackend(), version, 15)
    bad = [o for o in outcomes if o.violation is not None]
    assert not bad, f"{gid} free run: {bad[0].violation.kind}: {bad[0].violation.message}"
    g = guarantees()[gid]
    exists = {i for i, c in enumerate(g.checks) if c.kind == "exists"}
    assert exists <= set().union(*(o.reached for o in outcomes)), f"{gid}: no free run reached the exists check"


def mp_view(state) -> dict:
    return {"mp": state["mp"], "mp_vm": state["mp_vm"]}


@pytest.mark.parametrize("gid", MP_IDS)
def test_same_steps_as_the_reference_model(gid: str) -> None:
    """Same labels in the same order, same MP state: the threaded code implements the model."""
    g, version = guarantees()[gid], newest_text(gid)
    options = RunOptions(version)

    @seed(1)
    @settings(max_examples=8, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(schedule_strategy(g, version))
    def compare(s: Schedule) -> None:
        ref = run_schedule(g, ReferenceBackend(), s, options)
        thr = run_schedule(g, ThreadedBackend(), s, options)
        assert [(e.thread, e.texts) for e in thr.timeline] == [(e.thread, e.texts) for e in ref.timeline]
        assert mp_view(thr.final_state) == mp_view(ref.final_state)
        assert (thr.violation and thr.violation.kind) == (ref.violation and ref.violation.kind)

    compare()


# -- broken variants ------------------------------------------------------------------

@pytest.mark.parametrize("name,gid,version", [(n, gid, v) for n, (_, by, _) in VARIANTS.items() for gid, v in by])
def test_broken_variant_is_caught_controlled(name: str, gid: str, version: str) -> None:
    b = backend(name)
    assert applicable(guarantees()[gid], b, version)
    found = verdict(gid, b, version)
    assert found is not None, f"{name} ({VARIANTS[name][2]}) was not caught by {gid} within {BUDGET} examples"
    assert found.outcome.guarantee.id == gid


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_broken_variant_is_caught_free(name: str) -> None:
    # The OS scheduler, not the engine, picks the interleaving: ImmediateExitPolledEarly's
    # window is hit in about 6% of these runs, so 150 runs miss it with odds near 1e-4.
    gid, version = VARIANTS[name][1][0]
    outcomes = free_runs(gid, backend(name), version, 150)
    assert any(o.violation is not None for o in outcomes), f"no free run of {gid} caught {name}"


def test_a_signal_that_does_not_wake_the_vcpu_is_a_lost_wake_up_in_free_runs() -> None:
    # Under the engine a sleeper resumes once its condition holds, notified or not;
    # in a free run the vCPU really sleeps in Condition.wait and never hears the signal.
    _, gid, doc = FREE_ONLY["SignalWithoutNotify"]
    assert verdict(gid, backend("SignalWithoutNotify"), max_examples=20) is None
    for o in free_runs(gid, backend("SignalWithoutNotify"), NEWEST, 10, point_timeout=0.3):
        if o.violation is not None:
            assert o.violation.kind == "hang", o.violation.message
            assert "lost wake-up" in o.violation.message and "vcpu0" in o.violation.message
            return
    pytest.fail(f"{doc}: never caught in 10 free runs")


# -- real threads, no engine ------------------------------------------------------------

def run_in_thread(machine: ThreadedMachine, op: str, **args) -> tuple[threading.Thread, list]:
    out: list = []
    t = threading.Thread(target=lambda: out.append(machine.run_op(ThreadContext("vcpu0", 0), op, args)),
                         daemon=True)
    t.start()
    return t, out


def test_kvm_run_sleeps_on_its_thread_until_a_signal_or_an_interrupt() -> None:
    m = ThreadedMachine(MachineConfig(1, "x86_64", NEWEST, {"irqchip": True, "program": "hlt"}))
    me = ThreadContext("vmm", None)
    t, out = run_in_thread(m, "kvm_run", vcpu=0)
    t.join(0.2)
    assert t.is_alive() and m.observe()["mp"][0]["in_run"], "a HALTED vCPU's KVM_RUN returned by itself"
    m.run_op(me, "signal_vcpu", {"vcpu": 0})
    t.join(2)
    assert not t.is_alive() and out[0]["ret"] == -EINTR and out[0]["exit_reason"] == KVM_EXIT_INTR
    assert m.run_op(me, "kvm_get_mp_state", {"vcpu": 0}) == KVM_MP_STATE_HALTED

    t, out = run_in_thread(m, "kvm_run", vcpu=0)
    t.join(0.2)
    assert t.is_alive()
    assert m.run_op(me, "inject_wakeup", {"vcpu": 0}) == 1
    t.join(2)
    assert not t.is_alive() and out[0]["ret"] == 0
    assert m.run_op(me, "kvm_get_mp_state", {"vcpu": 0}) == KVM_MP_STATE_RUNNABLE


def test_a_suspended_arm64_vcpu_sleeps_until_a_wake_up_event() -> None:
    m = ThreadedMachine(MachineConfig(1, "arm64", NEWEST, {"program": "busy"}))
    me = ThreadContext("vmm", None)
    assert m.run_op(me, "kvm_set_mp_state", {"vcpu": 0, "state": KVM_MP_STATE_SUSPENDED}) == 0
    t, out = run_in_thread(m, "kvm_run", vcpu=0)
    m.run_op(me, "wait_in_kvm_run", {"vcpu": 0})  # a real wait for the vCPU to settle
    t.join(0.1)
    assert t.is_alive() and m.observe()["mp"][0]["guest_progress"] == 0
    m.run_op(me, "inject_wakeup", {"vcpu": 0})
    t.join(2)
    assert not t.is_alive()
    assert out[0]["exit_reason"] == KVM_EXIT_SYSTEM_EVENT and out[0]["system_event"] == KVM_SYSTEM_EVENT_WAKEUP
    assert m.run_op(me, "kvm_get_mp_state", {"vcpu": 0}) == KVM_MP_STATE_SUSPENDED
