"""What both thread modes share: a spec thread's program on an OS thread, and the hang report.

:class:`ThreadBase` runs the spec thread's steps as the generator executor
does (each operation's return ends an advance of its own) and leaves to its
subclasses how the thread stops at a point: :mod:`.controlled` parks it until
the engine picks it, :mod:`.free` logs the step and lets it go on.
"""

from __future__ import annotations

import os
import sys
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..backend import Machine, ThreadContext
from ..errors import BackendHang
from ..scheduling import Controller
from .executor import Formatter, Handle, ResultFormatter, Returned, engine_op
from .plan import ThreadPlan
from .workers import Job

#: Stack frames of each thread shown in a hang report.
STACK_DEPTH = 6
#: How long close() waits for one parked thread to unwind.
JOIN_TIMEOUT = 2.0

#: ``local.free``: the FreeHandle of the spec thread running on this OS thread (free mode).
local = threading.local()
_scheduling_file = sys.modules[Controller.__module__].__file__
#: Frames a hang report leaves out: the executor's own and threading's are the same every time.
_OWN_FILES = (_scheduling_file, threading.__file__,
              *(os.path.join(os.path.dirname(__file__), f"{m}.py")
                for m in ("threadbase", "controlled", "free", "threads", "workers")))


class Abort(BaseException):
    """Unwinds a backend thread whose run is over (raised out of point/wait)."""


class ThreadBase(Handle, Controller):
    """One spec thread on an OS thread; subclasses say how it stops at points."""

    thread: Job

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
        self._live = LiveState(self)
        self.thread = Job(self._main, plan.name)
        #: the engine gave up on this thread (hung): its OS thread is left to the backend.
        self.abandoned = False

    def abandon_if_stuck(self) -> None:
        """After close(): a thread that hung or is still in the backend is given up on. Its
        worker is a daemon and takes no further job (a hung OS thread is never reused)."""
        if getattr(self, "hung", False) or self.thread.is_alive():
            self.thread.discard()
            self.abandoned = self.thread.is_alive()

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
            r = Returned(op, args, result, before, self.fmt_result(ps, result), ps.generated)
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
        frames_ = [f for f in traceback.extract_stack(frame) if f.filename not in _OWN_FILES]
        out = []
        for entry in traceback.format_list(frames_[-STACK_DEPTH:]):
            out.extend("      " + line for line in entry.rstrip().splitlines())
        return out


class LiveState:
    """The machine as the ``snapshot`` engine op sees it: the state now, consistently."""

    def __init__(self, h: ThreadBase):
        self.observe = h._before


def hang_report(what: str, handles: Sequence[ThreadBase], seed: int | None = None) -> BackendHang:
    """BackendHang naming every thread's last scheduling point and its stack."""
    frames = sys._current_frames()
    lines = [what + (f" (delay seed {seed})" if seed is not None else "")]
    for h in handles:
        hint = h.blocked_in(frames) if getattr(h, "hung", False) else ""
        lines.append("  " + h.describe() + (f"; blocked in {hint}" if hint else ""))
        lines.extend(h.stack(frames))
    return BackendHang("\n".join(lines))


def with_note(exc: BaseException, note: str) -> BaseException:
    add = getattr(exc, "add_note", None)
    if add is not None and note not in getattr(exc, "__notes__", ()):
        add(note)
    return exc

