"""Every schedule of a small spec: a depth-first walk over the scheduler's decisions.

Each run follows a prefix of decisions (indices into the runnable entities, threads and memory
events alike) and takes the first entity after it, recording how many there were at each
decision; the walk then tries every other index at every decision past the prefix. No reduction:
it is for the kernel's two-thread litmus tests (a few thousand schedules), where it turns "not
reached in N random schedules" into "not reachable".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pytest_kvmconf.engine.runner import Outcome, RunOptions, run_schedule
from pytest_kvmconf.engine.schedule import Schedule
from pytest_kvmconf.spec.model import Guarantee


class _Prefix:
    def __init__(self, prefix: tuple[int, ...]):
        self.prefix, self.widths = prefix, []

    def pick(self, runnable: list, current: Any) -> Any:
        if len(runnable) == 1:
            return runnable[0]
        d = len(self.widths)
        self.widths.append(len(runnable))
        return runnable[self.prefix[d] if d < len(self.prefix) else 0]


def walk(g: Guarantee, backend: Any, options: RunOptions, limit: int,
         hit: Callable[[Outcome], bool]) -> tuple[int, bool, Outcome | None]:
    """Run every schedule of ``g`` until ``hit`` says yes of an outcome, or ``limit`` runs.
    Returns (runs, whether every schedule was run, the outcome hit or None)."""
    schedule = Schedule(g.id, (), (), ())
    todo: list[tuple[int, ...]] = [()]
    runs = 0
    while todo and runs < limit:
        prefix = todo.pop()
        chooser = _Prefix(prefix)
        outcome = run_schedule(g, backend, schedule, options, chooser=chooser)
        runs += 1
        if hit(outcome):
            return runs, False, outcome
        for d in range(len(prefix), len(chooser.widths)):
            base = prefix + (0,) * (d - len(prefix))
            todo += [base + (alt,) for alt in range(1, chooser.widths[d])]
    return runs, not todo, None
