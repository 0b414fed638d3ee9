"""The kvm backend's observers: KVM binary statistics and a private tracefs instance.

* the statistics of a VM and a vCPU are read by name; a name the kernel lacks reads None;
* a trace session sees kvm_vcpu_wakeup in the vCPU thread that an NMI woke, and the
  injection's kvm_msi_set_irq in the injecting thread, and nothing of other processes;
* a session leaves tracefs as found: no instance of ours, no mount of ours, and the global
  instance's event switches untouched;
* without tracefs (not mounted and not root, or no tracepoint) the reason is said.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pytest_kvmconf.backends.kvm import probe, tracefs, uapi
from pytest_kvmconf.backends.kvm.evidence import signal_pending, thread_state
from pytest_kvmconf.backends.kvm.vm import KICK_SIGNAL, Vm

REASON = probe.environment()[0]
live = pytest.mark.skipif(REASON is not None, reason=f"kvm backend unusable here: {REASON}")
TRACE_REASON = tracefs.unavailable(("kvm/kvm_vcpu_wakeup",))
traced = pytest.mark.skipif(TRACE_REASON is not None, reason=f"no tracefs here: {TRACE_REASON}")


def mounts() -> list[str]:
    # A concurrent run's private mount comes and goes on its own: only ours and the shared ones count.
    return tracefs.own_mounts()


def nmi(vm: Vm, vcpu: int) -> int:
    msi = uapi.kvm_msi(address_lo=uapi.X86_MSI_BASE | (vcpu << uapi.X86_MSI_DEST_SHIFT), data=uapi.X86_DELIVERY_NMI)
    return vm.ioctl(uapi.KVM_SIGNAL_MSI, msi, "KVM_SIGNAL_MSI")


def asleep(vm: Vm, vcpu: int) -> None:
    deadline = time.monotonic() + 10
    while not vm.vcpus[vcpu].blocking():
        assert time.monotonic() < deadline, "the halted vCPU never slept"
        time.sleep(0.001)


@live
def test_binary_statistics_by_name() -> None:
    vm = Vm(1, True, "hlt", lambda: None)
    try:
        v = vm.vcpus[0]
        assert v.stats is not None and vm.stats is not None
        assert {"blocking", "halt_wakeup", "exits", "signal_exits"} <= v.stats.names
        assert "remote_tlb_flush" in vm.stats.names
        assert v.stat("no_such_statistic") is None
        before = v.stats.snapshot(["halt_wakeup"])
        ticket = v.start_run()
        asleep(vm, 0)
        assert thread_state(v.tid) == "S" and v.blocking()
        assert nmi(vm, 0) > 0
        assert ticket.done.wait(10)
        assert v.stats.delta(before)["halt_wakeup"] == 1  # the NMI woke it from its sleep
    finally:
        vm.close()


@live
def test_a_pending_signal_is_seen_until_taken() -> None:
    vm = Vm(1, True, "busy", lambda: None)
    try:
        v = vm.vcpus[0]
        assert signal_pending(v.tid, KICK_SIGNAL) is False
    finally:
        vm.close()


@live
@traced
def test_a_session_sees_the_wake_up_and_the_injection_in_their_threads() -> None:
    tracefs.shutdown()  # an earlier test's session (one per process) would hold the mount
    before = mounts()
    session = tracefs.session()
    sub = session.subscribe(["kvm/kvm_vcpu_wakeup", "kvm/kvm_msi_set_irq", "kvm/kvm_userspace_exit"])
    vm = Vm(1, True, "hlt", lambda: None)
    try:
        v = vm.vcpus[0]
        ticket = v.start_run()
        asleep(vm, 0)
        assert nmi(vm, 0) > 0
        assert ticket.done.wait(10)
        assert session.wait_for(sub, lambda evs: any(e.name == "kvm_userspace_exit" and e.tid == v.tid
                                                     for e in evs), 10)
        assert [e.name for e in sub.of(v.tid, "kvm_vcpu_wakeup")] == ["kvm_vcpu_wakeup"]
        injections = sub.named("kvm_msi_set_irq")
        assert len(injections) == 1 and injections[0].tid == __import__("threading").get_native_id()
        assert sub.of(v.tid, "kvm_userspace_exit")[0].field("reason") == "KVM_EXIT_IO"
        # Only this process's threads: every event is from a thread of ours.
        ours = {int(t) for t in os.listdir("/proc/self/task")} | {v.tid}
        assert {e.tid for e in sub.events} <= ours
    finally:
        vm.close()
        sub.close()
        tracefs.shutdown()
    assert f"{tracefs.INSTANCE_PREFIX}{os.getpid()}" not in tracefs.instance_names()
    assert mounts() == before


@traced
def test_the_global_tracing_state_is_untouched() -> None:
    root = tracefs._mounted()
    if root is None:
        pytest.skip("tracefs is not mounted globally here; the session mounts a private one")
    enabled = (Path(root) / "events/kvm/kvm_vcpu_wakeup/enable").read_text()
    pids = (Path(root) / "set_event_pid").read_text()
    session = tracefs.session()
    sub = session.subscribe(["kvm/kvm_vcpu_wakeup"])
    try:
        assert (Path(root) / "events/kvm/kvm_vcpu_wakeup/enable").read_text() == enabled
    finally:
        sub.close()
        tracefs.shutdown()
    assert (Path(root) / "set_event_pid").read_text() == pids


def test_no_tracefs_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracefs, "_mounted", lambda: None)
    monkeypatch.setattr(tracefs.os, "geteuid", lambda: 1000)
    assert tracefs.unavailable(("kvm/kvm_vcpu_wakeup",)) == "tracefs is not mounted and mounting it needs root"


def test_a_missing_tracepoint_says_which(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "instances").mkdir()
    (tmp_path / "events/kvm/kvm_vcpu_wakeup").mkdir(parents=True)
    monkeypatch.setattr(tracefs, "_mounted", lambda: str(tmp_path))
    assert tracefs.unavailable(("kvm/kvm_vcpu_wakeup",)) is None
    assert tracefs.unavailable(("kvm/kvm_inj_virq",)) == "the kernel has no tracepoint kvm/kvm_inj_virq"


def test_trace_lines_parse() -> None:
    line = "          python-15919   [001] .....   307.165674: kvm_vcpu_wakeup: wait time 102739163 ns, polling valid"
    ev = tracefs.parse(line)
    assert ev is not None and (ev.tid, ev.cpu, ev.name) == (15919, 1, "kvm_vcpu_wakeup")
    assert ev.field("time") == "102739163"
    ev = tracefs.parse("   python 3-12  [000] d..1.   1.5: kvm_msi_set_irq: dst 0 vec 0 (NMI|physical|edge)")
    assert ev is not None and ev.tid == 12 and ev.field("dst") == "0"
    assert tracefs.parse("# tracer: nop") is None
