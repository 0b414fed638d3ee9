"""locking.rst on real OS threads: the model's KVM paths over real blocking locks.

The paths (which lock each KVM operation takes, in which order, what it
touches) are those of the reference model, :mod:`..reference.locking`, so both
backends take the same locks with the same labels. What changes is the locks:
here each one is a lock built on a ``threading.Condition``, shared by the spec
threads' OS threads. A contended acquisition, a ``synchronize_srcu()`` waiting
for readers and a memslot update waiting for ``mn_active_invalidate_count``
really block, through :func:`~pytest_kvmconf.engine.threads.wait_on`: parked
at the engine in controlled runs, a real ``Condition.wait`` in free runs, so
two paths taking locks in opposite orders really deadlock.

No Python lock is held at a scheduling point (the rule of thread backends):
a KVM lock being held is the owner recorded in the lock, and the condition's
own lock is only taken for an instant to test-and-take or release.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from typing import Any

from ...backend import MachineConfig, ThreadContext
from ...engine.lockdep import READ, SRCU
from ...engine.threads import wait_on
from ...scheduling import Point, Wait, point
from ..reference.locking import LockingModel, ModelLock


class RealLock(ModelLock):
    """A mutex / spinlock / rwlock / rwsem whose test-and-take and release are atomic
    across OS threads; waiters sleep on ``cond``, notified at every release."""

    def __init__(self, kind: str):
        super().__init__(kind)
        self.cond = threading.Condition()

    def try_take(self, thread: str, mode: str) -> bool:
        with self.cond:
            return super().try_take(thread, mode)

    def drop(self, thread: str, mode: str) -> None:
        with self.cond:
            super().drop(thread, mode)
            self.cond.notify_all()

    def notify(self) -> None:
        with self.cond:
            self.cond.notify_all()


def run_steps(steps: Generator[Point | Wait, None, Any]) -> Any:
    """Run one model path on the calling OS thread: each Point becomes a real scheduling point."""
    try:
        item = next(steps)
        while True:
            if not isinstance(item, Point):
                raise RuntimeError(f"threaded locking: a model wait was not turned into a real one: {item}")
            point(item.label)
            item = next(steps)
    except StopIteration as stop:
        return stop.value


class LockingThreads(LockingModel):
    """Facet mixin: locking, on real threads and real blocking locks."""

    def init_locking(self, config: MachineConfig) -> None:
        super().init_locking(config)
        self.lk_running: set[str] = set()  # spec threads inside an operation's path

    def _run_path(self, ctx: ThreadContext, steps: Generator[Point | Wait, None, Any]) -> Any:
        """Run an operation's path on this OS thread; a path called from another one
        (a variant's ``super()``) stays a generator for the caller's ``yield from``."""
        if ctx.name in self.lk_running:
            return steps
        self.lk_running.add(ctx.name)
        try:
            return run_steps(steps)
        finally:
            self.lk_running.discard(ctx.name)

    def _lock_object(self, instance: str, kind: str) -> ModelLock:
        # setdefault is atomic: two threads creating the same lock get one object.
        lock = self.lk_locks.get(instance)
        return lock if lock is not None else self.lk_locks.setdefault(instance, RealLock(kind))

    def _wait(self, label: str, until: Callable[[], bool], channel: str) -> Generator[Point, None, None]:
        lock = self._lock_object(channel, "srcu" if channel == SRCU else "spinlock")
        assert isinstance(lock, RealLock)
        wait_on(lock.cond, label, until)
        return
        yield  # a generator, for `yield from` in the model's paths

    def srcu_read_lock(self, ctx: ThreadContext) -> Generator[Point, None, None]:
        srcu = self._lock_object(SRCU, "srcu")
        assert isinstance(srcu, RealLock)
        with srcu.cond:
            self.srcu_next += 1
            self.srcu_active[self.srcu_next] = ctx.name
            self.srcu_nested.setdefault(ctx.name, []).append(self.srcu_next)
        label = f"srcu_read_lock(&{SRCU})"
        self.lockdep.acquired(ctx.name, self.lk_op.get(ctx.name, "?"), SRCU, READ, label)
        yield Point(label)

    def srcu_read_unlock(self, ctx: ThreadContext) -> Generator[Point, None, None]:
        srcu = self._lock_object(SRCU, "srcu")
        assert isinstance(srcu, RealLock)
        with srcu.cond:
            del self.srcu_active[self.srcu_nested[ctx.name].pop()]
            srcu.cond.notify_all()  # a synchronize_srcu() may be waiting for this reader
        self.lockdep.released(ctx.name, SRCU)
        yield Point(f"srcu_read_unlock(&{SRCU})")

    def synchronize_srcu(self, ctx: ThreadContext) -> Generator[Point, None, None]:
        srcu = self._lock_object(SRCU, "srcu")
        assert isinstance(srcu, RealLock)
        with srcu.cond:
            before = set(self.srcu_active)
        label = f"synchronize_srcu(&{SRCU})"
        self.lockdep.synchronized(ctx.name, self.lk_op.get(ctx.name, "?"), SRCU, label)
        if not before:
            yield Point(label)
            return
        wait_on(srcu.cond, f"{label} waits for readers", lambda: not before & self.srcu_active.keys())
        yield Point(f"{label} returns")
