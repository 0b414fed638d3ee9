"""The mp facet's operations on a real VM: one machine is one VM for one schedule.

Operations are written once, as generators of scheduling points (like the
reference model's), and run either by the generator engine or, with
``execution = "threads"``, on the engine's OS threads, where :meth:`run_op`
turns each point into :func:`pytest_kvmconf.scheduling.point` and each wait into
:func:`pytest_kvmconf.engine.threads.wait_on`.

The userspace steps are the scheduling points: the write of immediate_exit, the
signal, the entry into KVM_RUN, KVM_GET/SET_MP_STATE. KVM_RUN itself runs on the
vCPU's own thread (:mod:`.vm`); the spec thread that called it waits, idle, until
it returns, since it may legitimately stay in the kernel for good (a halted
vCPU with no interrupt coming, a busy guest). Because the kernel is not under
the engine's control, two bounded real-time waits stand in for "at once" and
"never":

* settling: after starting KVM_RUN the operation waits until it returns, or the
  vCPU sleeps in the kernel (KVM's "blocking" vCPU statistic), or the guest has
  kept running for :data:`SETTLE_RAN`, or :data:`SETTLE` at the most (kernels
  without binary statistics); then the vCPU counts as inside KVM_RUN for good;
* :data:`GRACE`: a signal or wake-up sent to a vCPU inside KVM_RUN is given this
  long to make KVM_RUN return before the kicker goes on; a KVM_RUN still running
  then counts as not interrupted (a lost kick, in MP-04's terms).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Mapping
from typing import Any

from ...backend import MachineConfig, ThreadContext
from ...facets.mp import MP_STATE_NAMES
from ...scheduling import Point, Wait, point
from . import guest, uapi
from .memory import MEMORY_OPTIONS, MemoryOps
from .vm import RunTicket, Vm

Steps = Generator[Point | Wait, None, Any]

#: Longest wait for KVM_RUN to return by itself before it counts as blocked.
SETTLE = 0.05
#: A guest that has kept counting this long without halting or exiting is running for good.
SETTLE_RAN = 0.005
#: How long the vCPU thread may take to pick up a KVM_RUN job.
ENTER_TIMEOUT = 2.0
#: How long a kick may take to bring a vCPU out of KVM_RUN.
GRACE = 0.25

OPTIONS = {"irqchip": "KVM_CREATE_IRQCHIP before the vCPUs (bool)",
           "program": f"guest program: one of {', '.join(guest.PROGRAMS)}", **MEMORY_OPTIONS}


class KvmMachine(MemoryOps):
    execution = "threads"

    def __init__(self, config: MachineConfig, execution: str = "threads"):
        self.execution = execution
        unknown = sorted(set(config.options) - set(OPTIONS))
        if unknown:
            raise ValueError(f"the kvm backend has no machine option {unknown[0]!r}; options: "
                             + "; ".join(f"{k}: {d}" for k, d in OPTIONS.items()))
        self.config = config
        self.irqchip = bool(config.options.get("irqchip", False))
        self.program = str(config.options.get("program", "busy"))
        if self.program not in guest.PROGRAMS:
            raise ValueError(f"the kvm backend's x86 guests have no program {self.program!r} "
                             f"(they have {', '.join(guest.PROGRAMS)})")
        self.cond = threading.Condition()
        n = config.vcpus
        self.seen: list[int | None] = [None] * n
        self.reads: list[list[int]] = [[] for _ in range(n)]
        self.settled = [0] * n
        self.signals = [0] * n
        self.wakeups = [0] * n
        self.suspend_enabled = False
        self.vm = None
        self._memory_init(config)
        try:
            self.vm = Vm(n, self.irqchip, self.program, self._notify, before_vcpus=self._memory_before_vcpus)
            self._memory_after_vcpus()
        except BaseException:
            self.close()
            raise

    # -- the engine's side ------------------------------------------------------
    def run_op(self, ctx: ThreadContext, op: str, args: Mapping[str, Any]) -> Any:
        method = getattr(self, "op_" + op, None)
        if method is None:
            raise NotImplementedError(f"the kvm backend has no operation {op!r}")
        steps = method(**args)
        if self.execution == "generator":
            return steps
        return self._drive(steps)

    def _drive(self, steps: Steps) -> Any:
        """Run a generator operation on this OS thread, point by point."""
        from ...engine.threads import wait_on

        try:
            item = next(steps)
            while True:
                if isinstance(item, Wait):
                    wait_on(self.cond, item.label, item.until, item.idle)
                else:
                    point(item.label)
                item = next(steps)
        except StopIteration as stop:
            return stop.value

    def observe(self) -> dict[str, Any]:
        vcpus = []
        for i, v in enumerate(self.vm.vcpus):
            run = v.run
            vcpus.append({
                "id": i, "mp_state": self.seen[i], "reads": tuple(self.reads[i]), "in_run": v.in_run,
                "entries": v.entries, "runs": v.runs,
                "exit_reason": run.exit_reason if run is not None else None,
                "immediate_exit": run.immediate_exit if run is not None else None,
                "signals": self.signals[i], "wakeups": self.wakeups[i],
                "guest_progress": self.vm.progress(i),
            })
        return {"mp": vcpus, "mp_vm": {"arch": "x86_64", "irqchip": self.irqchip, "program": self.program,
                                       "system_suspend": self.suspend_enabled}, **self._memory_observe()}

    def close(self) -> None:
        try:
            self._memory_close()
        finally:
            if self.vm is not None:
                self.vm.close()

    def _notify(self) -> None:
        with self.cond:
            self.cond.notify_all()

    # -- operations ---------------------------------------------------------------
    def op_kvm_get_mp_state(self, vcpu: int) -> Steps:
        mp = uapi.kvm_mp_state()
        ret = self.vm.vcpus[vcpu].ioctl(uapi.KVM_GET_MP_STATE, mp, "KVM_GET_MP_STATE")
        value = mp.mp_state if ret == 0 else ret
        if ret == 0:
            self.seen[vcpu] = value
            self.reads[vcpu].append(value)
        yield Point(f"KVM_GET_MP_STATE = {MP_STATE_NAMES.get(value, value)}")
        return value

    def op_kvm_set_mp_state(self, vcpu: int, state: int) -> Steps:
        arg = uapi.kvm_mp_state(state & 0xFFFFFFFF)
        ret = self.vm.vcpus[vcpu].ioctl(uapi.KVM_SET_MP_STATE, arg, "KVM_SET_MP_STATE")
        if ret == 0:
            self.seen[vcpu] = state
        yield Point(f"KVM_SET_MP_STATE({MP_STATE_NAMES.get(state, state)}) = {ret}")
        return ret

    def op_kvm_get_regs(self, vcpu: int) -> Steps:
        regs = uapi.kvm_regs()
        ret = self.vm.vcpus[vcpu].ioctl(uapi.KVM_GET_REGS, regs, "KVM_GET_REGS")
        yield Point("KVM_GET_REGS")
        if ret != 0:
            return {"error": ret}
        return {name: getattr(regs, name) for name, _ in uapi.kvm_regs._fields_}

    def op_set_immediate_exit(self, vcpu: int, value: int = 1) -> Steps:
        run = self.vm.vcpus[vcpu].run
        assert run is not None
        run.immediate_exit = value
        yield Point(f"vcpu{vcpu} kvm_run->immediate_exit = {value}")

    def op_signal_vcpu(self, vcpu: int) -> Steps:
        v = self.vm.vcpus[vcpu]
        self.signals[vcpu] += 1
        inside, runs = v.in_run, v.runs
        v.kick()
        if inside:
            self._grace(v, runs)
        yield Point(f"pthread_kill(vcpu{vcpu} thread, SIGRTMIN+2)"
                    + ("" if inside else ": not in KVM_RUN, the handler runs"))

    def op_inject_wakeup(self, vcpu: int) -> Steps:
        v = self.vm.vcpus[vcpu]
        self.wakeups[vcpu] += 1
        msi = uapi.kvm_msi(address_lo=uapi.X86_MSI_BASE | (vcpu << uapi.X86_MSI_DEST_SHIFT),
                           data=uapi.X86_DELIVERY_NMI)
        inside, runs = v.in_run, v.runs
        ret = self.vm.ioctl(uapi.KVM_SIGNAL_MSI, msi, "KVM_SIGNAL_MSI")
        if inside and ret > 0:
            self._grace(v, runs)
        yield Point(f"KVM_SIGNAL_MSI(NMI to vcpu{vcpu}) = {ret}")
        return ret

    def op_suppress_wakeup(self, vcpu: int) -> Steps:
        raise NotImplementedError("suppress_wakeup: an NMI cannot be masked by userspace "
                                  "(the x86 guests of the kvm backend take wake-ups as NMIs)")
        yield Point("unreachable")  # pragma: no cover

    def op_wait_in_kvm_run(self, vcpu: int, nth: int = 1) -> Steps:
        yield Wait(f"wait until vcpu{vcpu} is in its KVM_RUN #{nth}", lambda: self.settled[vcpu] >= nth)

    def op_kvm_check_extension(self, cap: int) -> Steps:
        ret = self.vm.ioctl(uapi.KVM_CHECK_EXTENSION, cap, "KVM_CHECK_EXTENSION")
        yield Point(f"KVM_CHECK_EXTENSION({cap}) = {ret}")
        return ret

    def op_kvm_enable_cap(self, cap: int) -> Steps:
        ret = self.vm.ioctl(uapi.KVM_ENABLE_CAP, uapi.kvm_enable_cap(cap=cap), "KVM_ENABLE_CAP")
        if ret == 0 and cap == uapi.KVM_CAP_ARM_SYSTEM_SUSPEND:
            self.suspend_enabled = True
        yield Point(f"KVM_ENABLE_CAP({cap}) = {ret}")
        return ret

    def op_kvm_run(self, vcpu: int) -> Steps:
        v = self.vm.vcpus[vcpu]
        before = self.vm.progress(vcpu)
        ticket = v.start_run()
        self._settle(v, ticket, before)
        self.settled[vcpu] += 1
        self._notify()
        if not ticket.done.is_set():
            yield Wait(f"in KVM_RUN #{ticket.nth} (the guest runs or the vCPU waits)",
                       ticket.done.is_set, idle=True)
        r = ticket.result
        assert r is not None
        shown = "-EINTR" if r.ret == -4 else r.ret
        yield Point(f"KVM_RUN #{ticket.nth} returns {shown}, exit_reason {r.exit_reason}")
        return {"ret": r.ret, "exit_reason": r.exit_reason, "system_event": r.system_event, "port": r.port}

    # -- bounded real-time waits ----------------------------------------------------
    def _settle(self, v: Any, ticket: RunTicket, progress_before: int) -> None:
        """Return once KVM_RUN has returned, or sleeps in the kernel (KVM's "blocking"
        statistic), or runs a guest that keeps counting, or after SETTLE at the most."""
        # First until the vCPU thread has taken the job (a busy host may be slow to run it).
        deadline = time.monotonic() + ENTER_TIMEOUT
        while v.entries < ticket.nth and not ticket.done.wait(0.0005):
            if time.monotonic() >= deadline:
                raise RuntimeError(f"vcpu{v.index}: its thread did not start KVM_RUN within {ENTER_TIMEOUT} s")
        start = time.monotonic()
        ran_since: float | None = None
        while not ticket.done.wait(0.0005):
            now = time.monotonic()
            if now - start >= SETTLE or v.blocking():
                return
            if self.vm.progress(v.index) != progress_before:
                if ran_since is None:
                    ran_since = now
                elif now - ran_since >= SETTLE_RAN:
                    return  # the guest has run for a while without halting or exiting

    def _grace(self, v: Any, runs_before: int) -> None:
        deadline = time.monotonic() + GRACE
        while v.runs == runs_before and v.in_run and time.monotonic() < deadline:
            time.sleep(0.0005)
