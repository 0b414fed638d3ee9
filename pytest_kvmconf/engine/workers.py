"""The OS threads spec threads run on: a pool of daemon workers reused across schedules.

Starting an OS thread costs more than a whole schedule's hand-offs on a busy
machine (20 to 27 percent of a threaded run), so a spec thread runs as a
:class:`Job` on a worker that, once the job ends, waits up to
:data:`WORKER_IDLE` seconds for the next schedule's job.

What keeps reuse safe:

* every worker is a daemon, so none can keep the process from exiting;
* a job the engine gave up on (its thread hung in the backend) is *discarded*:
  its worker never takes another job and ends as soon as the backend lets the
  thread go; until then :func:`abandoned` names it;
* :func:`shutdown`, called when the pytest session ends, stops the idle
  workers and waits for them: no worker outlives the session;
* a worker carries no state from one job to the next (the engine binds its
  controller per job, and backends keep no per-OS-thread state: rule 4 of
  :mod:`.threads`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

#: Seconds an idle worker waits for the next job before it ends. 0 gives every spec thread of
#: every schedule an OS thread of its own, ending with its run.
WORKER_IDLE = 1.0
#: How long shutdown() waits for each idle worker to end.
SHUTDOWN_JOIN = 1.0


class Job:
    """One spec thread's life on a worker: like a Thread, but the OS thread may be reused."""

    def __init__(self, target: Callable[[], None], name: str):
        self.target, self.name = target, name
        self.ident: int | None = None
        self.running = False
        self.discarded = False
        self._end = threading.Lock()
        self._end.acquire()

    def start(self) -> None:
        self.running = True
        POOL.submit(self)

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

    def discard(self) -> None:
        """The engine gave up on this job (it hung): its worker takes no other job."""
        if not self.discarded:
            self.discarded = True
            POOL.note_discarded(self)


class _Worker:
    def __init__(self, pool: Pool, job: Job):
        self.pool, self.job = pool, job
        self.stop = False
        self.ready = threading.Lock()
        self.ready.acquire()
        self.thread = threading.Thread(target=self._loop, name="kvmconf-worker", daemon=True)
        self.thread.start()

    def give(self, job: Job | None) -> None:
        """Hand over the next job, or None with ``stop`` set to end the worker."""
        self.job = job
        self.ready.release()

    def _loop(self) -> None:
        pool = self.pool
        while True:
            job, self.job = self.job, None
            if job is not None:
                job.run()
                if job.discarded:
                    return  # it hung once: never trust this OS thread with another job
            if self.stop or WORKER_IDLE <= 0:
                return
            with pool.lock:
                pool.idle.append(self)
            if not self.ready.acquire(timeout=WORKER_IDLE):
                with pool.lock:
                    if self in pool.idle:
                        pool.idle.remove(self)
                        return
                self.ready.acquire()  # taken off the idle list just now: its job (or stop) is coming


class Pool:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.idle: list[_Worker] = []
        self.discarded: list[Job] = []

    def submit(self, job: Job) -> None:
        with self.lock:
            worker = self.idle.pop() if self.idle else None
        if worker is None:
            _Worker(self, job)
        else:
            worker.give(job)

    def note_discarded(self, job: Job) -> None:
        with self.lock:
            self.discarded = [j for j in self.discarded if j.is_alive()]
            if job.is_alive():
                self.discarded.append(job)

    def abandoned(self) -> list[str]:
        """The OS threads of discarded jobs that are still inside the backend."""
        with self.lock:
            self.discarded = [j for j in self.discarded if j.is_alive()]
            return [f"kvmconf:{j.name}" for j in self.discarded]

    def shutdown(self, timeout: float = SHUTDOWN_JOIN) -> None:
        """End every idle worker and wait for it (busy ones end with their job)."""
        with self.lock:
            idle, self.idle = self.idle, []
        for w in idle:
            w.stop = True
            w.give(None)
        for w in idle:
            w.thread.join(timeout)


POOL = Pool()


def shutdown() -> list[str]:
    """Stop the idle workers; return the threads still held by a backend (abandoned after a hang)."""
    POOL.shutdown()
    return POOL.abandoned()


def abandoned() -> list[str]:
    return POOL.abandoned()
