"""Hunt for a violation of one guarantee with a search (engine/search.py), or replay one schedule.

Every search honours hypothesis' settings: ``max_examples`` is the budget, ``phases`` say
whether saved failures are replayed first (reuse), schedules are searched (generate) and a
hit is shrunk (shrink), ``database`` keeps the shrunk failures between runs, and a seed
(``seed=``, ``--hypothesis-seed``, ``derandomize``) makes the run repeatable.
"""

from __future__ import annotations

import random
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import core as hypothesis_core
from hypothesis import seed as hypothesis_seed
from hypothesis.errors import FlakyFailure

from ..backend import Backend
from ..errors import CouldNotDecide, Finding, KvmconfError, NothingReached, ViolationFound
from ..spec.model import Guarantee
from ..strategies import schedule_strategy
from . import guard, replay_guard
from .coverage import Coverage
from .explored import data_keys
from .records import Outcome
from .runner import RunOptions, run_schedule
from .schedule import Recording, Schedule
from .search import DEFAULT_SEARCH, Search, parse_search
from .shrink import same_failure, shrink
from .statistics import SearchStatistics

NOT_REPRODUCED = (
    "This violation did not reproduce: the same schedule ran again and passed (the backend's "
    "behaviour depends on something outside the schedule, e.g. OS timing or state kept between "
    "machines). The replay command may therefore pass.")
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
    #: the --kvm-search that ran
    search: str = ""

    def too_undecided(self, minimum: int = 1) -> bool:
        return self.undecided >= minimum and self.undecided * 2 > self.examples

    def count_undecided(self, outcome: Outcome) -> bool:
        """Count ``outcome`` if a live backend's evidence did not come in time; True if so."""
        if not outcome.undecided:
            return False
        self.undecided += 1
        self.undecided_why = self.undecided_why or outcome.undecided
        return True


def explore(g: Guarantee, backend: Backend, options: RunOptions,
            base: settings | None = None, seed: int | None = None,
            search: str | Search = DEFAULT_SEARCH,
            progress: Callable[[Stats], None] | None = None) -> Stats:
    """Search schedules of ``g``; raise ViolationFound, NothingReached or CouldNotDecide.

    ``progress`` is called after every example (the terminal shows long runs with it)."""
    chosen = (parse_search(search) if isinstance(search, str) else search).for_model(options.memory_model)
    with guard.holding():
        if chosen.own:
            return _own_search(g, backend, options, settings(base or settings()), seed, chosen, progress)
        return _hypothesis_search(g, backend, options, base, seed, progress)


def _finish(g: Guarantee, stats: Stats, last: Outcome | None) -> None:
    """The verdict of a search that found no violation: undecided, or an exists not reached."""
    if stats.too_undecided():
        raise CouldNotDecide(g, stats)
    if g.has_exists:
        wanted = {i for i, c in enumerate(g.checks) if c.kind == "exists"}
        if not wanted <= stats.reached:
            raise NothingReached(g, stats.examples, last)


def _seed(seed: int | None, s: settings, key: bytes) -> int | None:
    """The run's seed: given, forced by ``--hypothesis-seed``, fixed by ``derandomize``, or
    None (a fresh one each run)."""
    if seed is not None:
        return seed
    forced = getattr(hypothesis_core, "global_force_seed", None)
    if forced is not None:
        return int(forced) if isinstance(forced, int) else zlib.crc32(str(forced).encode())
    return zlib.crc32(key) if s.derandomize else None


def _own_search(g: Guarantee, backend: Backend, options: RunOptions, s: settings,
                seed: int | None, search: Search, progress: Callable[[Stats], None] | None) -> Stats:
    stats = Stats(search=str(search))
    figures = SearchStatistics(s)
    key = f"pytest-kvmconf:{g.id}@{backend.name}".encode()
    run_seed = _seed(seed, s, key)
    rng = random.Random(run_seed if run_seed is not None else random.getrandbits(64))
    # Like hypothesis: a seeded run neither reads nor writes the database.
    db = s.database if run_seed is None else None
    runs = FREE_ITERATIONS if options.free else 1
    last: Outcome | None = None
    # A live backend (``replays = False``) does not replay a schedule exactly: no shrinking.
    replays = getattr(backend, "replays", True)
    machines = [0]

    def ran(schedule: Schedule, failed: bool, seconds: float, kept: bool = False) -> None:
        stats.examples += 1
        figures.case(schedule, failed, seconds, kept)

    def failed(outcome: Outcome) -> ViolationFound:
        figures.failure()
        v = outcome.violation
        # A free run does not replay, and every replay of a hang waits the point timeout.
        exact = replays and not options.free and v is not None and v.kind != "hang"
        if exact and not same_failure(counted(outcome.schedule).violation, v):  # type: ignore[arg-type]
            figures.publish("a schedule broke the guarantee once")
            return ViolationFound(outcome, note=NOT_REPRODUCED)
        if Phase.shrink in s.phases and exact:
            figures.phase("shrink")
            outcome = shrink(g, backend, options, outcome, on_run=ran, run=counted)
        if db is not None and not options.free:
            db.save(key, outcome.schedule.encode().encode())
        figures.publish("a schedule broke the guarantee")
        return ViolationFound(outcome)

    def counted(schedule: Schedule, chooser: Any = None) -> Outcome:
        machines[0] += 1
        return stats.coverage.run(stats.examples + 1,
                                  lambda: run_schedule(g, backend, schedule, options, chooser))

    def timed(schedule: Schedule, chooser: Any = None) -> tuple[Outcome, float]:
        start = time.perf_counter()
        outcome = counted(schedule, chooser)
        return outcome, time.perf_counter() - start

    start = time.perf_counter()
    census = guard.Census()
    try:
        if db is not None and Phase.reuse in s.phases:
            figures.phase("reuse")
            for blob in list(db.fetch(key)):
                try:
                    saved = Schedule.decode(blob.decode())
                except (ValueError, UnicodeDecodeError):
                    saved = None
                if saved is None or saved.guarantee != g.id:
                    db.delete(key, blob)
                    continue
                outcome, seconds = timed(saved)
                ran(saved, outcome.violation is not None, seconds)
                if outcome.violation is not None:
                    raise failed(outcome)
                db.delete(key, blob)  # fixed since: forget it, as hypothesis does
        if Phase.generate in s.phases:
            figures.phase("generate")
            draw = search.drawer(g, options.doc_version, rng)
            data_of = data_keys(g, options.doc_version) if replays and not options.free else None
            for index in range(s.max_examples):
                if stats.too_undecided(UNDECIDED_STOP):
                    break
                schedule = draw(index)
                # Where the same data and picks replay the same run, the search may steer
                # away from interleavings it has run (engine/explored.py).
                data = data_of(schedule) if data_of is not None else None
                for _ in range(runs):
                    picker = search.picker(rng, index, data)
                    rec = Recording(picker)
                    outcome, seconds = timed(schedule, rec)
                    outcome.schedule = replace(schedule, tape=rec.writer.tape())
                    search.observed(picker, outcome, data)
                    ran(outcome.schedule, outcome.violation is not None, seconds)
                    if stats.count_undecided(outcome):
                        break
                    if outcome.violation is not None:
                        raise failed(outcome)
                    stats.reached |= outcome.reached
                last = outcome
                if progress is not None:
                    progress(stats)
        figures.publish(f"settings.max_examples={s.max_examples}" if Phase.generate in s.phases
                        else "nothing left to do")
        _finish(g, stats, last)
        census.check(backend, machines[0])
    except (ViolationFound, NothingReached, CouldNotDecide) as exc:
        exc.stats = stats
        raise
    finally:
        stats.seconds = time.perf_counter() - start
    return stats


def _hypothesis_search(g: Guarantee, backend: Backend, options: RunOptions, base: settings | None,
                       seed: int | None, progress: Callable[[Stats], None] | None) -> Stats:
    stats = Stats(search="hypothesis")
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
            if stats.count_undecided(outcome):
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
        _finish(g, stats, last[0] if last else None)
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
    return ViolationFound(v.outcome, note=NOT_REPRODUCED)


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
