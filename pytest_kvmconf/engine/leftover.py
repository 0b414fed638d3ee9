"""Threads a backend left running, named at the end of the session, and an exit that does not
wait for them.

A backend is foreign code: a machine that hung may keep a helper thread of its own blocked
forever, and ``close()`` may never stop it. The engine's own threads are daemons (pooled
workers, the watchdog) and never hold up the exit; a *non-daemon* thread the backend started
would: Python joins every non-daemon thread when the interpreter shuts down
(``threading._shutdown``), so one such thread keeps pytest from ever exiting.

* :func:`recording` (around all the runs of one guarantee, see ``guard.watching``): a thread
  that was born inside and is still alive at the end is the backend's, recorded with the
  guarantee and the backend. Threads that existed before, the engine's own, and threads born
  outside a guarantee's runs (the user's own tests, fixtures, plugins) are never recorded.
* The guarantee's test gets a warning naming them (it reaches the terminal under xdist too);
  :func:`report` names, at the end of the session, each recorded thread still alive, with
  where its stack stands.
* :func:`release`, called when pytest is done (``pytest_unconfigure``): if a recorded
  non-daemon thread is still alive, a daemon thread (``kvmconf-exit``) waits for the
  interpreter's shutdown. Python then joins its non-daemon threads as always: every thread that
  is not the backend's is waited for, exactly as without the plugin. When only recorded backend
  threads are left and they are still alive after :data:`GRACE` seconds, it names them on
  stderr, runs the ``atexit`` handlers (so tracefs mounts, coverage data and logs are
  finished as usual) and ends the process with ``os._exit`` and pytest's exit status.

Why not something gentler: a started thread cannot be made a daemon, and Python 3.13 keeps the
handles it joins at shutdown in C, out of reach; ``os._exit`` works the same on every version.
What it skips is the interpreter's own teardown after the atexit handlers (module cleanup,
finalizers of objects still alive), which no test result depends on. If the process is not
pytest's own (``pytest.main()`` called by a program that goes on), the status is still that
of the last pytest session.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

#: Seconds the recorded threads get to end on their own once nothing else holds up the exit.
GRACE = 1.0
#: How often the exit guard looks at the threads while the interpreter shuts down.
POLL = 0.05


@dataclass
class Left:
    """A thread a backend started during a guarantee's runs and left running."""

    thread: threading.Thread
    gid: str
    backend: str

    def describe(self, frames: dict[int, Any] | None = None) -> str:
        t = self.thread
        kind = "daemon" if t.daemon else "non-daemon"
        return f"{t.name!r} ({kind}; left by backend {self.backend} in {self.gid}{where(t, frames)})"


_left: list[Left] = []
_session: list[Any] = []  # the last pytest session: its exit status is the process's
_exit_guard: list[threading.Thread] = []


def engine_thread(t: threading.Thread) -> bool:
    """The engine's own threads (pooled workers, spec threads on them, the watchdog, the exit guard)."""
    return t.name.startswith("kvmconf")


def where(t: threading.Thread, frames: dict[int, Any] | None = None) -> str:
    """``, at file:line in function``: the innermost frame of ``t`` outside threading.py."""
    frame = (frames if frames is not None else sys._current_frames()).get(t.ident or -1)
    if frame is None:
        return ""
    stack = traceback.extract_stack(frame)
    theirs = [f for f in stack if f.filename != threading.__file__]  # Event.wait's insides say nothing
    last = (theirs or stack)[-1]
    return f", at {os.path.basename(last.filename)}:{last.lineno} in {last.name}"


@contextmanager
def recording(gid: str, backend: str) -> Iterator[list[Left]]:
    """Record the threads born inside that are still alive at its end (on every way out); the
    list it gives gets this stretch's ones, for a warning on the guarantee's test."""
    before = set(threading.enumerate())
    new: list[Left] = []
    try:
        yield new
    finally:
        known = {id(x.thread) for x in _left}
        for t in threading.enumerate():
            if t not in before and t.is_alive() and not engine_thread(t) and id(t) not in known:
                new.append(Left(t, gid, backend))
        _left.extend(new)


def alive() -> list[Left]:
    """The recorded threads still running (the ones that ended are forgotten)."""
    _left[:] = [x for x in _left if x.thread.is_alive()]
    return list(_left)


def report() -> list[str]:
    """One line per recorded thread still running, with where it stands."""
    frames = sys._current_frames()
    return [x.describe(frames) for x in alive()]


def note_session(session: Any) -> None:
    _session[:] = [session]


def release() -> list[Left]:
    """At the end of pytest: make sure the recorded non-daemon threads still running cannot hold
    up the interpreter's exit. Returns them (nothing happens when there are none)."""
    holding = [x for x in alive() if not x.thread.daemon]
    if holding and not _exit_guard:
        guard = threading.Thread(target=_guard_exit, name="kvmconf-exit", daemon=True)
        _exit_guard.append(guard)
        guard.start()
    return holding


def _status() -> int:
    session = _session[0] if _session else None
    try:
        return int(getattr(session, "exitstatus", 0))
    except (TypeError, ValueError):
        return 1


def _guard_exit() -> None:
    main = threading.main_thread()
    main.join()  # returns when the interpreter starts shutting down (threading._shutdown)
    me = threading.current_thread()
    settled: float | None = None
    while True:
        holding = [x for x in alive() if not x.thread.daemon]
        if not holding:
            return  # they ended: the interpreter exits as usual
        theirs = {id(x.thread) for x in holding}
        others = [t for t in threading.enumerate()
                  if t is not main and t is not me and not t.daemon and t.is_alive() and id(t) not in theirs]
        if others:
            settled = None  # Python still waits for someone else's thread, as it should
        elif settled is None:
            settled = time.monotonic()
        elif time.monotonic() - settled >= GRACE:
            break
        time.sleep(POLL)
    frames = sys._current_frames()
    try:
        sys.stderr.write(f"kvmconf: exiting without waiting for {len(holding)} non-daemon thread(s) a backend "
                         f"left running: {'; '.join(x.describe(frames) for x in holding)}\n")
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # a closed or broken stream must not stop the exit
                pass
        os._exit(_status())
