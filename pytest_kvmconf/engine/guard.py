"""The engine's side of the backend contract: a backend is foreign code, so every call the
engine makes into it outside an operation is checked, and a generator backend's run is watched.

* :func:`new_machine`, :func:`observe` and :func:`close`: a method that raises or returns the
  wrong type becomes a :class:`~pytest_kvmconf.errors.BackendFault`, one paragraph naming the
  backend and the method (not a traceback through the engine, and never a condition error
  downstream); one that blocks (on a lock its hung thread holds, on a device that never
  answers) is interrupted like a hung run, a :class:`~pytest_kvmconf.errors.BackendHang`
  naming the method, with its stack (:func:`bounded`).
* :func:`check_state`: ``observe()`` must return a mapping.
* :func:`watched`: a generator backend's schedule is watched with the same wall-clock bound as
  thread backends (``point_timeout`` without progress), so a backend blocking or looping forever
  is reported as a hang, with its stack, and unwound (or, off the main thread, abandoned).
* :func:`watching`: around all the runs of one guarantee (its search or replay), the hang
  signal's handler is installed once, not per run, and the threads the backend leaves running
  are recorded (:mod:`.leftover` names them and keeps them from holding up the exit).
  :func:`holding` is its first half alone, which ``explore()`` takes around every search, so
  library callers get the same cheap path.
* :class:`Census`: threads and fds around a guarantee's search; a backend that leaves some
  behind per machine is reported as a fault of the backend.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from ..backend import Backend, Machine, MachineConfig
from ..errors import BackendFault, BackendHang, KvmconfError
from . import leftover
from .workers import Job

T = TypeVar("T")

#: Stack frames of a hung generator run shown in its report.
STACK_DEPTH = 8


def _name(backend: Any) -> str:
    return repr(getattr(backend, "name", type(backend).__name__))


def _raised(backend: Any, method: str, exc: BaseException) -> BackendFault:
    where = ""
    tb = traceback.extract_tb(exc.__traceback__)
    if tb:
        last = tb[-1]
        where = f" (at {os.path.basename(last.filename)}:{last.lineno}, in {last.name})"
    return BackendFault(f"backend {_name(backend)}: {method} raised {type(exc).__name__}: {exc}{where}")


#: new_machine() and close() may do real work (a live VM's creation and teardown): they get this
#: many point timeouts before they count as hung; observe() reads state and gets one.
METHOD_SLACK = 4

#: ``_inside.watched``: this thread is running a watched run, whose watch covers what it calls.
_inside = threading.local()


class _Method:
    """``backend 'x': close()``, formatted only when a report needs it (calls are frequent)."""

    __slots__ = ("backend", "method")

    def __init__(self, backend: Any, method: str):
        self.backend, self.method = backend, method

    def __str__(self) -> str:
        return f"backend {_name(self.backend)}: {self.method}"


def bounded(backend: Any, method: str, call: Callable[[], T], timeout: float) -> T:
    """``call()``, a backend method the engine calls outside an operation, watched like a
    generator run: blocking for ``timeout`` seconds it is a BackendHang naming the method.
    On the main thread inside :func:`watching` this costs about a microsecond."""
    if getattr(_inside, "watched", False):
        return call()
    if threading.current_thread() is threading.main_thread():
        return _WATCHDOG.run_here(call, _NO_STEPS, timeout, _Method(backend, method))
    box: list[T] = []
    watched(lambda: box.append(call()), _NO_STEPS, timeout, _Method(backend, method))
    return box[0]


def new_machine(backend: Backend, config: MachineConfig, timeout: float = 5.0) -> Machine:
    try:
        machine = bounded(backend, "new_machine()", lambda: backend.new_machine(config), timeout * METHOD_SLACK)
    except KvmconfError:
        raise
    except Exception as exc:
        raise _raised(backend, "new_machine()", exc) from None
    execution = getattr(machine, "execution", "generator")
    missing = [m for m in ("run_op", "observe", "close") if not callable(getattr(machine, m, None))]
    if missing or execution not in ("generator", "threads"):
        what = f"lacks {', '.join(missing)}" if missing else f"has execution = {execution!r}"
        raise BackendFault(
            f"backend {_name(backend)}: new_machine() returned {type(machine).__name__}, which {what}; a "
            "machine has run_op, observe and close, and execution 'generator' or 'threads' "
            "(see pytest_kvmconf.backend.Machine)")
    return machine


def wrong_run_op(backend: Any, op: str, value: Any) -> BackendFault:
    return BackendFault(f"backend {_name(backend)}: run_op({op!r}) returned {type(value).__name__} {clip(value)}; "
                        "a generator machine's run_op returns a generator, which yields scheduling points "
                        "and returns the operation's result")


def check_state(backend: Any, state: Any) -> Mapping[str, Any]:
    if not isinstance(state, Mapping):
        raise BackendFault(f"backend {_name(backend)}: observe() returned {type(state).__name__} "
                           f"{clip(state)}; it must return a mapping of observable names to plain data")
    return state


def observe(backend: Any, machine: Machine, timeout: float = 5.0) -> Mapping[str, Any]:
    try:
        state = bounded(backend, "observe()", machine.observe, timeout)
    except KvmconfError:
        raise
    except Exception as exc:
        raise _raised(backend, "observe()", exc) from None
    return check_state(backend, state)


def close(backend: Any, machine: Machine, timeout: float = 5.0) -> None:
    try:
        bounded(backend, "close()", machine.close, timeout * METHOD_SLACK)
    except KvmconfError:
        raise
    except Exception as exc:
        raise _raised(backend, "close()", exc) from None


def clip(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__
        return ""
    return text if len(text) <= 80 else text[:77] + "..."


def stack_lines(frame: Any) -> str:
    """The innermost frames of a hung thread, the engine's own left out (the backend's are what
    the reader needs), indented for the report."""
    if frame is None:
        return "      (no stack)"
    own = (__file__, threading.__file__)
    frames = [f for f in traceback.extract_stack(frame) if f.filename not in own][-STACK_DEPTH:]
    return "\n".join("      " + line for entry in traceback.format_list(frames)
                     for line in entry.rstrip().splitlines())


class Progress:
    """What the watched run last did; the scheduler bumps ``count`` at every advance."""

    __slots__ = ("count", "where")

    def __init__(self, where: str = "start") -> None:
        self.count = 0
        self.where = where


#: The progress of a backend method's call: none until it returns (the method is named in ``what``).
_NO_STEPS = Progress("")


def watched(run: Callable[[], None], progress: Progress, timeout: float, what: Any) -> None:
    """Run ``run`` and raise BackendHang when it makes no progress for ``timeout`` seconds.

    On the main thread (pytest's) it runs right here, watched by one watchdog thread that,
    seeing no progress, interrupts it with a signal whose handler raises BackendHang: a blocking
    wait or a loop in the backend is unwound and nothing is left behind. Inside :func:`watching`
    the normal path pays three attribute writes per run; outside it, also the two sigaction
    calls that install and restore the handler (3.5 us). Elsewhere (no signals there) it runs
    on a pooled worker the engine waits for; a hung worker is abandoned (a daemon that takes no
    further job)."""
    if threading.current_thread() is threading.main_thread():
        _WATCHDOG.run_here(run, progress, timeout, what)
        return
    error: list[BaseException] = []

    def target() -> None:
        _inside.watched = True
        try:
            run()
        except BaseException as exc:  # handed to the engine's thread
            error.append(exc)
        finally:
            _inside.watched = False

    job = Job(target, what)
    job.start()
    seen = -1
    while True:
        job.join(timeout)
        if not job.is_alive():
            break
        if progress.count == seen:
            job.discard()
            frame = sys._current_frames().get(job.ident or -1)
            lines = stack_lines(frame)
            raise BackendHang(
                f"{what}: {_stalled(progress, timeout)}; its thread, kvmconf:{what}, is abandoned "
                f"(a daemon: it cannot keep pytest from exiting)\n    stack:\n{lines}")
        seen = progress.count
    if error:
        raise error[0]


#: The signal that interrupts a hung run on the main thread (the kvm backend kicks with SIGRTMIN+2).
HANG_SIGNAL = signal.SIGRTMIN + 4


class _Watchdog:
    """One daemon thread per process watching the main thread's current generator run. It samples
    every ``timeout`` seconds and never needs waking per run; after a few idle samples it parks
    until the next run. A run costs three attribute writes while :meth:`handler` holds the
    signal's handler (pytest holds it around each guarantee); a run outside it installs and
    restores the handler itself, two sigaction calls that were the whole measurable cost of the
    watch when every run paid them."""

    IDLE_SAMPLES = 4

    def __init__(self) -> None:
        self.current: tuple[Progress, float, str] | None = None
        self.runs = 0
        #: (the run it is about, its text): a signal that arrives after that run ended is ignored
        self.report: tuple[int, str] | None = None
        self.parked = False
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        #: the hang signal's handler is ours (inside handler()): runs need not install it
        self.held = False

    @contextmanager
    def handler(self) -> Iterator[None]:
        """Hold the hang signal's handler for a stretch of runs, then put back the one found.
        A hang signal that arrives between runs is ignored (there is no run to interrupt)."""
        if self.held or threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(HANG_SIGNAL, self._interrupt)
        self.held = True
        try:
            yield
        finally:
            self.held = False
            signal.signal(HANG_SIGNAL, previous)

    def run_here(self, run: Callable[[], T], progress: Progress, timeout: float, what: Any) -> T:
        if not self.held:
            with self.handler():
                return self.run_here(run, progress, timeout, what)
        if self.thread is None:  # it lives as long as the process (a forked child starts its own)
            self.thread = threading.Thread(target=self._loop, name="kvmconf-watchdog", daemon=True)
            self.thread.start()
        self.report = None
        self.runs += 1
        self.current = (progress, timeout, what)
        if self.parked:
            self.wake.set()
        _inside.watched = True
        try:
            return run()
        finally:
            _inside.watched = False
            self.current = None

    def _interrupt(self, signum: int, frame: Any) -> None:
        report, self.report = self.report, None
        if report is not None and self.current is not None and report[0] == self.runs:
            raise BackendHang(report[1])

    def _loop(self) -> None:
        main = threading.main_thread()
        last: tuple[int, int] | None = None
        idle = 0
        while main.is_alive():
            current = self.current
            if current is None:
                idle += 1
                if idle > self.IDLE_SAMPLES:
                    self.parked = True
                    self.wake.clear()
                    if self.current is None:
                        self.wake.wait()
                    self.parked = False
                    idle = 0
                else:
                    time.sleep(1.0)
                last = None
                continue
            idle = 0
            progress, timeout, what = current
            key = (self.runs, progress.count)
            if key != last:
                last = key
                time.sleep(timeout)
                continue
            self._fire(main, key[0], progress, timeout, what)
            last = None
            time.sleep(timeout)

    def _fire(self, main: threading.Thread, run: int, progress: Progress, timeout: float, what: Any) -> None:
        frame = sys._current_frames().get(main.ident or -1)
        lines = stack_lines(frame)
        self.report = (run, f"{what}: {_stalled(progress, timeout)}; interrupted\n    stack:\n{lines}")
        signal.pthread_kill(main.ident or 0, HANG_SIGNAL)


def _stalled(progress: Progress, timeout: float) -> str:
    if not progress.where:  # a backend method, named in ``what``
        return f"no return for {timeout:g} s or more (it blocks or loops)"
    return (f"the backend made no progress for {timeout:g} s or more (it blocks or loops inside an "
            f"operation), last at {progress.where!r}")


_WATCHDOG = _Watchdog()
os.register_at_fork(after_in_child=_WATCHDOG.__init__)  # the parent's watchdog thread is not in the child


def holding() -> Any:
    """The hang signal's handler held for a whole search (a context manager; nests, and does
    nothing off the main thread): without it every watched call installs and restores the
    handler, 3.5 us each, several times per schedule."""
    return _WATCHDOG.handler()


@contextmanager
def watching(gid: str, backend: Any) -> Iterator[list[leftover.Left]]:
    """Around all the runs of one guarantee: the hang signal's handler is held once for them, and
    the threads the backend starts and leaves running are recorded for :mod:`.leftover` (the
    list given gets them when it ends)."""
    with _WATCHDOG.handler(), leftover.recording(gid, _name(backend)) as left:
        yield left


def _fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def _threads() -> set[threading.Thread]:
    # The engine's own threads (pooled workers, the watchdog) come and go; what the backend starts counts.
    return {t for t in threading.enumerate() if not leftover.engine_thread(t)}


class Census:
    """Threads and fds before and after a guarantee's search. A backend that leaks per machine
    shows growth near the number of machines; a few stray ones (a lazily opened file) do not count."""

    def __init__(self) -> None:
        self.threads, self.fds = _threads(), _fds()

    def check(self, backend: Any, machines: int) -> None:
        if machines < 4:
            return
        bar = max(3, machines // 2)
        new = [t for t in _threads() - self.threads if t.is_alive()]
        fds = _fds() - self.fds
        if len(new) >= bar or fds >= bar:
            names = sorted({t.name for t in new})
            shown = ", ".join(names[:5]) + (f", ... ({len(names)} names)" if len(names) > 5 else "")
            parts = ([f"{len(new)} thread(s) still running ({shown})"] if len(new) >= bar else []) + \
                    ([f"{fds} more open file descriptors"] if fds >= bar else [])
            raise BackendFault(
                f"backend {_name(backend)} leaks per machine: after {machines} machines were created and "
                f"closed, {' and '.join(parts)} than before; close() must release every thread and fd "
                "its machine holds")
