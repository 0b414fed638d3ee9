"""The core of a machine on a real VM (one VM for one schedule): running operations, waiting.

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

Structure, for mixins: :class:`~.machine.KvmMachine` is the class the backend
makes. Each facet's operations are a mixin of ``op_<name>`` generator methods; a
mixin hooks in by overriding (and calling ``super()``) :meth:`KvmCore._setup`,
:meth:`KvmCore._before_vcpus`, :meth:`KvmCore._after_vcpus`,
:meth:`KvmCore._observe` and :meth:`KvmCore._release`, and adds its machine
options to :data:`OPTIONS`.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Mapping
from typing import Any

from ...backend import MachineConfig, ThreadContext
from ...scheduling import Point, Wait, point
from . import evidence, guest
from .vm import KICK_SIGNAL, RunTicket, Vcpu, Vm

Steps = Generator[Point | Wait, None, Any]

#: Machine options (``machine = { ... }`` in a spec) and what they mean; mixins add theirs
#: (:mod:`.machine` adds the memslots facet's).
OPTIONS = {"irqchip": "KVM_CREATE_IRQCHIP before the vCPUs (bool)",
           "program": f"guest program: one of {', '.join(guest.PROGRAMS)}"}


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
        """Return once KVM_RUN has returned, or the vCPU thread sleeps in kvm_vcpu_block ("blocking"
        statistic 1 and scheduler state S), or
        (a program that never halts by itself) the guest has run: then the vCPU is inside
        KVM_RUN with nothing more to do by itself."""
        runs_on = self.program in guest.NEVER_HALTS
        ran_on: list[evidence.RanOn] = []

        def settled() -> bool:
            if ticket.done.is_set():
                return True
            if v.entries < ticket.nth:
                return False  # the vCPU thread has not taken the job yet
            if v.blocking() and evidence.thread_state(v.tid) == "S":
                return True  # asleep in kvm_vcpu_block (not halt-polling)
            if not runs_on:
                return False
            if not ran_on:  # from the first look inside KVM_RUN on
                ran_on.append(evidence.RanOn(lambda: v.stat("exits"), lambda: self.vm.progress(v.index)))
            return ran_on[0]()

        evidence.await_evidence(settled, f"vcpu{v.index}: KVM_RUN #{ticket.nth} neither returned, "
                                         "nor slept in the kernel, nor ran the guest",
                                step=ticket.done.wait)

    def await_kick(self, v: Vcpu, runs_before: int, signal: bool) -> None:
        """After a kick of ``v`` (a signal if ``signal``, else an injected event): return once
        KVM_RUN returned, or the kernel shows the kick can no longer end it."""
        ran_on: list[evidence.RanOn] = []

        def decided() -> bool:
            if v.runs != runs_before or not v.in_run:
                return True
            if signal and evidence.signal_pending(v.tid, KICK_SIGNAL):
                return False  # not taken yet: KVM_RUN will see it
            # The signal was taken / the event is pending: is the vCPU inside KVM_RUN, done?
            if v.blocking() and evidence.thread_state(v.tid) == "S" and v.blocking():
                return v.runs == runs_before  # asleep in kvm_vcpu_block, no wake-up under way
            if not ran_on:
                ran_on.append(evidence.RanOn(lambda: v.stat("exits"), lambda: self.vm.progress(v.index)))
            return ran_on[0]() and v.runs == runs_before  # entered again and again, and runs on

        evidence.await_evidence(decided, f"vcpu{v.index}: after the kick KVM_RUN neither returned "
                                         "nor went on in the guest")
