"""LOCK specs bite, and the lockdep checker finds what lockdep finds.

The reference model passes every LOCK guarantee under the texts that state
it; each broken variant of tests/broken/locking.py is caught by its
guarantees within the default budget; lockdep.py reports inversions and
cycles with both acquisition paths, whether or not the run hung.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings

from pytest_kvmconf.backends.reference import ReferenceBackend
from pytest_kvmconf.backends.threaded import ThreadedBackend
from pytest_kvmconf.engine.explore import ViolationFound, explore
from pytest_kvmconf.engine.lockdep import READ, SYNC, WRITE, LockRecorder, find_violations
from pytest_kvmconf.engine.runner import RunOptions, run_schedule
from pytest_kvmconf.engine.schedule import Schedule
from pytest_kvmconf.spec.loader import SpecError, load_file
from pytest_kvmconf.spec.locks import LockRules
from pytest_kvmconf.strategies import schedule_strategy

from .bite import BUDGET, applicable, guarantees, model_ids, verdict
from .broken.locking import VARIANTS, backend

LOCK_IDS = model_ids("LOCK-")
# Every release at which section 1 or 3 changed (6.13 and 6.15 changed section 2 only), and the newest.
TEXTS = ("6.1", "6.2", "6.3", "6.8", "6.12", "6.18")


@pytest.mark.parametrize("gid,version", [(g, v) for g in LOCK_IDS for v in TEXTS
                                         if guarantees()[g].versions.contains(v)])
def test_reference_passes(gid: str, version: str) -> None:
    found = verdict(gid, ReferenceBackend(), version)
    assert found is None, str(found)


@pytest.mark.parametrize("name,gid", [(n, g) for n, (_, gids, _, _) in VARIANTS.items() for g in gids])
def test_broken_variant_is_caught(name: str, gid: str) -> None:
    _, _, version, doc = VARIANTS[name]
    g = guarantees()[gid]
    if not g.versions.contains(version):  # a variant broken under every text, caught by each
        version = next(v for v in TEXTS if g.versions.contains(v))
    b = backend(name)
    assert applicable(g, b, version)
    found = verdict(gid, b, version)
    assert found is not None, f"{name} ({doc}) was not caught by {gid} within {BUDGET} examples"
    assert found.outcome.violation.kind in ("lockdep", "deadlock", "never"), str(found)


def test_every_lock_guarantee_has_a_broken_variant() -> None:
    covered = {gid for _, gids, _, _ in VARIANTS.values() for gid in gids}
    assert set(LOCK_IDS) <= covered, f"no broken backend for {sorted(set(LOCK_IDS) - covered)}"


def test_lock_02_and_08_follow_the_document_version() -> None:
    g = guarantees()
    assert [v for v in TEXTS if g["LOCK-02"].versions.contains(v)] == ["6.12", "6.18"]
    assert [v for v in TEXTS if g["LOCK-02.a"].versions.contains(v)] == ["6.3", "6.8"]
    assert [v for v in TEXTS if g["LOCK-08"].versions.contains(v)] == ["6.12", "6.18"]
    assert [v for v in TEXTS if g["LOCK-08.a"].versions.contains(v)] == ["6.3", "6.8"]
    # The model follows the text: the 6.8 path counts users under kvm_lock, the 6.12 one under kvm_usage_lock.
    for version, lock in (("6.8", "kvm_lock"), ("6.12", "kvm_usage_lock")):
        m = ReferenceBackend().new_machine(_config(version))
        list(m.run_op(_ctx("t"), "kvm_create_vm", {}))
        (count,) = [a for a in m.observe()["data_accesses"] if a.data == "kvm_usage_count"]
        assert lock in {h.lock for h in count.held}


# -- the threaded backend: the same paths over real blocking locks, controlled and free -------

def newest_text(gid: str) -> str:
    return next(v for v in reversed(TEXTS) if guarantees()[gid].versions.contains(v))


@pytest.mark.parametrize("free", [False, True], ids=["controlled", "free"])
@pytest.mark.parametrize("gid", LOCK_IDS)
def test_threaded_passes(gid: str, free: bool) -> None:
    found = verdict(gid, ThreadedBackend(), newest_text(gid), free=free)
    assert found is None, str(found)


@pytest.mark.parametrize("gid", LOCK_IDS)
def test_threaded_takes_the_locks_where_the_model_does(gid: str) -> None:
    """Same schedules, same steps: the real locks block and wake exactly where the model's do."""
    g, version = guarantees()[gid], newest_text(gid)
    schedules: list[Schedule] = []

    @seed(0)
    @settings(max_examples=5, database=None, deadline=None, suppress_health_check=list(HealthCheck),
              phases=[Phase.generate])
    @given(schedule_strategy(g, version))
    def draw(s: Schedule) -> None:
        schedules.append(s)

    draw()
    for s in schedules:
        ref = run_schedule(g, ReferenceBackend(), s, RunOptions(version))
        thr = run_schedule(g, ThreadedBackend(), s, RunOptions(version))
        assert [(e.thread, e.texts) for e in thr.timeline] == [(e.thread, e.texts) for e in ref.timeline]
        assert thr.final_state["lock_pairs"] == ref.final_state["lock_pairs"]


@pytest.mark.parametrize("name,gid,free", [
    ("NotifierTakesSlotsLock", "LOCK-03", False),
    ("UpdateIgnoresInvalidations", "LOCK-03", True),
    ("VmexitTakesSlotsLock", "LOCK-04", True),
    ("XenHvmTakesVcpuMutex", "LOCK-06", True),
    ("OnlineCpuTakesUsageLock", "LOCK-02", False),
    ("TscSyncTakesKvmLock", "LOCK-09", True),
])
def test_threaded_broken_variant_is_caught(name: str, gid: str, free: bool) -> None:
    version = VARIANTS[name][2] if guarantees()[gid].versions.contains(VARIANTS[name][2]) else newest_text(gid)
    b = backend(name, ThreadedBackend())
    if free:  # preemptive runs do not replay, so no hypothesis verdict: the first violating run
        assert first_free_violation(guarantees()[gid], b, version) is not None, \
            f"no free run of {gid} caught {name} on real locks"
    else:
        assert verdict(gid, b, version) is not None, f"{name} on real locks was not caught by {gid}"


def first_free_violation(g, b, version: str, n: int = BUDGET):
    """The first violation among ``n`` free runs over hypothesis-drawn schedules (fixed seed)."""
    found: list = []

    @seed(0)
    @settings(max_examples=n, database=None, deadline=None, suppress_health_check=list(HealthCheck),
              phases=[Phase.generate])
    @given(schedule_strategy(g, version))
    def run(s: Schedule) -> None:
        if not found:
            out = run_schedule(g, b, s, RunOptions(version, free=True, point_timeout=2.0))
            if out.violation is not None:
                found.append(out.violation)

    run()
    return found[0] if found else None


# -- an inversion is reported even when the run does not hang; a hang is a deadlock ----------

def test_inversion_reported_with_both_paths_without_a_hang() -> None:
    g = guarantees()["LOCK-09"]
    sequential = Schedule("LOCK-09", (), (("host", ((2, ()),)),), ())  # no preemption at all
    out = run_schedule(g, backend("TscSyncTakesKvmLock"), sequential, RunOptions("6.18"))
    assert out.violation is not None and out.violation.kind == "lockdep", out.violation
    msg = out.violation.message
    assert "kvm->lock -> vcpu->mutex" in msg and "vcpu->mutex -> kvm->lock" in msg
    assert "thread vmm, kvm_vm_ioctl_create_vcpu: mutex_lock(&vcpu0->mutex)" in msg
    assert "thread vcpu0, kvm_synchronize_tsc: mutex_lock(&kvm->lock)" in msg


def test_scheduler_reaches_the_ab_ba_deadlock(tmp_path: Path) -> None:
    spec = tmp_path / "abba.toml"
    spec.write_text('''
[document]
file = "locking.rst"
area = "locking"
[[guarantee]]
id = "LOCK-99"
title = "AB-BA"
section = "1"
quote = "kvm->lock is taken outside vcpu->mutex"
versions = { since = "6.8" }
[[guarantee.thread]]
name = "vmm"
steps = [{ op = "kvm_vm_ioctl_create_vcpu", vcpu = 0 }]
[[guarantee.thread]]
name = "vcpu0"
steps = [{ op = "kvm_synchronize_tsc", vcpu = 0 }]
[[guarantee.check]]
final = "True"
''')
    (g,) = load_file(spec)

    for b in (backend("TscSyncTakesKvmLock"), backend("TscSyncTakesKvmLock", ThreadedBackend())):
        with pytest.raises(ViolationFound) as found:
            explore(g, b, RunOptions("6.18"), settings(max_examples=BUDGET, database=None, deadline=None), seed=0)
        assert found.value.outcome.violation.kind == "deadlock", b.name
    # Preemptive real threads get really stuck on the real locks.
    free = first_free_violation(g, backend("TscSyncTakesKvmLock", ThreadedBackend()), "6.18")
    assert free is not None and free.kind == "deadlock", free
    # The correct order never hangs.
    assert explore(g, ReferenceBackend(), RunOptions("6.18"),
                   settings(max_examples=BUDGET, database=None, deadline=None), seed=0).examples == BUDGET
    # With the rule, the same broken paths are reported even on a schedule that does not hang.
    ruled = dataclasses.replace(g, locks=LockRules(deadlock_free=True))
    out = run_schedule(ruled, backend("TscSyncTakesKvmLock"), Schedule("LOCK-99", (), (), ()), RunOptions("6.18"))
    assert out.violation is not None and out.violation.kind == "lockdep"


# -- lockdep.py on hand-made recordings ------------------------------------------------------

def _take(rec: LockRecorder, thread: str, op: str, *locks: str) -> None:
    for lock in locks:
        rec.acquired(thread, op, lock, WRITE, f"mutex_lock(&{lock})")
    for lock in reversed(locks):
        rec.released(thread, lock)


def _check(rec: LockRecorder, **rules) -> list[str]:
    return find_violations(LockRules(**rules), rec.acquisitions, rec.accesses)


def test_cycle_of_length_three_names_every_path() -> None:
    rec = LockRecorder()
    _take(rec, "t1", "op_ab", "A", "B")
    _take(rec, "t2", "op_bc", "B", "C")
    assert _check(rec, deadlock_free=True) == []
    _take(rec, "t3", "op_ca", "C", "A")
    (msg,) = _check(rec, deadlock_free=True)
    assert "possible deadlock" in msg and msg.count(" -> ") >= 6
    for thread, op, lock in (("t1", "op_ab", "B"), ("t2", "op_bc", "C"), ("t3", "op_ca", "A")):
        assert f"thread {thread}, {op}: mutex_lock(&{lock})" in msg
    assert "thread t1, op_ab: mutex_lock(&A)" in msg


def test_order_inversion_shows_both_acquisition_paths() -> None:
    rec = LockRecorder()
    _take(rec, "vmm", "create_vcpu", "kvm->lock", "vcpu->mutex")
    _take(rec, "vcpu0", "bad_ioctl", "vcpu->mutex", "kvm->lock")
    (msg,) = _check(rec, order=(("kvm->lock", "vcpu->mutex"),))
    assert "thread vcpu0, bad_ioctl: mutex_lock(&vcpu->mutex)" in msg  # where the inner lock was taken
    assert "thread vcpu0, bad_ioctl: mutex_lock(&kvm->lock)" in msg  # and the outer one inside it
    assert "thread vmm, create_vcpu: mutex_lock(&kvm->lock)" in msg  # the documented order, as taken
    assert "thread vmm, create_vcpu: mutex_lock(&vcpu->mutex)" in msg


def test_transitive_inversion_across_threads() -> None:
    rec = LockRecorder()
    _take(rec, "t1", "x", "inner", "middle")
    _take(rec, "t2", "y", "middle", "outer")
    (msg,) = _check(rec, order=(("outer", "inner"),))
    assert "inner -> middle" in msg and "middle -> outer" in msg


def test_srcu_read_side_adds_no_edge_into_the_srcu_but_synchronize_does() -> None:
    rec = LockRecorder()
    rec.acquired("v", "run", "vcpu->mutex", WRITE, "mutex_lock(&vcpu->mutex)")
    rec.acquired("v", "run", "kvm->srcu", READ, "srcu_read_lock(&kvm->srcu)")
    rec.acquired("v", "run", "kvm->slots_arch_lock", WRITE, "mutex_lock(&kvm->slots_arch_lock)")
    for lock in ("kvm->slots_arch_lock", "kvm->srcu", "vcpu->mutex"):
        rec.released("v", lock)
    assert _check(rec, deadlock_free=True, not_in_srcu=("kvm->slots_lock",)) == []
    rec.acquired("m", "update", "kvm->slots_arch_lock", WRITE, "mutex_lock(&kvm->slots_arch_lock)")
    rec.synchronized("m", "update", "kvm->srcu", "synchronize_srcu(&kvm->srcu)")
    rec.released("m", "kvm->slots_arch_lock")
    found = _check(rec, deadlock_free=True, released_before_sync=("kvm->slots_arch_lock",))
    assert len(found) == 2
    assert any("synchronize_srcu(kvm->srcu) called with kvm->slots_arch_lock held" in m for m in found)
    assert any("kvm->srcu -> kvm->slots_arch_lock -> kvm->srcu" in m or
               "kvm->slots_arch_lock -> kvm->srcu -> kvm->slots_arch_lock" in m for m in found)
    assert all(e.mode == SYNC for e in rec.acquisitions if e.op == "update" and e.lock == "kvm->srcu")


def test_protects_leaves_only_under() -> None:
    rec = LockRecorder()
    rec.acquired("t", "walk", "kvm_lock", WRITE, "mutex_lock(&kvm_lock)")
    rec.accessed("t", "walk", "vm_list", False, "list_for_each_entry")
    rec.acquired("t", "walk", "cpu_hotplug_lock", READ, "cpus_read_lock()")
    rec.released("t", "cpu_hotplug_lock")
    rec.released("t", "kvm_lock")
    rec.accessed("t", "walk", "vm_list", False, "unlocked walk")
    rec.accessed("t", "update", "memslots", True, "rcu_assign_pointer")  # a publication: no srcu needed
    rec.acquired("t", "fault", "kvm->arch.tdp_mmu_pages_lock", WRITE, "spin_lock(&tdp)")
    found = _check(rec, protects=(("kvm_lock", ("vm_list",)), ("kvm->srcu", ("memslots",))),
                   leaves=("kvm_lock",), only_under=(("kvm->arch.tdp_mmu_pages_lock", "kvm->mmu_lock"),))
    assert len(found) == 3, found
    assert any("vm_list read without kvm_lock" in m and "unlocked walk" in m for m in found)
    assert any("kvm_lock is a leaf lock" in m and "cpus_read_lock()" in m for m in found)
    assert any("taken without kvm->mmu_lock held" in m for m in found)


def test_unknown_lock_in_a_spec_is_an_error(tmp_path: Path) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text('''
[document]
file = "locking.rst"
area = "locking"
[[guarantee]]
id = "LOCK-98"
title = "t"
section = "1"
quote = "q"
versions = { since = "6.8" }
[guarantee.locks]
order = [["kvm->lock", "vcpu->mutx"]]
[[guarantee.thread]]
name = "a"
steps = [{ op = "kvm_walk_vm_list" }]
[[guarantee.check]]
final = "True"
''')
    with pytest.raises(SpecError, match=r"LOCK-98: key locks.order\[0\]\[1\]: unknown lock 'vcpu->mutx'"):
        load_file(spec)


def _config(version: str):
    from pytest_kvmconf.backend import MachineConfig

    return MachineConfig(1, "x86_64", version)


def _ctx(name: str):
    from pytest_kvmconf.backend import ThreadContext

    return ThreadContext(name, None)
