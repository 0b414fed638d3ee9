"""The threaded backend and the OS-thread executor.

* every REQ spec passes in controlled and in free mode, and the threaded
  backend's timelines and states equal the reference model's;
* each broken threaded variant is caught in controlled mode within the default
  budget, and by free runs;
* a hang, a lock held across a point, a deadlock and an exception in a backend
  thread are reported within the point timeout, and no thread outlives a run.
"""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import HealthCheck, given, seed, settings

from pytest_kvmconf.backends.reference import ReferenceBackend
from pytest_kvmconf.backends.threaded import ThreadedBackend, ThreadedMachine
from pytest_kvmconf.backends.threaded.requests import VCpu
from pytest_kvmconf.engine.explore import ViolationFound
from pytest_kvmconf.engine.runner import Outcome, RunOptions, run_schedule
from pytest_kvmconf.engine.schedule import Schedule
from pytest_kvmconf.engine.threads import wait_on
from pytest_kvmconf.facets.requests import KVM_REQ_TLB_FLUSH
from pytest_kvmconf.scheduling import point, wait_until
from pytest_kvmconf.strategies import schedule_strategy

from .bite import BUDGET, applicable, guarantees, model_ids, verdict
from .broken.threaded import FREE_ONLY, FREE_RARE, VARIANTS, backend

REQ_IDS = model_ids("REQ-")


def doc_version_for(gid: str) -> str:
    return "4.13" if gid.startswith("REQ-26") else "6.18"


def free_runs(gid: str, b, n: int, point_timeout: float = 2.0) -> list[Outcome]:
    """``n`` free runs of ``gid`` over hypothesis-drawn schedules (fixed seed), all outcomes."""
    g, version = guarantees()[gid], doc_version_for(gid)
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

@pytest.mark.parametrize("gid", REQ_IDS)
def test_threaded_passes_controlled(gid: str) -> None:
    found = verdict(gid, ThreadedBackend(), doc_version_for(gid))
    assert found is None, str(found)


@pytest.mark.parametrize("gid", REQ_IDS)
def test_threaded_passes_free(gid: str) -> None:
    g = guarantees()[gid]
    if not applicable(g, ThreadedBackend(), doc_version_for(gid)):
        pytest.skip("not applicable to the threaded backend")
    outcomes = free_runs(gid, ThreadedBackend(), 40)
    bad = [o for o in outcomes if o.violation is not None]
    assert not bad, f"{gid} free run: {bad[0].violation.kind}: {bad[0].violation.message}"
    exists = {i for i, c in enumerate(g.checks) if c.kind == "exists"}
    reached = set().union(*(o.reached for o in outcomes))
    assert exists <= reached, f"{gid}: no free run reached the exists check"


def requests_view(state) -> dict:
    """The vcpu-requests part of a state (other facets' mixins add their own keys)."""
    keys = ("ipis_sent", "vm_dead", "tlb_flushes_started", "tlb_flushes_done")
    vcpu_keys = set(VCpu(0).view())
    return {**{k: state[k] for k in keys},
            "vcpus": [{k: v[k] for k in vcpu_keys} for v in state["vcpus"]]}


@pytest.mark.parametrize("gid", REQ_IDS)
def test_same_steps_as_the_reference_model(gid: str) -> None:
    """Same labels, same order, same observable state: the threaded code implements the model."""
    g, version = guarantees()[gid], doc_version_for(gid)
    options = RunOptions(version)

    @seed(1)
    @settings(max_examples=15, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(schedule_strategy(g, version))
    def compare(s: Schedule) -> None:
        ref = run_schedule(g, ReferenceBackend(), s, options)
        thr = run_schedule(g, ThreadedBackend(), s, options)
        assert [(e.thread, e.texts) for e in thr.timeline] == [(e.thread, e.texts) for e in ref.timeline]
        assert requests_view(thr.final_state) == requests_view(ref.final_state)
        assert (thr.violation and thr.violation.kind) == (ref.violation and ref.violation.kind)

    compare()


def test_each_spec_thread_runs_on_its_own_os_thread() -> None:
    seen: dict[str, set[int]] = {}

    class Recording(ThreadedMachine):
        def run_op(self, ctx, op, args):
            seen.setdefault(ctx.name, set()).add(threading.get_ident())
            return super().run_op(ctx, op, args)

    b = ThreadedBackend()
    b.machine_class = Recording
    run_schedule(guarantees()["REQ-17"], b, Schedule("REQ-17", (), (), (1, 0, 2)), RunOptions("6.18"))
    assert set(seen) == {"vcpu0", "kicker1", "kicker2"}
    idents = [next(iter(s)) for s in seen.values()]
    assert all(len(s) == 1 for s in seen.values()) and len(set(idents)) == 3
    assert threading.get_ident() not in idents


# -- broken variants ------------------------------------------------------------------

@pytest.mark.parametrize("name,gid", [(n, gid) for n, (_, gids, _) in VARIANTS.items() for gid in gids])
def test_broken_variant_is_caught_controlled(name: str, gid: str) -> None:
    found = verdict(gid, backend(name), doc_version_for(gid))
    assert found is not None, f"{name} ({VARIANTS[name][2]}) was not caught by {gid} within {BUDGET} examples"


@pytest.mark.parametrize("name,gid", [(n, gids[0]) for n, (_, gids, _) in VARIANTS.items() if n not in FREE_RARE])
def test_broken_variant_is_caught_free(name: str, gid: str) -> None:
    outcomes = free_runs(gid, backend(name), 100)
    assert any(o.violation is not None for o in outcomes), f"no free run of {gid} caught {name}"


def test_controlled_failures_replay_exactly_and_shrink() -> None:
    found = verdict("REQ-15", backend("NoFinalPendingCheck"), "6.18", shrink=True)
    assert isinstance(found, ViolationFound)
    first = found.outcome
    assert len(first.schedule.tape) <= 5  # shrunk to a couple of preemptions
    for _ in range(5):
        again = run_schedule(guarantees()["REQ-15"], backend("NoFinalPendingCheck"), first.schedule,
                             RunOptions("6.18"))
        assert [(e.thread, e.texts) for e in again.timeline] == [(e.thread, e.texts) for e in first.timeline]
        assert again.violation is not None and again.violation.kind == first.violation.kind


def test_missing_notify_is_a_lost_wake_up_in_free_runs(no_thread_leak: None) -> None:
    # Under the engine a sleeper resumes once its condition holds, notified or not;
    # in a free run it really sleeps in Condition.wait, and the run says why.
    assert verdict("REQ-25", backend("WakeWithoutNotify"), max_examples=30) is None
    kinds = []
    for o in free_runs("REQ-25", backend("WakeWithoutNotify"), 15, point_timeout=0.3):
        if o.violation is not None:
            kinds.append(o.violation.kind)
            assert o.violation.kind == "hang", o.violation.message
            assert "lost wake-up" in o.violation.message and "vcpu0" in o.violation.message
            break
    assert kinds, f"{FREE_ONLY['WakeWithoutNotify'][1]}: never caught in 15 free runs"


# -- robustness ---------------------------------------------------------------------

def _kvmconf_threads() -> list[str]:
    # The engine's one watchdog thread (engine/guard.py) lives on, parked: it is not counted.
    return [t.name for t in threading.enumerate() if t.name.startswith("kvmconf") and t.name != "kvmconf-watchdog"]


def _threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name != "kvmconf-watchdog")


@pytest.fixture
def no_thread_leak():
    """No OS thread of the executor outlives the runs: idle workers leave within
    WORKER_IDLE, and nothing else (hung, parked or sleeping) stays behind."""
    deadline = time.monotonic() + 2
    while _kvmconf_threads() and time.monotonic() < deadline:  # idle workers of earlier tests
        time.sleep(0.01)
    before = _threads()
    yield
    deadline = time.monotonic() + 5
    while _threads() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _threads() == before, f"threads left running: {_kvmconf_threads()}"


class HangsInKick(ThreadedMachine):
    """kvm_vcpu_kick blocks on something only close() releases: outside the scheduler."""

    def init_hang(self, config) -> None:
        self.gate = threading.Event()

    def kvm_vcpu_kick(self, ctx, vcpu) -> None:
        self.gate.wait()
        point("never reached before close()")

    def close(self) -> None:
        self.gate.set()


class LockAcrossPoint(ThreadedMachine):
    """Holds the vCPU's CPU lock across a scheduling point (breaks the executor's rule 1)."""

    def kvm_make_request(self, ctx, req, vcpu, state=None) -> None:
        v = self.vcpus[vcpu]
        with v.cpu_lock:
            self.memory.set_bit(v, "requests", req & 0xFF)
            point("set_bit with the CPU lock held")


class WaitsForever(ThreadedMachine):
    def kvm_vcpu_kick(self, ctx, vcpu) -> None:
        wait_on(self.acked, "wait for an acknowledgement nobody sends", lambda: False)


class KickWaitsForGuest(ThreadedMachine):
    """Waits with scheduling.wait_until (no condition variable) until the vCPU runs guest code."""

    def kvm_vcpu_kick(self, ctx, vcpu) -> None:
        v = self.vcpus[vcpu]
        wait_until("wait until vcpu0 runs guest code", lambda: v.in_guest)
        super().kvm_vcpu_kick(ctx, vcpu)


class KickRaises(ThreadedMachine):
    def kvm_vcpu_kick(self, ctx, vcpu) -> None:
        point("about to fail")
        raise RuntimeError("kick exploded")


def run_toy(machine: type, free: bool, tape: tuple[int, ...] = (1,), timeout: float = 0.5) -> Outcome:
    b = ThreadedBackend()
    b.machine_class = machine
    s = Schedule("REQ-15", (("req", KVM_REQ_TLB_FLUSH),), (), tape)
    start = time.monotonic()
    out = run_schedule(guarantees()["REQ-15"], b, s, RunOptions("6.18", free=free, point_timeout=timeout))
    assert time.monotonic() - start < 5 * timeout + 3, "the run outlived its bounded time"
    return out


@pytest.mark.parametrize("free", [False, True], ids=["controlled", "free"])
def test_a_blocking_backend_thread_is_reported_as_a_hang(no_thread_leak: None, free: bool) -> None:
    out = run_toy(HangsInKick, free)
    assert out.violation is not None and out.violation.kind == "hang", out.violation
    msg = out.violation.message
    assert "requester" in msg and "vcpu0" in msg
    assert "self.gate.wait()" in msg  # the hung thread's Python stack
    assert "express it with wait_on()" in msg  # a real wait the engine cannot see


def test_a_lock_held_across_a_point_is_reported_with_both_threads(no_thread_leak: None) -> None:
    # requester parks holding the CPU lock; vcpu0 then blocks on it in local_irq_disable.
    out = run_toy(LockAcrossPoint, False, tape=(1, 0, 0))
    assert out.violation is not None and out.violation.kind == "hang", out.violation
    assert "vcpu0 did not reach its next scheduling point" in out.violation.message
    assert "local_irq_disable" in out.violation.message
    assert "set_bit with the CPU lock held" in out.violation.message


@pytest.mark.parametrize("free", [False, True], ids=["controlled", "free"])
def test_every_thread_waiting_is_a_deadlock(no_thread_leak: None, free: bool) -> None:
    out = run_toy(WaitsForever, free)
    assert out.violation is not None and out.violation.kind == "deadlock", out.violation
    assert "requester" in out.violation.message


@pytest.mark.parametrize("free", [False, True], ids=["controlled", "free"])
def test_an_exception_in_a_backend_thread_is_reported(no_thread_leak: None, free: bool) -> None:
    out = run_toy(KickRaises, free)
    assert out.violation is not None and out.violation.kind == "error", out.violation
    assert "kick exploded" in out.violation.message and "kvm_vcpu_kick" in out.violation.message


@pytest.mark.parametrize("free", [False, True], ids=["controlled", "free"])
def test_wait_until_without_a_condition_variable(no_thread_leak: None, free: bool) -> None:
    for tape in ((0,), (1,), (1, 0, 0), (0, 1, 1, 2, 1)):
        out = run_toy(KickWaitsForGuest, free, tape=tape, timeout=3.0)
        assert out.violation is None, out.violation
        vcpu0 = out.final_state["vcpus"][0]
        assert vcpu0["entries"] == 1 and vcpu0["exits"] == 1 and vcpu0["ipis"] == 1


def test_without_worker_reuse_threads_end_with_their_run(monkeypatch) -> None:
    from pytest_kvmconf.engine import workers

    monkeypatch.setattr(workers, "WORKER_IDLE", 0)
    time.sleep(0.3)  # earlier tests' idle workers leave

    before = _threads()
    seen: list[threading.Thread] = []

    class Recording(ThreadedMachine):
        def run_op(self, ctx, op, args):
            seen.append(threading.current_thread())
            return super().run_op(ctx, op, args)

    b = ThreadedBackend()
    b.machine_class = Recording
    for free in (False, True):
        for tape in ((0,), (1,), (1, 0, 0)):
            run_schedule(guarantees()["REQ-15"], b, Schedule("REQ-15", (("req", KVM_REQ_TLB_FLUSH),), (), tape),
                         RunOptions("6.18", free=free))
        deadline = time.monotonic() + 1
        while _threads() > before and time.monotonic() < deadline:
            time.sleep(0.005)
        assert _threads() == before
    # two spec threads per run, a fresh OS thread each time
    assert len({id(t) for t in seen}) == 12


def test_no_thread_outlives_many_runs(no_thread_leak: None) -> None:
    for gid in ("REQ-11", "REQ-15", "REQ-25"):
        verdict(gid, ThreadedBackend(), max_examples=20)
        verdict(gid, backend("WaitSkipsAcks"), max_examples=20)
        free_runs(gid, ThreadedBackend(), 20)
