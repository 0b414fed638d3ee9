"""Executors turn a thread plan into a *handle* the scheduler can advance.

A handle runs its thread from one scheduling point to the next in
:meth:`Handle.advance`. The generator executor here drives backends written as
generators (the reference model); :mod:`.threads` drives backends running on
real OS threads. The scheduler in :mod:`.runner` only sees handles.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from ..backend import Machine, ThreadContext
from ..scheduling import Point, Wait
from . import guard
from .plan import PlannedStep, ThreadPlan

Formatter = Callable[[PlannedStep, dict[str, Any]], str]
ResultFormatter = Callable[[PlannedStep, Any], str]


@dataclass(frozen=True)
class Returned:
    """An operation returned to its thread. It ends an advance of its own, so
    that checks see each operation's result (``step.returned``, ``step.result``)
    and the state when it started (``step.before``)."""

    op: str
    args: dict[str, Any]
    result: Any
    before: Any
    text: str
    #: the generated step this was (PlannedStep.generated), None for a fixed one
    generated: tuple | None = None


class Handle:
    """One spec thread as the scheduler sees it."""

    name: str
    vcpu: int | None
    done: bool = False
    position: str = "start"
    #: texts of what the last advance did, for the timeline.
    texts: list[str]
    #: the operation that returned in the last advance, if one did.
    returned: Returned | None = None
    #: the operation the thread is in (or last ran).
    current_op: str = ""

    def runnable(self) -> bool:
        raise NotImplementedError

    def idle(self) -> bool:
        """Parked in a wait it may legitimately stay in forever."""
        raise NotImplementedError

    def advance(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def describe(self) -> str:
        """Where the thread is, for deadlock and hang reports."""
        state = "done" if self.done else ("idle" if self.idle() else "waiting" if not self.runnable() else "runnable")
        return f"{self.name}: {state} at {self.position!r}"


def engine_op(machine: Machine, ps: PlannedStep, args: dict[str, Any]) -> tuple[bool, Any, str]:
    """The core facet's operations, which the engine performs itself."""
    name = ps.step.op.name
    if name == "snapshot":
        return True, machine.observe(), "snapshot"
    if name == "note":
        return True, None, str(args["text"])
    return False, None, ""


class GeneratorHandle(Handle):
    def __init__(self, machine: Machine, plan: ThreadPlan, fmt: Formatter, fmt_result: ResultFormatter,
                 capture_before: bool = False, backend: Any = None):
        self.backend = backend
        self.name, self.vcpu = plan.name, plan.vcpu
        self.machine, self.plan = machine, plan
        self.fmt, self.fmt_result = fmt, fmt_result
        self.ctx = ThreadContext(plan.name, plan.vcpu)
        self.texts = []
        self.waiting: Wait | None = None
        self.returned = None
        self.current_op = ""
        self.capture_before = capture_before
        self.ops_left = len(plan.steps)
        self.gen = self.program()

    def program(self) -> Generator[Point | Wait | Returned, None, None]:
        for ps, args in self.plan.calls():
            self.current_op = ps.step.op.name
            before = self.machine.observe() if self.capture_before else None
            self.texts.append(self.fmt(ps, args))
            handled, result, label = engine_op(self.machine, ps, args)
            if handled:
                yield Point(label)
            else:
                ops = self.machine.run_op(self.ctx, ps.step.op.name, args)
                if not hasattr(ops, "__iter__"):  # `yield from` would fail inside the engine
                    raise guard.wrong_run_op(self.backend, ps.step.op.name, ops)
                result = yield from ops
            self.plan.bind(ps, result)
            yield Returned(ps.step.op.name, args, result, before, self.fmt_result(ps, result), ps.generated)

    def runnable(self) -> bool:
        return not self.done and (self.waiting is None or self.waiting.until())

    def idle(self) -> bool:
        return self.waiting is not None and self.waiting.idle and not self.waiting.until()

    def advance(self) -> None:
        self.texts = []
        self.waiting = None
        self.returned = None
        try:
            p = next(self.gen)
        except StopIteration:
            self.done = True
            self.position = "done"
            return
        if isinstance(p, Returned):
            self.returned = p
            self.texts.append(p.text or f"{p.op} returns")
            self.position = f"returned from {p.op}"
            self.ops_left -= 1
            # Nothing left to run: done now, not after one more empty advance.
            self.done = self.ops_left == 0
            return
        self.texts.append(p.label)
        self.position = p.label
        if isinstance(p, Wait):
            self.waiting = p
