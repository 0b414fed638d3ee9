"""Hunt for a violation of one guarantee with hypothesis, or replay one schedule."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.errors import FlakyFailure

from ..backend import Backend
from ..errors import CouldNotDecide, Finding, KvmconfError, NothingReached, ViolationFound
from ..spec.model import Guarantee
from ..strategies import schedule_strategy
from . import guard, replay_guard
from .coverage import Coverage
from .records import Outcome
from .runner import RunOptions, run_schedule
from .schedule import Schedule

#: Free mode runs each example's threads this many times: races the points do not model need
#: repetition to show.
FREE_ITERATIONS = 3
#: A live backend's example whose evidence did not come within its bound decides nothing. Once
#: more than half of the examples (and at least this many) are undecided, the search stops and
#: says it could not decide: each such example costs the whole bound.
UNDECIDED_STOP = 5


@dataclass
class Stats:
    examples: int = 0
    seconds: float = 0.0
    reached: set[int] = field(default_factory=set)
    #: what the search explored (engine/coverage.py), for the report
    coverage: Coverage = field(default_factory=Coverage)
    #: examples a live backend could not decide (they count neither way)
    undecided: int = 0
    undecided_why: str | None = None

    def too_undecided(self, minimum: int = 1) -> bool:
        return self.undecided >= minimum and self.undecided * 2 > self.examples


def explore(g: Guarantee, backend: Backend, options: RunOptions,
            base: settings | None = None, seed: int | None = None,
            progress: Callable[[Stats], None] | None = None) -> Stats:
    """Run hypothesis over schedules of ``g``; raise ViolationFound or NothingReached.

    ``progress`` is called after every example (the terminal shows long runs with it)."""
    stats = Stats()
    last: list[Outcome] = []

    # Some failures must not go through hypothesis' replay-and-shrink: a free (preemptive) run
    # need not fail twice, and every shrink step of a hang waits the whole point timeout. Those
    # are kept here, the remaining examples are skipped, and the failure is raised afterwards.
    # A live backend (``replays = False``: the kernel is not under the engine's control) is
    # treated the same way, so a violation is never lost to hypothesis' FlakyFailure.
    kept: list[Outcome] = []
    replays = getattr(backend, "replays", True)
    # An error of the spec or of the backend contract is no finding to shrink: the first ends the search.
    errors: list[KvmconfError] = []
    machines = [0]

    def check(schedule: Schedule) -> None:
        if kept or errors or stats.too_undecided(UNDECIDED_STOP):
            return
        stats.examples += 1
        for _ in range(FREE_ITERATIONS if options.free else 1):
            machines[0] += 1
            try:
                outcome = stats.coverage.run(stats.examples, lambda: run_schedule(g, backend, schedule, options))
            except Finding:
                raise
            except KvmconfError as exc:
                errors.append(exc)
                return
            if outcome.undecided:
                stats.undecided += 1
                stats.undecided_why = stats.undecided_why or outcome.undecided
                return
            if outcome.violation is not None:
                if options.free or not replays or outcome.violation.kind == "hang":
                    kept.append(outcome)
                    return
                raise ViolationFound(outcome)
            stats.reached |= outcome.reached
        if not last:
            last.append(outcome)
        else:
            last[0] = outcome
        if progress is not None:
            progress(stats)

    # Each guarantee is its own test to hypothesis' database.
    check._hypothesis_internal_add_digest = f"{g.id}@{backend.name}".encode()  # type: ignore[attr-defined]
    test = settings(
        base or settings(),
        deadline=None,
        report_multiple_bugs=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much],
    )(given(schedule_strategy(g, options.doc_version))(check))
    if seed is not None:
        test = hypothesis_seed(seed)(test)
    start = time.perf_counter()
    census = guard.Census()
    try:
        try:
            test()
        except FlakyFailure as exc:
            raise _not_reproduced(exc) from None
        if errors:
            raise errors[0]
        if kept:
            raise ViolationFound(kept[0])
        if stats.too_undecided():
            raise CouldNotDecide(g, stats)
        if g.has_exists:
            wanted = {i for i, c in enumerate(g.checks) if c.kind == "exists"}
            if not wanted <= stats.reached:
                raise NothingReached(g, stats.examples, last[0] if last else None)
        census.check(backend, machines[0])
    except (ViolationFound, NothingReached, CouldNotDecide) as exc:
        exc.stats = stats  # the report wants the search's figures for failures too
        raise
    finally:
        stats.seconds = time.perf_counter() - start
    return stats


def _not_reproduced(exc: FlakyFailure) -> BaseException:
    """hypothesis found a violation that did not happen again on the same schedule: report it
    like any violation (timeline, state, replay), saying that it did not reproduce."""
    found = [e for e in _leaves(exc) if isinstance(e, ViolationFound)]
    if not found:
        return exc
    v = found[0]
    return ViolationFound(v.outcome, note=(
        "This violation did not reproduce: hypothesis ran the same schedule again and it passed (the "
        "backend's behaviour depends on something outside the schedule, e.g. OS timing or state kept "
        "between machines). The replay command may therefore pass."))


def _leaves(exc: BaseException) -> list[BaseException]:
    inner = getattr(exc, "exceptions", None)  # an exception group (3.11+, or exceptiongroup on 3.10)
    if isinstance(inner, (tuple, list)):
        return [leaf for e in inner for leaf in _leaves(e)]
    return [exc]


def replay(g: Guarantee, backend: Backend, options: RunOptions, schedule: Schedule) -> Outcome:
    """Run exactly one schedule; raise ViolationFound if it breaks the guarantee."""
    replay_guard.check(schedule, g, options.doc_version)  # before anything runs
    outcome = run_schedule(g, backend, schedule, options)
    if outcome.violation is not None:
        raise ViolationFound(outcome)
    if outcome.undecided:
        raise CouldNotDecide(g, Stats(examples=1, undecided=1, undecided_why=outcome.undecided))
    return outcome
