"""Run one schedule of one guarantee on one backend, and judge it.

The scheduler loop: while some thread can run, pick one from the choice tape,
advance it to its next scheduling point, record what it did, check the
``always`` conditions. When nothing can run, the run has ended (every thread
done or idle) or deadlocked (someone waits on something that never comes).
Then the ``final``/``never``/``exists`` conditions are judged.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import traceback
from collections.abc import Mapping
from typing import Any

from .. import facets
from ..backend import Backend, MachineConfig, default_arch, judges
from ..errors import (
    BackendFault,
    BackendHang,
    BudgetExceeded,
    EvalError,
    KvmconfError,
    SpecError,
    UndecidedUnderLoad,
    UsageError,
)
from ..facets.requests import request_name
from ..spec.expr import Expr
from ..spec.loader import MAX_VCPUS
from ..spec.model import Check, Guarantee
from . import guard, lockdep
from .executor import GeneratorHandle, Handle
from .plan import PlannedStep, make_plans
from .records import Entry, Outcome, Violation
from .schedule import Chooser, Schedule


class RunOptions:
    """How to run: the document version, and the thread executor's settings."""

    def __init__(self, doc_version: str, free: bool = False, point_timeout: float = 5.0,
                 memory_model: str = "sc"):
        self.doc_version = doc_version
        self.free = free
        self.point_timeout = point_timeout
        #: sc, tso or lkmm: how the backend's shared accesses behave (engine.memory).
        self.memory_model = memory_model


def run_schedule(g: Guarantee, backend: Backend, schedule: Schedule, options: RunOptions,
                 chooser: Any = None) -> Outcome:
    """``chooser`` (anything with ``pick(runnable, current)``) makes the picks instead of the
    schedule's tape: a search's own scheduler, wrapped in a Recording to get the tape back."""
    params = dict(schedule.params)
    constants = facets.all_constants()
    env: dict[str, Any] = {**constants, **params}
    nr_vcpus = _spec_value(g, "vcpus", g.vcpus, env) if isinstance(g.vcpus, Expr) else g.vcpus
    if isinstance(g.vcpus, Expr) and (type(nr_vcpus) is not int or not 1 <= nr_vcpus <= MAX_VCPUS):
        raise SpecError(g.file, g.id, "vcpus", f"{g.vcpus.source!r} evaluated to {nr_vcpus!r} with parameters "
                                               f"{params}; a vCPU count is an integer from 1 to {MAX_VCPUS}")
    env["nr_vcpus"] = nr_vcpus
    bindings: dict[str, Any] = {}
    for t in g.threads:
        for s in t.steps:
            if s.bind:
                bindings[s.bind] = None
    machine_options = {k: (_spec_value(g, f"machine.{k}", v, env) if isinstance(v, Expr) else v)
                       for k, v in g.machine}
    config = MachineConfig(nr_vcpus, default_arch(backend, g.arch), options.doc_version,
                           machine_options, options.free, g.needs, options.memory_model)
    plans = make_plans(g, schedule, nr_vcpus, env, bindings)
    outcome = Outcome(g, schedule, params, [p.name for p in plans], [], None)
    machine = guard.new_machine(backend, config, options.point_timeout)
    if options.free and getattr(machine, "execution", "generator") != "threads":
        guard.close(backend, machine, options.point_timeout)
        raise UsageError(f"--kvm-schedule=free runs a thread backend's OS threads preemptively; backend "
                         f"{getattr(backend, 'name', '?')!r} runs its machines as generators")
    handles: list[Handle] = []
    try:
        fmt = _Formats(options.doc_version)
        # step.before costs an observe() per operation: only when a check reads `step`.
        capture = any("step" in c.expr.names or (c.when is not None and "step" in c.when.names)
                      for c in g.checks if c.kind == "always")
        judged = [c for c in g.checks if judges(backend, c)]
        if getattr(machine, "execution", "generator") == "threads":
            from .threads import thread_handles

            handles = thread_handles(machine, plans, fmt.call, fmt.result, options,
                                     capture_before=capture, schedule=schedule)
            _Scheduler(g, backend, machine, handles, schedule, outcome, env, bindings, judged, chooser,
                       timeout=options.point_timeout).run()
        else:
            handles = [GeneratorHandle(machine, p, fmt.call, fmt.result, capture, backend) for p in plans]
            sched = _Scheduler(g, backend, machine, handles, schedule, outcome, env, bindings, judged, chooser,
                               timeout=options.point_timeout)
            try:
                guard.watched(sched.run, sched.progress, options.point_timeout, f"{g.id} generator run")
            except BackendHang as exc:  # the worker is abandoned: report from a copy it cannot touch
                outcome = dataclasses.replace(outcome, timeline=list(outcome.timeline),
                                              violation=Violation("hang", str(exc)),
                                              positions=[h.describe() for h in handles])
                handles = []  # their generator is stuck on the abandoned worker
    finally:
        for h in handles:
            h.close()
        try:
            guard.close(backend, machine, options.point_timeout)
        except BackendHang as exc:  # after a finding: the finding stays the verdict, with this note
            if outcome.violation is None:
                raise
            outcome.violation.message += f"\nThen close() blocked: {exc}"
    left = [f"kvmconf:{h.name}" for h in handles if getattr(h, "abandoned", False)]
    if left and outcome.violation is not None:
        outcome.violation.message += (
            f"\nAbandoned OS thread(s) still inside the backend: {', '.join(left)} (daemon threads that "
            "take no further work: they cannot keep pytest from exiting)")
    return outcome


NO_STEP = {"thread": "", "vcpu": -1, "op": "", "label": "", "returned": "", "args": {},
           "result": None, "before": None}


def _step(h: Handle) -> dict[str, Any]:
    """What `step` means in an `always` check: the advance just taken."""
    r = h.returned
    return {"thread": h.name, "vcpu": -1 if h.vcpu is None else h.vcpu, "op": h.current_op,
            "label": h.position, "returned": r.op if r else "", "args": r.args if r else {},
            "result": r.result if r else None, "before": r.before if r else None}


class _Formats:
    """How calls and results read in the timeline (request numbers by name)."""

    def __init__(self, doc_version: str):
        self.doc_version = doc_version

    def value(self, typ: str, v: Any) -> str:
        if typ == "req" and isinstance(v, int):
            return request_name(v, self.doc_version)
        return repr(v) if isinstance(v, str) else str(v)

    def call(self, ps: PlannedStep, args: dict[str, Any]) -> str:
        op = ps.step.op
        shown = ", ".join(f"{a.name}={self.value(a.type, args[a.name])}" for a in op.args
                          if args.get(a.name) is not None)
        return f"{op.name}({shown})"

    def result(self, ps: PlannedStep, result: Any) -> str:
        if result is None or ps.step.op.returns in ("none", "state"):
            return ""
        shown = str(result).lower() if isinstance(result, bool) else repr(result)
        bind = f" as {ps.step.bind}" if ps.step.bind else ""
        return f"-> {ps.step.op.name} returned {shown}{bind}"


@functools.lru_cache(maxsize=1)
def _declared_fields() -> frozenset[str]:
    """Every field name the facets declare as observable, and the engine's own (step, threads)."""
    out = set(NO_STEP) | {"done", "position"}
    for key in facets.all_observables():
        out.update(re.sub(r"\[[^\]]*\]", "", part) for part in key.split("."))
    return frozenset(out)


def _check_key(g: Guarantee, exc: Exception) -> str:
    """The key of the check whose condition raised ``exc`` (Expr.evaluate notes its source)."""
    source = getattr(exc, "source", None)
    for i, c in enumerate(g.checks):
        for part, expr in ((c.kind, c.expr), ("when", c.when)):
            if expr is not None and expr.source == source:
                return f"check[{i}].{part}"
    return "check"


def _spec_value(g: Guarantee, key: str, expr: Expr, env: Mapping[str, Any]) -> Any:
    """A spec's parameter expression (vcpus, a machine option); failing, it is the spec's error."""
    try:
        return expr.evaluate(env)
    except EvalError as exc:
        raise SpecError(g.file, g.id, key, f"{expr.source!r} cannot be evaluated: {exc}") from None


class _Scheduler:
    def __init__(self, g: Guarantee, backend: Any, machine: Any, handles: list[Handle], schedule: Schedule,
                 outcome: Outcome, env: dict[str, Any], bindings: dict[str, Any], judged: list[Check],
                 chooser: Any = None, timeout: float = 5.0):
        self.g, self.backend, self.machine, self.handles = g, backend, machine, handles
        self.progress = guard.Progress()
        self.timeout = timeout
        # A thread backend's observe() runs here, on the engine's thread, outside any watched run:
        # one that blocks (on a lock a hung thread holds) must not hang the run with it.
        if getattr(machine, "execution", "generator") == "threads":
            self.observe_now = functools.partial(guard.bounded, backend, "observe()", machine.observe, timeout)
        else:
            self.observe_now = machine.observe  # inside the watched generator run already
        self.judged = {id(c) for c in judged}  # the checks this backend answers for (backend.judges)
        self.chooser = chooser or Chooser(schedule.tape)
        self.outcome = outcome
        self.env, self.bindings = env, bindings
        self.always = [c for c in judged if c.kind == "always"]
        self.need_old = any("old" in c.expr.names or (c.when and "old" in c.when.names) for c in self.always)

    def names(self, state: Mapping[str, Any], step: Mapping[str, Any] | None,
              old: Mapping[str, Any] | None) -> dict[str, Any]:
        env = {**self.env, **self.bindings, **state}
        env["threads"] = {h.name: {"done": h.done, "position": h.position} for h in self.handles}
        env["step"] = step or NO_STEP
        if old is not None:
            env["old"] = old
        return env

    def misspelt(self, exc: EvalError) -> None:
        """A field no facet declares, missing from the state: the spec's typo, not the backend's fault."""
        name = getattr(exc, "field", None)
        if name is not None and name not in _declared_fields():
            raise SpecError(self.g.file, self.g.id, _check_key(self.g, exc),
                            f"{getattr(exc, 'source', 'a condition')!r} reads field {name!r}, which no facet "
                            f"declares: {exc}") from None

    def holds(self, check: Check, env: Mapping[str, Any]) -> bool:
        if check.when is not None and not check.when.evaluate(env):
            return True
        return bool(check.expr.evaluate(env))

    def run(self) -> None:
        out, handles = self.outcome, self.handles
        current: Handle | None = None
        chooser = self.chooser
        state = guard.observe(self.backend, self.machine, self.timeout) if self.need_old else None
        # tso/lkmm: buffered stores and stale copies are runnable entities beside the threads,
        # so when they take effect is a decision on the same tape (engine.memory).
        memory = getattr(self.machine, "memory", None)
        if memory is not None and not memory.weak:
            memory = None
        if memory is not None:
            memory.start({h.name: h.vcpu for h in handles})
        try:
            while True:
                runnable = [h for h in handles if not h.done and h.runnable()]
                if memory is not None:
                    runnable += memory.events()
                if not runnable:
                    break
                if current is not None and current.returned is not None and current in runnable:
                    # A return does nothing another thread could see: switching after it is
                    # the same interleaving as switching before it, so it is no decision.
                    h = current
                else:
                    h = chooser.pick(runnable, current)
                old = state
                if memory is None:
                    h.advance()
                    current = h
                    out.timeline.append(Entry(len(out.timeline) + 1, h.name, tuple(h.texts)))
                else:
                    memory.cpu = h.name
                    h.advance()
                    if h in handles:  # after a store drains, the thread that ran goes on
                        current = h
                    # What the accesses did goes before the label of the point they led to.
                    texts, notes = h.texts, memory.take_notes()
                    if notes and texts and h.returned is None:
                        texts = [*texts[:-1], *notes, texts[-1]]
                    else:
                        texts = [*texts, *notes]
                    out.timeline.append(Entry(len(out.timeline) + 1, h.name, tuple(texts)))
                self.progress.count += 1
                r = getattr(h, "returned", None)  # a store buffer's drain returns nothing
                if r is not None and r.generated is not None:
                    out.generated.append((r.generated, r.result))
                if len(out.timeline) > self.g.max_steps:
                    out.violation = Violation(
                        "livelock", f"no end after {self.g.max_steps} scheduling points "
                        "(a thread loops without reaching a wait or its end)")
                    break
                if self.always:
                    state = self.observe_now()
                    if type(state) is not dict:
                        guard.check_state(self.backend, state)
                    step = _step(h)
                    env = self.names(state, step, old)
                    for c in self.always:
                        if not self.holds(c, env):
                            out.violation = Violation("always", c.message or "an invariant stopped holding",
                                                      c, len(out.timeline), env)
                            break
                    if out.violation:
                        break
        except BudgetExceeded as exc:
            raise SpecError(self.g.file, self.g.id, _check_key(self.g, exc), str(exc)) from None
        except EvalError as exc:
            self.misspelt(exc)
            out.violation = Violation("error", f"a condition could not be evaluated: {exc}")
        except BackendHang as exc:
            out.violation = Violation("hang", str(exc))
        except UndecidedUnderLoad as exc:
            out.undecided = str(exc)
        except KvmconfError:  # the spec's or the backend contract's error, not a finding
            raise
        except Exception as exc:  # the backend itself failed: a finding, with its traceback
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-4))
            out.violation = Violation("error", f"the backend raised {type(exc).__name__}: {exc}\n{tb}")
        out.positions = [h.describe() for h in handles]
        try:
            out.final_state = guard.observe(self.backend, self.machine, self.timeout)
        except BackendFault:
            if out.violation is None:
                raise
            out.final_state = {"observe() failed": "see above"}
        out.undecided = out.undecided or getattr(self.machine, "undecided", None)
        if out.violation is not None or out.undecided:
            return
        stuck = [h for h in handles if not h.done and not h.idle()]
        if stuck:
            out.violation = Violation(
                "deadlock", "no thread can run, and " + ", ".join(h.name for h in stuck)
                + " wait(s) for something that never comes")
            return
        env = self.names(out.final_state, None, None)
        try:
            for i, c in enumerate(self.g.checks):
                if id(c) not in self.judged:
                    continue
                if c.kind == "final" and not c.expr.evaluate(env):
                    out.violation = Violation("final", c.message or "the final outcome is wrong", c, env=env)
                    return
                if c.kind == "never" and c.expr.evaluate(env):
                    out.violation = Violation("never", c.message or "a forbidden outcome was reached", c, env=env)
                    return
                if c.kind == "exists" and c.expr.evaluate(env):
                    out.reached.add(i)
        except BudgetExceeded as exc:
            raise SpecError(self.g.file, self.g.id, _check_key(self.g, exc), str(exc)) from None
        except EvalError as exc:
            self.misspelt(exc)
            out.violation = Violation("error", f"a condition could not be evaluated: {exc}")
        out.violation = out.violation or lockdep.judge(self.g, out.final_state)
