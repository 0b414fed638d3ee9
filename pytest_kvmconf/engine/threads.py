"""Run spec threads on real OS threads: the executor for ``execution = "threads"`` machines.

The scheduling-point API for thread backends
--------------------------------------------
A backend whose machine says ``execution = "threads"`` gets each spec thread
run on an OS thread of its own; the engine calls ``machine.run_op(ctx, op,
args)`` there, and the operation runs as ordinary blocking code. To make its
interleavings explorable the backend marks, from that thread:

``pytest_kvmconf.scheduling.point(label)``
    after each action another thread may interleave with (setting
    ``vcpu->mode``, the last ``kvm_request_pending()`` check, ...).
``pytest_kvmconf.scheduling.wait_until(label, until, idle=False)``
    to block until ``until()`` holds, when the backend has no condition
    variable of its own (the engine re-evaluates ``until`` as others move).
:func:`wait_on` ``(cond, label, until, idle=False)``
    to block on the backend's own ``threading.Condition`` until ``until()``
    holds: under the engine it is ``wait_until``; in free runs and outside
    pytest it is a real ``cond.wait()`` loop, so a backend forgetting to
    ``notify`` really sleeps forever there (and the run reports it).

``idle=True`` marks a wait a thread may stay in forever (a guest running with
no exit coming, a vCPU asleep in kvm_vcpu_block): a run whose threads are all
done or idle has ended; a thread in a non-idle wait then is a deadlock.

A kick and a guest stay in the ``threaded`` backend read::

    seen = self.memory.cmpxchg(v, "mode", IN_GUEST_MODE, EXITING_GUEST_MODE)  # an atomic, no lock after
    point("cmpxchg(mode, IN_GUEST_MODE, EXITING_GUEST_MODE)")
    if seen == IN_GUEST_MODE:
        self.send_ipi(v)                  # under v's CPU lock, then cpu_irq.notify_all()
        point("smp_send_reschedule()")
    ...
    wait_on(v.cpu_irq, "guest runs", lambda: v.ipis_pending > 0, idle=True)

Points and waits outside a spec thread (a helper thread the backend starts
itself, plain use without pytest) do nothing / really wait, so a backend can
leave them in place.

Rules a backend keeps:

1. Hold none of your own locks at a point or a wait. Between two points a
   thread's actions are atomic to the engine; a lock held across a point
   makes the next thread block outside the scheduler (reported as a hang).
2. Let ``BaseException`` through: a thread that has to stop (the run is over,
   or it failed elsewhere) is unwound by an exception raised out of
   ``point``/``wait_until``/``wait_on``.
3. ``observe()`` must not block and reads the state as it is: the engine calls
   it only while every thread stands at a point or in a wait (or after one hung:
   an observe() that then blocks on that thread's lock is interrupted, see
   ``guard.bounded``).
4. Keep no per-OS-thread state across schedules: spec threads run on pooled
   daemon workers that the next schedule reuses (:mod:`.workers`; a worker
   whose thread hung is discarded, and the pool ends with the session).

The executor, module by module
------------------------------
:mod:`.workers`     the pool of OS threads and its guarantees;
:mod:`.threadbase`  what both modes share: a spec thread's program, the hang report;
:mod:`.controlled`  controlled mode (the default): exactly one thread runs at a
                    time, in the order of the schedule's choice tape, so a failing
                    interleaving replays exactly and shrinks;
:mod:`.free`        free mode (``--kvm-schedule=free``): the threads run
                    preemptively, the engine logs their steps with snapshots.

Robustness
----------
A thread that does not reach its next point within ``RunOptions.point_timeout``
(blocked outside the scheduler, looping, deadlocked on real locks, asleep with
its wake-up lost) raises :class:`~pytest_kvmconf.errors.BackendHang` listing
every thread's last point and its Python stack; an exception in a backend
thread is raised in the engine with its traceback. ``close()`` unwinds parked
threads with a private ``BaseException`` and joins them; a thread stuck in the
backend is abandoned (named in the report): its worker is a daemon, takes no
further job, and leaves as soon as it next reaches a point.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from ..backend import Machine
from ..scheduling import wait_until
from .controlled import ControlledHandle, Group
from .executor import Formatter, Handle, ResultFormatter
from .free import FreeHandle, FreeRun, free_seed
from .plan import ThreadPlan
from .threadbase import local
from .workers import WORKER_IDLE

__all__ = ["ControlledHandle", "FreeHandle", "WORKER_IDLE", "thread_handles", "wait_on"]


def wait_on(cond: threading.Condition, label: str, until: Callable[[], bool], idle: bool = False) -> None:
    """Block on the backend's condition variable ``cond`` until ``until()`` holds.

    Controlled mode: the thread parks at the engine (``wait_until``) and is
    resumed once ``until()`` is true. Free mode and plain use: a real
    ``cond.wait()`` loop; whoever makes ``until()`` true must ``notify`` ``cond``.
    Call it holding no lock (``cond``'s lock included).
    """
    free: FreeHandle | None = getattr(local, "free", None)
    if free is not None:
        free.real_wait(cond, label, until, idle)
        return
    if wait_until(label, until, idle):
        return
    with cond:
        while not until():
            cond.wait()


def thread_handles(machine: Machine, plans: Sequence[ThreadPlan], fmt_call: Formatter,
                   fmt_result: ResultFormatter, options: Any, capture_before: bool = True,
                   schedule: Any = None) -> list[Handle]:
    """One handle per spec thread, each running on its own OS thread.

    ``capture_before``: record the state when each operation starts (``step.before``).
    ``schedule``: in free mode, the example whose tape seeds the random delays.
    """
    timeout = float(getattr(options, "point_timeout", 5.0))
    if getattr(options, "free", False):
        run = FreeRun(machine, timeout, free_seed(plans, options, schedule))
        return [FreeHandle(run, machine, p, i, fmt_call, fmt_result, capture_before)
                for i, p in enumerate(plans)]
    group = Group(timeout)
    return [ControlledHandle(group, machine, p, fmt_call, fmt_result, capture_before) for p in plans]


