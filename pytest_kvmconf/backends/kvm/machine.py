"""The operations on a real VM: one machine is one VM for one schedule.

Operations are written once, as generators of scheduling points (like the
reference model's), and run either by the generator engine or, with
``execution = "threads"``, on the engine's OS threads, where :meth:`run_op`
turns each point into :func:`pytest_kvmconf.scheduling.point` and each wait into
:func:`pytest_kvmconf.engine.threads.wait_on`.

The userspace steps are the scheduling points: the write of immediate_exit, the
signal, the entry into KVM_RUN, KVM_GET/SET_MP_STATE, an injection. KVM_RUN
itself runs on the vCPU's own thread (:mod:`.vm`); the spec thread that called it
waits, idle, until it returns, since it may legitimately stay in the kernel for
good (a halted vCPU with no interrupt coming, a busy guest). The kernel is not
under the engine's control, so two waits stand in for "at once" and "never",
and both wait on the kernel's own evidence (:mod:`.evidence`), never on a fixed
time:

* settling: after starting KVM_RUN the operation waits until it returns, or the
  vCPU sleeps in the kernel (the "blocking" binary statistic), or (a guest that
  never halts by itself) the guest's progress counter moved;
* after a kick (a signal, an injected interrupt) the kicker waits until KVM_RUN
  returned, or the kernel shows that this kick can no longer end it (the signal
  was taken while the vCPU runs on or sleeps; the vCPU sleeps in kvm_vcpu_block
  after the injection; the guest went on across two more entries).

Either wait has a generous bound; beyond it the example is undecided under load
(:class:`~pytest_kvmconf.backend.UndecidedUnderLoad`), never a violation.

Structure, for mixins: :class:`KvmMachine` is the class the backend makes. Each
facet's operations are a mixin of ``op_<name>`` generator methods; a mixin adds
its observables by overriding :meth:`KvmCore._observe` (call ``super()``), what
it must release by overriding :meth:`KvmCore._release` (call ``super()``), and
its machine options to :data:`OPTIONS`.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Mapping
from typing import Any

from ...backend import MachineConfig, ThreadContext
from ...facets.mp import MP_STATE_NAMES
from ...scheduling import Point, Wait, point
from . import evidence, guest, uapi
from .memory import MEMORY_OPTIONS, MemoryOps
from .vm import KICK_SIGNAL, RunTicket, Vcpu, Vm

Steps = Generator[Point | Wait, None, Any]

#: Machine options (``machine = { ... }`` in a spec) and what they mean; mixins add theirs.
OPTIONS = {"irqchip": "KVM_CREATE_IRQCHIP before the vCPUs (bool)",
           "program": f"guest program: one of {', '.join(guest.PROGRAMS)}", **MEMORY_OPTIONS}


class KvmCore:
    """One VM and the engine's side of it: running operations, observing, closing."""

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
        #: set by an operation that gave up waiting for the kernel's evidence (see evidence.py)
        self.undecided: str | None = None
        self.vm: Vm | None = None
        self._setup(config)
        try:
            self.vm = Vm(config.vcpus, self.irqchip, self.program, self._notify, before_vcpus=self._before_vcpus)
            self._after_vcpus()
        except BaseException:
            self.close()
            raise

    # -- hooks for mixins (each calls super()) ------------------------------------------
    def _setup(self, config: MachineConfig) -> None:
        """Before the VM exists: a mixin's own state and option checks."""

    def _before_vcpus(self, vm: Vm) -> None:
        """After KVM_CREATE_VM and guest RAM, before any KVM_CREATE_VCPU (VM-wide set-up)."""

    def _after_vcpus(self) -> None:
        """Once every vCPU exists."""

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
        out: dict[str, Any] = {}
        self._observe(out)
        return out

    def _observe(self, out: dict[str, Any]) -> None:
        """Add this machine's observables to ``out`` (mixins extend it, calling super())."""

    def close(self) -> None:
        try:
            self._release()
        finally:
            if self.vm is not None:
                self.vm.close()

    def _release(self) -> None:
        """Give back what a mixin acquired, before the VM closes (mixins extend it)."""

    def _notify(self) -> None:
        with self.cond:
            self.cond.notify_all()

    # -- waiting on the kernel's evidence --------------------------------------------
    def settle(self, v: Vcpu, ticket: RunTicket, progress_before: int) -> None:
        """Return once KVM_RUN has returned, or the vCPU sleeps in the kernel ("blocking"), or
        (a program that never halts by itself) the guest has run: then the vCPU is inside
        KVM_RUN with nothing more to do by itself."""
        runs_on = self.program in guest.NEVER_HALTS

        def settled() -> bool:
            if ticket.done.is_set():
                return True
            if v.entries < ticket.nth:
                return False  # the vCPU thread has not taken the job yet
            if v.blocking():
                return True
            return runs_on and self.vm.progress(v.index) != progress_before

        evidence.await_evidence(settled, f"vcpu{v.index}: KVM_RUN #{ticket.nth} neither returned, "
                                         "nor slept in the kernel, nor ran the guest",
                                step=ticket.done.wait)

    def await_kick(self, v: Vcpu, runs_before: int, signal: bool) -> None:
        """After a kick of ``v`` (a signal if ``signal``, else an injected event): return once
        KVM_RUN returned, or the kernel shows the kick can no longer end it."""
        base: list[tuple[int | None, int]] = []

        def decided() -> bool:
            if v.runs != runs_before or not v.in_run:
                return True
            if signal and evidence.signal_pending(v.tid, KICK_SIGNAL):
                return False  # not taken yet: KVM_RUN will see it
            # The signal was taken / the event is pending: is the vCPU inside KVM_RUN, done?
            if v.blocking() and evidence.thread_state(v.tid) == "S" and v.blocking():
                return v.runs == runs_before  # asleep in kvm_vcpu_block, no wake-up under way
            exits, progress = v.stat("exits"), self.vm.progress(v.index)
            if not base:
                base.append((exits, progress))
                return False
            exits0, progress0 = base[0]
            if exits is not None and exits0 is not None and exits >= exits0 + 2 and progress != progress0:
                return v.runs == runs_before  # the guest was entered again and runs on
            return False

        evidence.await_evidence(decided, f"vcpu{v.index}: after the kick KVM_RUN neither returned "
                                         "nor went on in the guest")


class MpOps(KvmCore):
    """The mp facet: MP states, KVM_RUN, its interruption (signal, immediate_exit), NMIs."""

    def __init__(self, config: MachineConfig, execution: str = "threads"):
        super().__init__(config, execution)
        n = config.vcpus
        self.seen: list[int | None] = [None] * n
        self.reads: list[list[int]] = [[] for _ in range(n)]
        self.settled = [0] * n
        self.signals = [0] * n
        self.wakeups = [0] * n
        self.suspend_enabled = False

    def _observe(self, out: dict[str, Any]) -> None:
        super()._observe(out)
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
        out["mp"] = vcpus
        out["mp_vm"] = {"arch": "x86_64", "irqchip": self.irqchip, "program": self.program,
                        "system_suspend": self.suspend_enabled}

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
            self.await_kick(v, runs, signal=True)
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
            self.await_kick(v, runs, signal=False)
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
        self.settle(v, ticket, before)
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



class KvmMachine(MpOps, MemoryOps):
    """The machine the kvm backend makes: every facet's operations on one VM."""

    # The memslots facet's hooks (backends/kvm/memory.py), on the core's.
    def _setup(self, config: MachineConfig) -> None:
        super()._setup(config)
        self._memory_init(config)

    def _before_vcpus(self, vm: Vm) -> None:
        super()._before_vcpus(vm)
        self._memory_before_vcpus(vm)

    def _after_vcpus(self) -> None:
        super()._after_vcpus()
        self._memory_after_vcpus()

    def _observe(self, out: dict[str, Any]) -> None:
        super()._observe(out)
        out.update(self._memory_observe())

    def _release(self) -> None:
        try:
            self._memory_close()
        finally:
            super()._release()
