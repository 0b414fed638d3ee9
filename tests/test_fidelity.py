"""Fidelity: each spec checks what its sentence says against what Linux does, no more and no less.

Each test here pins one correction of issue 13 (items 3-6): the spec as it stands holds on the
models, and the spec as it was (an over-read, a fictional event, a check that could not fail)
is shown to be wrong against a model of what the kernel does, or too weak to catch a broken one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import Phase, settings

from pytest_kvmconf.backends.reference import ReferenceBackend
from pytest_kvmconf.engine.explore import NothingReached, ViolationFound, explore
from pytest_kvmconf.engine.runner import RunOptions
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
        with pytest.raises(ValueError, match="'crash' has no arm64 form"):
            run(g, backend)


# -- Linux-like: every spec holds except the shipped linux.toml entries, each a known violation ---

LINUX_CONFTEST = f'''
import sys
sys.path.insert(0, {str(SPECS.parent)!r})
from tests.linux_like import pytest_kvmconf_backends  # noqa: F401
'''


def test_linux_like_backend_fails_exactly_the_shipped_linux_entries(pytester: pytest.Pytester) -> None:
    from pytest_kvmconf.expectations import SHIPPED, load, resolve

    assert resolve("linux") == SHIPPED / "linux.toml"
    listed = sorted(load(SHIPPED / "linux.toml"))
    pytester.makeconftest(LINUX_CONFTEST)
    common = ("-p", "no:cacheprovider", "--kvm-backend=linux-like", "--kvm-expect=linux", "-rxXfE", "-q")
    # Every other spec holds (a quick run: the backend is the reference but for a few rules) ...
    rest = pytester.runpytest(*common, "--kvm-profile=quick", "-k", " and ".join(f"not {g}" for g in listed))
    assert rest.ret == 0 and set(rest.parseoutcomes()) <= {"passed", "skipped", "deselected"}, \
        rest.stdout.str()[-3000:]
    # ... and each listed one is violated, with hypothesis' default budget, as a known violation.
    known = pytester.runpytest(*common, "-k", " or ".join(listed))
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
