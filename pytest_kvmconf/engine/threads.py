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

    seen = v.mode.cmpxchg(IN_GUEST_MODE, EXITING_GUEST_MODE)   # an atomic, no lock held after
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
   it only while every thread stands at a point or in a wait.
4. Keep no per-OS-thread state across schedules. By default every spec thread
   of every schedule gets an OS thread of its own that ends with its run, so no
   thread outlives its example. ``WORKER_IDLE`` > 0 lets the next schedule reuse
   a finished worker that was idle for less than that many seconds (faster
   where starting a thread is slow; all workers are daemons).

Controlled mode (the default)
-----------------------------
Every thread parks at each point on a lock of its own; the scheduler
(:mod:`.runner`) picks one thread and :meth:`ControlledHandle.advance` lets
exactly that one run to its next point, then waits for it to park again. A
wait parks the thread until the scheduler sees ``until()`` true. The order is
the schedule's choice tape alone, so a failing interleaving replays exactly and
shrinks like a generator backend's. The hand-off is two bare lock operations
(no polling, no sleeps).

Free mode (``--kvm-schedule=free``)
-----------------------------------
The same threads run preemptively, with small random delays at points, drawn
from a seed derived from the example (shown in the timeline), so runs differ
per example and are repeatable in intent. Between points a thread holds the
*world* lock shared; at a point it takes it exclusively for an instant to log
its step with a snapshot of the state, so ``always`` checks see consistent
states in the order they happened (the machine's ``observe`` is pointed at
those snapshots for the run, and a result bound with ``as`` becomes visible
when the scheduler takes that return). Waits are real ``Condition.wait``
calls. The run ends when every thread is done or sleeps with its condition
false; a sleeper whose condition holds but was never notified is reported as a
lost wake-up. Free runs explore what the OS scheduler does: they cannot replay,
so a failure reports the steps as they were observed.

Robustness
----------
A thread that does not reach its next point within ``RunOptions.point_timeout``
(blocked outside the scheduler, looping, deadlocked on real locks, asleep with
its wake-up lost) raises :class:`~.executor.BackendHang` listing every thread's
last point and its Python stack; an exception in a backend thread is raised
in the engine with its traceback. ``close()`` unwinds parked threads with a
private ``BaseException`` and joins them; a thread stuck in the backend is a
daemon and leaves as soon as it next reaches a point.
"""

from __future__ import annotations

import random
import sys
import threading
import time
import traceback
import zlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..backend import Machine, ThreadContext
from ..scheduling import Controller, bind_controller, wait_until
from .executor import BackendHang, Formatter, Handle, ResultFormatter, Returned, engine_op
from .plan import ThreadPlan

__all__ = ["ControlledHandle", "FreeHandle", "WORKER_IDLE", "thread_handles", "wait_on"]

#: Stack frames of each thread shown in a hang report.
STACK_DEPTH = 6
#: How long close() waits for one parked thread to unwind.
JOIN_TIMEOUT = 2.0

_local = threading.local()
_scheduling_file = sys.modules[Controller.__module__].__file__


class _Abort(BaseException):
    """Unwinds a backend thread whose run is over (raised out of point/wait)."""


def wait_on(cond: threading.Condition, label: str, until: Callable[[], bool], idle: bool = False) -> None:
    """Block on the backend's condition variable ``cond`` until ``until()`` holds.

    Controlled mode: the thread parks at the engine (``wait_until``) and is
    resumed once ``until()`` is true. Free mode and plain use: a real
    ``cond.wait()`` loop; whoever makes ``until()`` true must ``notify`` ``cond``.
    Call it holding no lock (``cond``'s lock included).
    """
    free: FreeHandle | None = getattr(_local, "free", None)
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
    group = _Group(timeout)
    return [ControlledHandle(group, machine, p, fmt_call, fmt_result, capture_before) for p in plans]


# ---------------------------------------------------------------------------
# OS threads: one per spec thread and schedule, or (WORKER_IDLE > 0) reused workers.

#: A worker with no job for this long exits. 0 (the default) gives every spec thread of every
#: schedule an OS thread of its own, ending with its run: no thread outlives its example.
#: Measured on 2 cores: 996 controlled schedules/s with 0, about 1,250 with 0.25.
WORKER_IDLE = 0.0


class _Job:
    """One spec thread's life on a worker: like a Thread, but the OS thread may be reused."""

    def __init__(self, target: Callable[[], None], name: str):
        self.target, self.name = target, name
        self.ident: int | None = None
        self.running = False
        self._end = threading.Lock()
        self._end.acquire()

    def start(self) -> None:
        self.running = True
        _WORKERS.submit(self)

    def run(self) -> None:
        self.ident = threading.get_ident()
        me = threading.current_thread()
        me.name = f"kvmconf:{self.name}"
        try:
            self.target()
        finally:
            me.name = "kvmconf-worker (idle)"
            self.running = False
            self._end.release()

    def is_alive(self) -> bool:
        return self.running

    def join(self, timeout: float) -> None:
        if self._end.acquire(timeout=timeout):
            self._end.release()


class _Worker:
    def __init__(self, pool: _Workers, job: _Job):
        self.pool, self.job = pool, job
        self.ready = threading.Lock()
        self.ready.acquire()
        threading.Thread(target=self._loop, name="kvmconf-worker", daemon=True).start()

    def give(self, job: _Job) -> None:
        self.job = job
        self.ready.release()

    def _loop(self) -> None:
        while True:
            job, self.job = self.job, None
            if job is not None:
                job.run()
            if WORKER_IDLE <= 0:
                return  # the OS thread ends with its run
            with self.pool.lock:
                self.pool.idle.append(self)
            if not self.ready.acquire(timeout=WORKER_IDLE):
                with self.pool.lock:
                    if self in self.pool.idle:
                        self.pool.idle.remove(self)
                        return
                self.ready.acquire()  # taken off the idle list just now: its job is coming


class _Workers:
    """Starting an OS thread costs more than a whole schedule's hand-offs on a busy
    machine, so spec threads run on workers that wait briefly for the next schedule."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.idle: list[_Worker] = []

    def submit(self, job: _Job) -> None:
        with self.lock:
            worker = self.idle.pop() if self.idle else None
        if worker is None:
            _Worker(self, job)
        else:
            worker.give(job)


_WORKERS = _Workers()


# ---------------------------------------------------------------------------
# What both modes share: the thread's program and the hang report.

class _ThreadBase(Handle, Controller):
    """One spec thread on an OS thread; subclasses say how it stops at points."""

    thread: _Job

    def __init__(self, machine: Machine, plan: ThreadPlan, fmt: Formatter, fmt_result: ResultFormatter,
                 capture_before: bool):
        self.name, self.vcpu = plan.name, plan.vcpu
        self.machine, self.plan = machine, plan
        self.fmt, self.fmt_result = fmt, fmt_result
        self.capture_before = capture_before
        self.ctx = ThreadContext(plan.name, plan.vcpu)
        self.texts: list[str] = []
        self.returned: Returned | None = None
        self.current_op = ""
        self.done = False
        self.position = "start"
        self.error: BaseException | None = None
        # What the thread did since it last stopped (written by the thread only).
        self._texts: list[str] = []
        self._position = "start"
        self._returned: Returned | None = None
        self._op = ""
        self._live = _LiveState(self)
        self.thread = _Job(self._main, plan.name)

    def _program(self) -> None:
        """The spec thread's steps, as GeneratorHandle runs them: each operation's
        return ends an advance of its own. The thread writes its progress to the
        ``_``-prefixed fields; each mode publishes them when the thread stops."""
        left = len(self.plan.steps)
        for ps, args in self.plan.calls():
            op = ps.step.op.name
            self._op = op
            before = self._before() if self.capture_before else None
            self._texts.append(self.fmt(ps, args))
            handled, result, label = engine_op(self._live, ps, args)
            if handled:
                self.point(label)
            else:
                result = self.machine.run_op(self.ctx, op, args)
            self._bind(ps, result)
            r = Returned(op, args, result, before, self.fmt_result(ps, result))
            self._returned = r
            self._texts.append(r.text or f"{op} returns")
            self._position = f"returned from {op}"
            left -= 1
            if not left:
                break
            self._stop(None)
        if not self.plan.steps:
            self._position = "done"

    def point(self, label: str) -> None:
        self._texts.append(label)
        self._position = label
        self._stop(None)

    def wait_until(self, label: str, until: Callable[[], bool], idle: bool) -> None:
        self._texts.append(label)
        self._position = label
        self._stop((until, idle))

    def _before(self) -> Any:
        return self.machine.observe()

    def _bind(self, ps: Any, result: Any) -> None:
        self.plan.bind(ps, result)

    def _main(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _stop(self, wait: tuple[Callable[[], bool], bool] | None) -> None:  # pragma: no cover
        raise NotImplementedError

    def blocked_in(self, frames: Mapping[int, Any]) -> str:
        """What a running thread is blocked in, when the engine can tell."""
        frame = frames.get(self.thread.ident) if self.thread.ident is not None else None
        if frame is None or not self.thread.is_alive():
            return ""
        code = frame.f_code
        if code.co_filename == threading.__file__ and code.co_name == "wait":
            return ("a real Condition.wait/Event.wait, which the engine cannot see: "
                    "express it with wait_on() or scheduling.wait_until()")
        return ""

    def stack(self, frames: Mapping[int, Any]) -> list[str]:
        frame = frames.get(self.thread.ident or -1) if self.thread.ident is not None else None
        if frame is None or not self.thread.is_alive():
            return []
        # The backend's frames: the executor's own and threading's are the same every time.
        mine = (__file__, _scheduling_file, threading.__file__)
        frames_ = [f for f in traceback.extract_stack(frame) if f.filename not in mine]
        out = []
        for entry in traceback.format_list(frames_[-STACK_DEPTH:]):
            out.extend("      " + line for line in entry.rstrip().splitlines())
        return out


class _LiveState:
    """The machine as the ``snapshot`` engine op sees it: the state now, consistently."""

    def __init__(self, h: _ThreadBase):
        self.observe = h._before


def hang_report(what: str, handles: Sequence[_ThreadBase], seed: int | None = None) -> BackendHang:
    """BackendHang naming every thread's last scheduling point and its stack."""
    frames = sys._current_frames()
    lines = [what + (f" (delay seed {seed})" if seed is not None else "")]
    for h in handles:
        hint = h.blocked_in(frames) if getattr(h, "hung", False) else ""
        lines.append("  " + h.describe() + (f"; blocked in {hint}" if hint else ""))
        lines.extend(h.stack(frames))
    return BackendHang("\n".join(lines))


def _with_note(exc: BaseException, note: str) -> BaseException:
    add = getattr(exc, "add_note", None)
    if add is not None and note not in getattr(exc, "__notes__", ()):
        add(note)
    return exc


# ---------------------------------------------------------------------------
# Controlled mode.

class _Group:
    def __init__(self, timeout: float):
        self.timeout = timeout
        self.handles: list[ControlledHandle] = []


class ControlledHandle(_ThreadBase):
    """A spec thread that runs only between the engine's :meth:`advance` and its next point."""

    def __init__(self, group: _Group, machine: Machine, plan: ThreadPlan, fmt: Formatter,
                 fmt_result: ResultFormatter, capture_before: bool):
        super().__init__(machine, plan, fmt, fmt_result, capture_before)
        self.group = group
        group.handles.append(self)
        self.waiting: tuple[Callable[[], bool], bool] | None = None
        self.aborting = False
        self.hung = False
        # Two bare locks used as binary semaphores: `go` is released by the engine to let
        # the thread run, `back` by the thread when it stops again. No polling anywhere.
        self._go = threading.Lock()
        self._go.acquire()
        self._back = threading.Lock()
        self._back.acquire()
        self.thread.start()

    # -- the engine's side --------------------------------------------------
    def runnable(self) -> bool:
        return not self.done and (self.waiting is None or self.waiting[0]())

    def idle(self) -> bool:
        w = self.waiting
        return w is not None and w[1] and not w[0]()

    def advance(self) -> None:
        self.waiting = None
        self._go.release()
        if not self._back.acquire(timeout=self.group.timeout):
            self.hung = True
            raise hang_report(
                f"{self.name} did not reach its next scheduling point within {self.group.timeout:g} s "
                "(it blocks outside the scheduler, e.g. on a lock held by a parked thread, or loops)",
                self.group.handles)
        if self.error is not None:
            exc, self.error = self.error, None
            raise exc

    def describe(self) -> str:
        if self.hung:
            return f"{self.name}: running (hung) since {self.position!r}"
        return super().describe()

    def close(self) -> None:
        self.aborting = True
        if not self.thread.is_alive():
            return
        if self._go.locked():
            try:
                self._go.release()  # a parked thread wakes and unwinds
            except RuntimeError:
                pass
        # A hung thread cannot be stopped from outside; it is a daemon and unwinds
        # at its next point (typically once machine.close() frees what it waits for).
        self.thread.join(0.05 if self.hung else JOIN_TIMEOUT)

    # -- the backend thread's side --------------------------------------------
    def _stop(self, wait: tuple[Callable[[], bool], bool] | None) -> None:
        if self.aborting:
            raise _Abort
        self._publish()
        self.waiting = wait
        self._back.release()
        self._go.acquire()
        if self.aborting:
            raise _Abort

    def _publish(self) -> None:
        self.texts, self._texts = self._texts, []
        self.returned, self._returned = self._returned, None
        self.position, self.current_op = self._position, self._op

    def _main(self) -> None:
        bind_controller(self)
        try:
            self._go.acquire()  # wait for the first advance
            if not self.aborting:
                self._program()
        except _Abort:
            pass
        except BaseException as exc:  # reported by advance(), in the engine's thread
            self.error = _with_note(exc, f"(in spec thread {self.name}, operation {self._op}, "
                                         f"after scheduling point {self._position!r})")
            self._texts.append(f"raised {type(exc).__name__}: {exc}")
            self._position = f"raised {type(exc).__name__}"
        finally:
            bind_controller(None)
            self._publish()
            self.waiting = None
            self.done = True
            try:
                self._back.release()
            except RuntimeError:
                pass


# ---------------------------------------------------------------------------
# Free mode.

class _World:
    """A writer-preferring readers-writer lock: threads hold it shared while they
    act, and exclusively for an instant at a point to log a consistent snapshot."""

    def __init__(self) -> None:
        self._c = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._wanted = 0
        self.aborting = False

    def _check(self) -> None:
        if self.aborting:
            raise _Abort

    def acquire_shared(self) -> None:
        with self._c:
            while self._exclusive or self._wanted:
                self._check()
                self._c.wait()
            self._check()
            self._shared += 1

    def release_shared(self) -> None:
        with self._c:
            self._shared -= 1
            if not self._shared:
                self._c.notify_all()

    def acquire_exclusive(self) -> None:
        with self._c:
            self._wanted += 1
            try:
                while self._exclusive or self._shared:
                    self._check()
                    self._c.wait()
                self._check()
                self._exclusive = True
            finally:
                self._wanted -= 1

    def release_exclusive(self) -> None:
        with self._c:
            self._exclusive = False
            self._c.notify_all()

    def abort(self) -> None:
        with self._c:
            self.aborting = True
            self._c.notify_all()


@dataclass
class _Event:
    """One advance of a free thread, as it happened."""

    handle: FreeHandle
    texts: list[str]
    position: str
    returned: Returned | None
    current_op: str
    done: bool
    waiting: tuple[Callable[[], bool], bool] | None
    state: Any
    #: (planned step, result) to bind when the scheduler takes this return.
    bind: tuple[Any, Any] | None = None
    taken: bool = False


def free_seed(plans: Sequence[ThreadPlan], options: Any, schedule: Any = None) -> int:
    """The delays' seed: the schedule's encoding when the runner gives it, else the
    example's contents plus its rank in this test's run (so examples differ)."""
    if schedule is not None and hasattr(schedule, "encode"):
        return zlib.crc32(schedule.encode().encode())
    rank = getattr(options, "_free_runs", 0)
    try:
        options._free_runs = rank + 1
    except AttributeError:
        pass
    steps = [(p.name, [(ps.step.op.name, sorted(ps.scope.items())) for ps in p.steps]) for p in plans]
    params = sorted((k, repr(v)) for k, v in (plans[0].env.items() if plans else ()) if not k.isupper())
    return zlib.crc32(f"{steps}{params}{rank}".encode())


class FreeRun:
    """The shared side of one free run: the world lock and the log of steps."""

    def __init__(self, machine: Machine, timeout: float, seed: int):
        self.machine, self.timeout, self.seed = machine, timeout, seed
        self.world = _World()
        self.cond = threading.Condition()
        self.events: deque[_Event] = deque()
        self.handles: list[FreeHandle] = []
        self.started = False
        self.quiet = False
        self.aborting = False
        self.error: BaseException | None = None
        self.state: Any = None
        self._observe = machine.observe
        try:  # checks read the state logged with each step, not the live one
            machine.observe = self.observe  # type: ignore[method-assign]
            self._patched = True
        except AttributeError:
            self._patched = False

    def observe(self) -> Any:
        if not self.started or self.quiet or self.state is None:
            return self._observe()
        return self.state

    def start(self) -> None:
        self.started = True
        if self.handles:
            self.handles[0]._texts.append(f"(free run, delay seed {self.seed})")
        for h in self.handles:
            h.thread.start()

    def log(self, h: FreeHandle, waiting: tuple[Callable[[], bool], bool] | None) -> _Event:
        """At a point: stop the world, log the step with a snapshot. Leaves the world unheld."""
        h.release_world()
        self.world.acquire_exclusive()
        try:
            state = self._observe()
            ev = _Event(h, h._texts, h._position, h._returned, h._op, h._done, waiting, state, h._pending)
            with self.cond:
                self.events.append(ev)
                self.cond.notify_all()
            h._texts, h._returned, h._pending = [], None, None
            return ev
        finally:
            self.world.release_exclusive()

    def wait_taken(self, ev: _Event) -> None:
        """A thread's return binds its result (``as``) when the scheduler takes it, so
        checks see bindings in timeline order; the thread goes on after that."""
        with self.cond:
            while not ev.taken:
                if self.aborting:
                    raise _Abort
                self.cond.wait()

    def snapshot(self, h: FreeHandle) -> Any:
        """The state now, for a thread that holds the world shared."""
        h.release_world()
        self.world.acquire_exclusive()
        try:
            return self._observe()
        finally:
            self.world.release_exclusive()
            h.hold_world()

    def head(self) -> FreeHandle | None:
        """The thread of the oldest step the scheduler has not taken, or None once
        nothing more can happen (every thread done or asleep for good)."""
        if not self.started:
            self.start()
        deadline = time.monotonic() + self.timeout
        with self.cond:
            while True:
                if self.events:
                    return self.events[0].handle
                if self.error is not None:
                    exc, self.error = self.error, None
                    raise exc
                if all(h.finished or h.blocked for h in self.handles):
                    # Nobody acts: a sleeper unblocks (under self.cond) before it
                    # touches any state, so these reads are consistent.
                    if not any(h.blocked and h.blocked[0]() for h in self.handles):
                        self.quiet = True
                        return None
                left = deadline - time.monotonic()
                if left <= 0:
                    for h in self.handles:
                        h.hung = not (h.finished or h.blocked)
                    lost = [h.name for h in self.handles if h.blocked and h.blocked[0]()]
                    stuck = [h.name for h in self.handles if h.hung]
                    why = (f"{', '.join(lost)} sleep(s) in a real wait whose condition holds: a lost "
                           "wake-up (nobody notified the condition variable)" if lost
                           else f"{', '.join(stuck) or 'no thread'} did not reach its next scheduling point "
                           "(it blocks outside the scheduler, or loops)")
                    raise hang_report(f"free run: {why} within {self.timeout:g} s", self.handles, self.seed)
                self.cond.wait(left)

    def take(self, h: FreeHandle) -> _Event:
        with self.cond:
            ev = self.events.popleft()
            if ev.handle is not h:
                raise RuntimeError(f"free run: {h.name} advanced out of order")
            if ev.bind is not None:
                h.plan.bind(*ev.bind)
            ev.taken = True
            self.cond.notify_all()
        self.state = ev.state
        return ev

    def close(self) -> None:
        if self.aborting:
            return
        self.aborting = True
        self.world.abort()
        with self.cond:
            self.cond.notify_all()
        for h in self.handles:
            h.wake()
        for h in self.handles:
            if h.thread.is_alive():
                # A hung thread is a daemon that unwinds at its next point or wait.
                h.thread.join(0.05 if h.hung else JOIN_TIMEOUT)
        if self._patched:
            try:
                del self.machine.observe  # type: ignore[method-assign]
            except AttributeError:
                pass


class FreeHandle(_ThreadBase):
    """A spec thread running preemptively; the scheduler takes its logged steps in order."""

    def __init__(self, run: FreeRun, machine: Machine, plan: ThreadPlan, index: int, fmt: Formatter,
                 fmt_result: ResultFormatter, capture_before: bool):
        super().__init__(machine, plan, fmt, fmt_result, capture_before)
        self.run = run
        run.handles.append(self)
        self.rng = random.Random(run.seed * 31 + index)
        self.waiting: tuple[Callable[[], bool], bool] | None = None
        #: (until, idle, condition or None) while in a real wait; written under run.cond.
        self.blocked: tuple[Callable[[], bool], bool, threading.Condition | None] | None = None
        self.finished = False
        self.hung = False
        self._done = False
        self._pending: tuple[Any, Any] | None = None
        self._holding = False

    # -- the engine's side --------------------------------------------------
    def runnable(self) -> bool:
        return not self.done and self.run.head() is self

    def idle(self) -> bool:
        w = self.waiting
        return w is not None and w[1] and not w[0]()

    def advance(self) -> None:
        ev = self.run.take(self)
        self.texts, self.position, self.returned = ev.texts, ev.position, ev.returned
        self.current_op, self.done, self.waiting = ev.current_op, ev.done, ev.waiting

    def describe(self) -> str:
        if self.finished:
            state = "done" if self._done else "ended"
        elif self.blocked:
            state = "asleep (idle)" if self.blocked[1] else "waiting"
        else:
            state = "running"
        return f"{self.name}: {state} at {self._position!r}"

    def close(self) -> None:
        self.run.close()

    def wake(self) -> None:
        b = self.blocked
        cond = b[2] if b else None
        if cond is not None:
            with cond:
                cond.notify_all()

    # -- the backend thread's side --------------------------------------------
    def hold_world(self) -> None:
        self.run.world.acquire_shared()
        self._holding = True

    def release_world(self) -> None:
        if self._holding:
            self._holding = False
            self.run.world.release_shared()

    def _stop(self, wait: tuple[Callable[[], bool], bool] | None) -> None:
        ev = self.run.log(self, None)
        if ev.bind is not None:
            self.run.wait_taken(ev)
        self._resume()

    def _bind(self, ps: Any, result: Any) -> None:
        if ps.step.bind:
            self._pending = (ps, result)

    def _resume(self) -> None:
        r = self.rng.random()
        if r < 0.3:
            time.sleep(0)  # let the OS run another thread
        elif r < 0.5:
            time.sleep(self.rng.uniform(0, 0.0004))
        if self.run.aborting:
            raise _Abort
        self.hold_world()

    def _before(self) -> Any:
        return self.run.snapshot(self)

    def wait_until(self, label: str, until: Callable[[], bool], idle: bool) -> None:
        """A backend wait without a condition variable: re-checked at every logged step."""
        self._sleep(None, label, until, idle)

    def real_wait(self, cond: threading.Condition, label: str, until: Callable[[], bool], idle: bool) -> None:
        self._sleep(cond, label, until, idle)

    def _sleep(self, cond: threading.Condition | None, label: str, until: Callable[[], bool], idle: bool) -> None:
        self._texts.append(label)
        self._position = label
        run = self.run
        run.log(self, (until, idle))
        with run.cond:
            self.blocked = (until, idle, cond)
            run.cond.notify_all()
        try:
            waiter = cond if cond is not None else run.cond
            with waiter:
                while not until():
                    if run.aborting:
                        raise _Abort
                    waiter.wait()
        finally:
            with run.cond:
                self.blocked = None
                run.cond.notify_all()
        self._resume()

    def _main(self) -> None:
        bind_controller(self)
        _local.free = self
        run = self.run
        try:
            self._resume()
            self._program()
            self._done = True
            run.log(self, None)  # the last return, with done set
        except _Abort:
            pass
        except BaseException as exc:
            note = (f"(in spec thread {self.name}, operation {self._op}, after scheduling point "
                    f"{self._position!r}; free run, delay seed {run.seed})")
            self._position = f"raised {type(exc).__name__}"
            self.release_world()
            with run.cond:
                run.error = _with_note(exc, note)
        finally:
            _local.free = None
            bind_controller(None)
            with run.cond:
                self.finished = True
                run.cond.notify_all()
