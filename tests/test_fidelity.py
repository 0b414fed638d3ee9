"""Fidelity: each spec checks what its sentence says against what Linux does, no more and no less.

Each test here pins one correction of issue 13 (items 3-6): the spec as it stands holds on the
models, and the spec as it was (an over-read, a fictional event, a check that could not fail)
is shown to be wrong against a model of what the kernel does, or too weak to catch a broken one.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from hypothesis import Phase, settings

from pytest_kvmconf.backends.reference import ReferenceBackend, ReferenceMachine
from pytest_kvmconf.engine.explore import NothingReached, ViolationFound, explore
from pytest_kvmconf.engine.runner import RunOptions
from pytest_kvmconf.errors import BackendFault
from pytest_kvmconf.facets.requests import IN_GUEST_MODE, READING_SHADOW_PAGE_TABLES
from pytest_kvmconf.scheduling import Point
from pytest_kvmconf.spec.loader import load_file
from pytest_kvmconf.spec.model import Guarantee
from pytest_kvmconf.spec.versions import NEWEST

from .bite import BUDGET, SPECS, guarantees, verdict


def as_it_was(tmp_path: Path, gid: str, file: str, old: str, new: str) -> Guarantee:
    """Guarantee ``gid`` of ``specs/<file>`` with ``old`` (which must occur) replaced by ``new``:
    the spec text before a correction, to show what the correction changed."""
    text = (SPECS / file).read_text(encoding="utf-8")
    assert old in text, f"{old!r} is not in {file} any more"
    path = tmp_path / file
    path.write_text(text.replace(old, new), encoding="utf-8")
    return next(g for g in load_file(path) if g.id == gid)


def run(g: Guarantee, backend, doc_version: str = NEWEST, max_examples: int = BUDGET):
    """The violation ``backend`` shows for ``g`` within the budget, or None."""
    base = settings(max_examples=max_examples, database=None, deadline=None,
                    phases=[Phase.explicit, Phase.generate])
    try:
        explore(g, backend, RunOptions(doc_version), base, seed=0)
    except (ViolationFound, NothingReached) as exc:
        return exc
    return None


# -- LOCK-07: "everything else is a leaf" is about the locks section 1 does not order ------------

def test_lock_07_leaves_are_only_the_unordered_locks() -> None:
    leaves = guarantees()["LOCK-07"].locks.leaves
    assert set(leaves) == {"kvm->mn_invalidate_lock", "kvm->arch.tsc_write_lock", "wakeup_vcpus_on_cpu_lock"}
    assert verdict("LOCK-07", ReferenceBackend()) is None


def test_lock_07_as_it_was_flags_set_nx_huge_pages(tmp_path: Path) -> None:
    # kvm_lock as a leaf: set_nx_huge_pages() takes kvm->slots_lock inside it, as Linux does.
    g = as_it_was(tmp_path, "LOCK-07", "locking.toml",
                  'leaves = ["kvm->mn_invalidate_lock",', 'leaves = ["kvm_lock", "kvm->mn_invalidate_lock",')
    found = run(g, ReferenceBackend())
    assert found is not None and "kvm_lock" in str(found)


# -- LOCK-01: its workload updates a memslot, so an order broken there is LOCK-01's ---------------

def test_lock_01_catches_a_memslot_update_taking_kvm_lock_inside_slots_lock() -> None:
    from .broken.locking import backend as broken_locking

    assert verdict("LOCK-01", broken_locking("MemslotUpdateTakesKvmLock")) is not None


# -- MP-10.b, MP-11: arm64 never makes KVM_SYSTEM_EVENT_CRASH -------------------------------------

def test_no_arm64_program_makes_a_crash_event() -> None:
    from pytest_kvmconf.facets.mp import KVM_SYSTEM_EVENT_CRASH, SYSTEM_EVENT_PROGRAMS

    assert KVM_SYSTEM_EVENT_CRASH not in SYSTEM_EVENT_PROGRAMS["arm64"].values()
    assert set(SYSTEM_EVENT_PROGRAMS["x86_64"].values()) == {KVM_SYSTEM_EVENT_CRASH}
    (program,) = guarantees()["MP-10.b"].params
    assert "crash" not in program.values


def test_mp_10b_as_it_was_asks_arm64_for_a_crash_the_model_refuses(tmp_path: Path) -> None:
    from pytest_kvmconf.backends.threaded import ThreadedBackend

    g = as_it_was(tmp_path, "MP-10.b", "api-mp-state.toml",
                  'choice = ["system_off", "system_reset", "psci_suspend"]',
                  'choice = ["system_off", "system_reset", "crash", "psci_suspend"]')
    for backend in (ReferenceBackend(), ThreadedBackend()):
        # The backend refuses the machine: reported as its new_machine() failing, in one paragraph.
        with pytest.raises(BackendFault, match="new_machine\\(\\) raised ValueError: guest program 'crash' has no "
                                               "arm64 form"):
            run(g, backend)


# -- Linux-like: every spec holds except the shipped linux.toml entries, each a known violation ---

LINUX_CONFTEST = f'''
import sys
sys.path.insert(0, {str(SPECS.parent)!r})
from tests.linux_like import pytest_kvmconf_backends  # noqa: F401
'''


@pytest.mark.parametrize(("backend", "files"), [("linux-like", ("linux",)),
                                                ("linux-like-pre-6.4", ("linux", "linux-pre-6.4"))])
def test_linux_like_backend_fails_exactly_the_shipped_linux_entries(
        pytester: pytest.Pytester, backend: str, files: tuple[str, ...]) -> None:
    from pytest_kvmconf.expectations import SHIPPED, load, resolve

    listed = []
    for name in files:
        assert resolve(name) == SHIPPED / f"{name}.toml"
        listed += load(SHIPPED / f"{name}.toml")
    listed.sort()
    pytester.makeconftest(LINUX_CONFTEST)
    common = ("-p", "no:cacheprovider", f"--kvm-backend={backend}", *(f"--kvm-expect={f}" for f in files),
              "-rxXfE", "-q")
    # Every other spec holds (a quick run: the backend is the reference but for a few rules) ...
    # (In a subprocess: hypothesis' settings profile is process-wide, and other tests load theirs.)
    rest = pytester.runpytest_subprocess(*common, "--kvm-profile=quick", "-k", " and ".join(f"not {g}" for g in listed))
    assert rest.ret == 0 and set(rest.parseoutcomes()) <= {"passed", "skipped", "deselected"}, \
        rest.stdout.str()[-3000:]
    # ... and each listed one is violated, with hypothesis' default budget, as a known violation.
    # With a fixed seed: ATTR-10's pre-6.4 difference needs a vCPU that has not run to set the
    # PPI after another ran, which 2-3 % of seeds miss within 100 schedules (benchmarks'
    # share within the budget); a test must not fail on them.
    known = pytester.runpytest_subprocess(*common, "--kvm-profile=default", "--hypothesis-seed=0",
                                          "-k", " or ".join(listed))
    xfailed = sorted(line.split()[1].rsplit("::", 1)[-1] for line in known.outlines if line.startswith("XFAIL "))
    assert known.ret == 0 and xfailed == listed, known.stdout.str()[-3000:]


def test_linux_pmu_irq_rule_breaks_only_the_userspace_obligation_of_attr_05() -> None:
    from .broken import running
    from .linux_like import LinuxLikeBackend, LinuxPmuIrq

    # Judged as a VMM-side model (userspace_obligations), Linux's rule lets types mix: caught.
    found = verdict("ATTR-05", running(LinuxPmuIrq, "linux-pmu-irq-as-vmm"))
    assert found is not None and ("different types" in str(found) or "another type" in str(found))
    # On a KVM (no such capability) only what KVM enforces is judged: it holds.
    assert verdict("ATTR-05", LinuxLikeBackend()) is None


def test_attr_11_as_it_was_over_read_the_silence_about_later_vcpus(tmp_path: Path) -> None:
    from .linux_like import LinuxLikeBackend

    assert verdict("ATTR-11", LinuxLikeBackend()) is None
    g = as_it_was(tmp_path, "ATTR-11", "devices-vcpu.toml", "# The text says nothing of vCPUs created later",
                  """[[guarantee.check]]
when = "step.returned == 'arm_create_vcpu' and step.result >= 0"
always = "arm_vcpus[step.result].vtimer == DEFAULT_VTIMER_IRQ and arm_vcpus[step.result].ptimer == DEFAULT_PTIMER_IRQ"
message = "a vCPU created after a timer interrupt was set took that setting"
# The text says nothing of vCPUs created later""")
    found = run(g, LinuxLikeBackend())
    assert found is not None and "created after" in str(found)


def test_obligation_is_validated_and_documented(tmp_path: Path) -> None:
    from pytest_kvmconf.spec.loader import SpecError

    text = (SPECS / "devices-vcpu.toml").read_text(encoding="utf-8")
    path = tmp_path / "bad.toml"
    path.write_text(text.replace('\nobligation = "userspace"', '\nobligation = "vmm"', 1), encoding="utf-8")
    with pytest.raises(SpecError, match=r"guarantee ATTR-05: key check\[0\]\.obligation: one of 'kvm', 'userspace'"):
        load_file(path)
    assert 'obligation = "userspace"' in (SPECS.parent / "CONTRIBUTING.md").read_text(encoding="utf-8")


# -- Item 5: checks judge what reached the vCPU, not the backend's log of its decisions -----------

def test_req_09_as_it_was_exempted_the_shadow_walk(tmp_path: Path) -> None:
    from .broken.requests import backend as broken_requests

    broken = broken_requests("KickIpisShadowWalk")
    assert verdict("REQ-09", broken) is not None
    g = as_it_was(tmp_path, "REQ-09", "vcpu-requests.toml",
                  '''when = """step.returned == 'kvm_vcpu_kick' and not step.before.vcpus[0].sleeping
  and step.before.vcpus[0].mode != IN_GUEST_MODE''',
                  '''when = """step.returned == 'kvm_vcpu_kick' and not step.before.vcpus[0].sleeping
  and step.before.vcpus[0].mode == OUTSIDE_GUEST_MODE''')
    assert run(g, broken) is None  # the shadow-table walk was exempt: an IPI there went unseen


class SilentShadowWalkIpi(ReferenceMachine):
    """Logs its decisions as the document says, but delivers an IPI to a vCPU that reads the
    shadow page tables whatever the request: only a check of delivered IPIs sees it."""

    def kvm_make_all_cpus_request(self, ctx, req):
        for v in self.vcpus:
            if v.mode == READING_SHADOW_PAGE_TABLES:
                self.send_ipi(v)
        return (yield from super().kvm_make_all_cpus_request(ctx, req))


def test_req_13_judges_delivered_ipis_not_the_decision_log(tmp_path: Path) -> None:
    from .broken import running

    lying = running(SilentShadowWalkIpi, "silent-ipi")
    assert verdict("REQ-13", lying) is not None
    decision_log = (
        '[[guarantee.check]]\nalways = """all(act == \'wake\' or (act == \'ipi\') == '
        '((m != OUTSIDE_GUEST_MODE) if r & KVM_REQUEST_WAIT else (m == IN_GUEST_MODE))\n'
        '  for v in vcpus for m, r, act in v.kicks if r >= 0)"""\n\n')
    first = "[[guarantee.check]]\nwhen = \"\"\"step.returned == 'kvm_make_all_cpus_request' and not flags"
    # As it was: the decision log instead of the delivered IPIs (the new checks switched off).
    old = as_it_was(tmp_path, "REQ-13", "vcpu-requests.toml", first,
                    decision_log + first.replace("and not flags", "and False and not flags"))
    old = dataclasses.replace(old, checks=tuple(c for c in old.checks if "step.before.vcpus[0].in_guest"
                                                not in (c.when.source if c.when else "")))
    assert run(old, lying) is None  # the decision log looked right


def test_make_all_cpus_request_result_is_checked() -> None:
    from .broken.requests import backend as broken_requests

    assert any("sent ==" in c.expr.source for c in guarantees()["REQ-06"].checks)
    assert verdict("REQ-06", broken_requests("MakeAllAlwaysTrue")) is not None


WHITE_BOX = (".kicks", ".acks", ".stay_ipis")


def test_checks_reading_model_counters_declare_the_capability() -> None:
    from pytest_kvmconf.backend import skip_reason

    readers = {g.id for g in guarantees().values()
               if any(w in c.expr.source or (c.when is not None and w in c.when.source)
                      for c in g.checks for w in WHITE_BOX)}
    assert readers == {"REQ-17"}
    for gid in readers:
        assert "model_counters" in guarantees()[gid].needs
    black_box = ReferenceBackend()
    black_box.capabilities = black_box.capabilities - {"model_counters"}
    g = guarantees()["REQ-17"]
    assert "lacks capability model_counters" in skip_reason(black_box, g.needs, g.arch, NEWEST)


# -- Item 6: the models take the kernel's steps --------------------------------------------------

def spec(tmp_path: Path, body: str) -> Guarantee:
    path = tmp_path / "model.toml"
    path.write_text('[document]\nfile = "vcpu-requests.rst"\narea = "requests"\n\n[[guarantee]]\nid = "MODEL-01"\n'
                    'title = "t"\nsection = "s"\nquote = "q"\nversions = { since = "4.13" }\n' + body,
                    encoding="utf-8")
    return load_file(path)[0]


def holds_on_the_models_but_not_on(g: Guarantee, old: type) -> None:
    """``g`` (a model-fidelity property) holds on the reference and threaded models, and fails on
    ``old``, the reference model as it was before the fix."""
    from pytest_kvmconf.backends.threaded import ThreadedBackend

    from .broken import running

    assert run(g, ReferenceBackend()) is None
    assert run(g, ThreadedBackend(), max_examples=30) is None
    assert run(g, running(old, f"old-{old.__name__}")) is not None


class OldWakeUp(ReferenceMachine):
    """The model before the fix: waking an already running task counted as a wake."""

    def kvm_vcpu_wake_up(self, v) -> bool:
        if not v.sleeping:
            return False
        if not v.woken:
            v.woken = True
            v.wakeups += 1
        return True


def test_a_wake_up_of_a_running_task_is_no_wake_up(tmp_path: Path) -> None:
    g = spec(tmp_path, '''
[[guarantee.thread]]
name = "vcpu0"
vcpu = 0
steps = [{ op = "kvm_vcpu_block", vcpu = 0 }]

[[guarantee.thread]]
name = "waker"
steps = [{ op = "make_runnable", vcpu = 0 }, { op = "kvm_vcpu_kick", vcpu = 0 }]

# kvm_vcpu_kick() reports a wake only when wake_up_process() woke the task.
[[guarantee.check]]
never = "count(k[2] == 'wake' for k in vcpus[0].kicks) > vcpus[0].wakeups"
''')
    holds_on_the_models_but_not_on(g, OldWakeUp)


class OldPostedInterrupt(ReferenceMachine):
    """The model before the fix: a posted interrupt neither woke a blocked vCPU nor made it runnable."""

    def kvm_vcpu_trigger_posted_interrupt(self, v):
        if v.mode == IN_GUEST_MODE:
            self.send_pi_notification(v)
        yield Point("no wake-up")

    def kvm_vcpu_check_block(self, v):
        return "runnable" if v.runnable else super().kvm_vcpu_check_block(v) if not v.pir_on else None


def blocked_vcpu_and(tmp_path: Path, op: str, final: str) -> Guarantee:
    """vCPU 0 in kvm_vcpu_block (its result bound to ``why``) while another thread runs ``op``."""
    return spec(tmp_path, f'''
[[guarantee.thread]]
name = "vcpu0"
vcpu = 0
steps = [{{ op = "kvm_vcpu_block", vcpu = 0, as = "why" }}]

[[guarantee.thread]]
name = "other"
steps = [{{ op = "{op}", vcpu = 0 }}]

[[guarantee.check]]
final = "{final}"
''')


def test_a_posted_interrupt_wakes_a_blocked_vcpu(tmp_path: Path) -> None:
    g = blocked_vcpu_and(tmp_path, "post_interrupt", "threads.vcpu0.done and why == 'runnable'")
    holds_on_the_models_but_not_on(g, OldPostedInterrupt)


def test_a_second_posted_interrupt_sends_no_second_notification() -> None:
    from pytest_kvmconf.backend import MachineConfig, ThreadContext
    from pytest_kvmconf.backends.threaded import ThreadedBackend

    config = MachineConfig(1, "x86_64", NEWEST)
    ctx = ThreadContext("poster", None)
    for backend in (ReferenceBackend(), ThreadedBackend()):
        m = backend.new_machine(config)
        sent = []
        m.send_pi_notification = m.send_pi_notification = lambda v, sent=sent: sent.append(v.id)
        v = m.vcpus[0]
        if hasattr(v.mode, "write"):
            v.mode.write(IN_GUEST_MODE)
        else:
            v.mode = IN_GUEST_MODE
        for vector in (32, 33, 32):
            out = m.run_op(ctx, "post_interrupt", {"vcpu": 0, "vector": vector})
            if out is not None:
                list(out)
        assert sent == [0], (backend.name, sent)  # PIR.ON was set by the first: no more IPIs
        m.close()


class OldCheckBlock(ReferenceMachine):
    """The model before the fix: kvm_vcpu_check_block() without kvm_cpu_has_pending_timer()."""

    def kvm_vcpu_check_block(self, v):
        pending, v.timer_pending = v.timer_pending, False
        try:
            return super().kvm_vcpu_check_block(v)
        finally:
            v.timer_pending = pending


def test_a_pending_timer_ends_kvm_vcpu_block(tmp_path: Path) -> None:
    # The timer is checked before KVM_REQ_UNBLOCK, which apic_timer_expired() also makes.
    holds_on_the_models_but_not_on(blocked_vcpu_and(tmp_path, "expire_timer", "why == 'timer'"), OldCheckBlock)


def test_kvm_run_of_an_uninitialized_ap_returns_eagain_once_woken() -> None:
    from pytest_kvmconf.backend import MachineConfig, ThreadContext
    from pytest_kvmconf.facets.mp import EAGAIN, KVM_MP_STATE_UNINITIALIZED

    m = ReferenceBackend().new_machine(MachineConfig(2, "x86_64", NEWEST, {"irqchip": True}))
    assert m.mp_vcpus[1].state == KVM_MP_STATE_UNINITIALIZED
    list(m.run_op(ThreadContext("vmm", None), "inject_wakeup", {"vcpu": 1}))
    gen = m.run_op(ThreadContext("vcpu1", 1), "kvm_run", {"vcpu": 1})
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        assert stop.value["ret"] == -EAGAIN


def test_mp_09b_checks_what_the_guest_reads(tmp_path: Path) -> None:
    from .broken.mp import BROKEN
    from .broken.mp import backend as broken_mp

    silent = broken_mp(next(m for m in BROKEN if m.__name__ == "SuspendIgnoredReturnsSuccess"))
    assert verdict("MP-09.b", silent) is not None
    g = as_it_was(tmp_path, "MP-09.b", "api-mp-state.toml",
                  'final = "regs is not None and regs.x0 == PSCI_RET_NOT_SUPPORTED"', 'final = "True"')
    assert run(g, silent) is None  # no exit was all it checked


def test_every_shipped_linux_entry_cites_a_kernel_function_and_commit() -> None:
    from pytest_kvmconf.expectations import SHIPPED, load

    files = sorted(SHIPPED.glob("linux*.toml"))
    assert {f.stem for f in files} == {"linux", "linux-pre-6.4"}
    for f in files:
        for exp in load(f).values():
            assert re.search(r"\b[a-z_0-9]+\(\)", exp.reason), f"{f.name} {exp.id}: no kernel function"
            assert re.search(r"\b[0-9a-f]{12}\b", exp.reason), f"{f.name} {exp.id}: no commit id"
