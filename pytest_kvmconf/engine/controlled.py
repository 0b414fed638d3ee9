"""Controlled mode (the default): the engine lets exactly one spec thread run at a time.

Every thread parks at each point on a lock of its own; the scheduler
(:mod:`.runner`) picks one thread and :meth:`ControlledHandle.advance` lets
exactly that one run to its next point, then waits for it to park again. A
wait parks the thread until the scheduler sees ``until()`` true. The order is
the schedule's choice tape alone, so a failing interleaving replays exactly and
shrinks like a generator backend's. The hand-off is two bare lock operations
(no polling, no sleeps).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..backend import Machine
from ..scheduling import bind_controller
from .executor import Formatter, ResultFormatter
from .plan import ThreadPlan
from .threadbase import JOIN_TIMEOUT, Abort, ThreadBase, hang_report, with_note


class Group:
    def __init__(self, timeout: float):
        self.timeout = timeout
        self.handles: list[ControlledHandle] = []


class ControlledHandle(ThreadBase):
    """A spec thread that runs only between the engine's :meth:`advance` and its next point."""

    def __init__(self, group: Group, machine: Machine, plan: ThreadPlan, fmt: Formatter,
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
            if self.hung:
                self.thread.discard()
            return
        if self._go.locked():
            try:
                self._go.release()  # a parked thread wakes and unwinds
            except RuntimeError:
                pass
        # A hung thread cannot be stopped from outside; it is a daemon and unwinds
        # at its next point (typically once machine.close() frees what it waits for).
        self.thread.join(0.05 if self.hung else JOIN_TIMEOUT)
        self.abandon_if_stuck()

    # -- the backend thread's side --------------------------------------------
    def _stop(self, wait: tuple[Callable[[], bool], bool] | None) -> None:
        if self.aborting:
            raise Abort
        self._publish()
        self.waiting = wait
        self._back.release()
        self._go.acquire()
        if self.aborting:
            raise Abort

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
        except Abort:
            pass
        except BaseException as exc:  # reported by advance(), in the engine's thread
            self.error = with_note(exc, f"(in spec thread {self.name}, operation {self._op}, "
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


