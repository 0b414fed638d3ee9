"""Free mode (``--kvm-schedule=free``): spec threads run preemptively, the engine watches.

The same threads as in controlled mode run at once, with small random delays
at points drawn from a seed derived from the example (shown in the timeline).
Between points a thread holds the *world* lock shared; at a point it takes it
exclusively for an instant to log its step with a snapshot of the state, so
``always`` checks see consistent states in the order they happened (the
machine's ``observe`` is pointed at those snapshots for the run, and a result
bound with ``as`` becomes visible when the scheduler takes that return). Waits
are real ``Condition.wait`` calls. The run ends when every thread is done or
sleeps with its condition false; a sleeper whose condition holds but was never
notified is reported as a lost wake-up. Free runs cannot replay, so a failure
reports the steps as they were observed.
"""

from __future__ import annotations

import random
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..backend import Machine
from ..scheduling import bind_controller
from .executor import Formatter, ResultFormatter, Returned
from .plan import ThreadPlan
from .threadbase import JOIN_TIMEOUT, Abort, ThreadBase, hang_report, local, with_note


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
            raise Abort

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
                    raise Abort
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
            h.abandon_if_stuck()
        if self._patched:
            try:
                del self.machine.observe  # type: ignore[method-assign]
            except AttributeError:
                pass


class FreeHandle(ThreadBase):
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
            raise Abort
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
                        raise Abort
                    waiter.wait()
        finally:
            with run.cond:
                self.blocked = None
                run.cond.notify_all()
        self._resume()

    def _main(self) -> None:
        bind_controller(self)
        local.free = self
        run = self.run
        try:
            self._resume()
            self._program()
            self._done = True
            run.log(self, None)  # the last return, with done set
        except Abort:
            pass
        except BaseException as exc:
            note = (f"(in spec thread {self.name}, operation {self._op}, after scheduling point "
                    f"{self._position!r}; free run, delay seed {run.seed})")
            self._position = f"raised {type(exc).__name__}"
            self.release_world()
            with run.cond:
                run.error = with_note(exc, note)
        finally:
            local.free = None
            bind_controller(None)
            with run.cond:
                self.finished = True
                run.cond.notify_all()
