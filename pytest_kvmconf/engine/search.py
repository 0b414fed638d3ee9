"""The searches ``--kvm-search`` names: how the schedules of one guarantee are chosen.

``hypothesis`` lets hypothesis draw whole schedules, tape included (the search shipped
before the others). Every other search is the engine's own loop (engine/explore.py):
parameters and generated steps drawn uniformly (strategies.draw_schedule), and at each
scheduling point a *picker* of the search chooses among the runnable entities. The picks
are written down as the schedule's tape (schedule.Recording), so a hit replays exactly with
the ordinary Chooser and shrinks like any schedule.

A picker treats whatever the runner offers as runnable alike (threads, and any other
entity the runner lets the scheduler pick, such as a store buffer's drain).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from random import Random
from typing import Any, Protocol

from ..spec.model import Guarantee
from ..strategies import Drawer
from .explored import Recurring, TapePicker
from .records import Outcome
from .refused import Refusals
from .schedule import Schedule


class Picker(Protocol):
    def pick(self, runnable: list, current: Any) -> Any: ...


class RandomPicker:
    """A uniformly random runnable entity at every scheduling point (shuttle's check_random)."""

    __slots__ = ("rng", "count")

    def __init__(self, rng: Random):
        self.rng = rng
        self.count = 0

    def pick(self, runnable: list, current: Any) -> Any:
        if len(runnable) == 1:
            return runnable[0]
        self.count += 1
        return runnable[self.rng.randrange(len(runnable))]


class PctPicker:
    """Probabilistic concurrency testing (Burckhardt et al., ASPLOS 2010): every entity gets a
    random priority when first seen, the highest-priority runnable one runs, and at d-1 random
    points among the first ``steps`` decisions (picks among two or more runnable entities) the
    running entity drops below all others.

    A bug of depth d (d ordering constraints) is found with probability at least
    1/(n * steps^(d-1)) per schedule, n the number of entities. ``early`` > 1 leans the change
    points towards the first decisions (a point is 1 + steps * u^early, u uniform in [0, 1))."""

    __slots__ = ("rng", "depth", "priority", "changes", "count")

    def __init__(self, rng: Random, depth: int, steps: int, early: float = 1.0):
        self.rng, self.depth = rng, depth
        self.priority: dict[Any, float] = {}
        # change point -> the priority it lowers to (the i-th point to d - i, below every
        # initial priority, which lie in (d, d + 1)).
        points = [1 + int(max(steps, 1) * rng.random() ** early) for _ in range(depth - 1)]
        self.changes = {p: depth - 1 - i for i, p in enumerate(points)}
        self.count = 0

    def _top(self, runnable: list) -> Any:
        for x in runnable:
            if x not in self.priority:
                self.priority[x] = self.depth + self.rng.random()
        return max(runnable, key=self.priority.__getitem__)

    def pick(self, runnable: list, current: Any) -> Any:
        if len(runnable) == 1:
            return runnable[0]
        # Only decisions count: a change point where one entity is runnable would change nothing.
        self.count += 1
        chosen = self._top(runnable)
        lowered = self.changes.get(self.count)
        if lowered is not None:
            self.priority[chosen] = lowered
            chosen = self._top(runnable)
        return chosen


#: The mixed search (measured with benchmarks/bench_search.py, 100 seeds per broken variant on
#: three seed ranges). Its first schedules are exactly the random search's: where random finds a
#: bug within them, mixed finds it at the same schedule. 24 and not fewer: the bugs random finds
#: in 12 to 24 schedules (REQ-13, REQ-19, REQ-25's) are ones PCT finds only 1.0 to 1.3 times as
#: often per schedule, so a switch at 12 left their medians to the seeds (it lost the comparison
#: with random on 4 to 6 of 153 variants, by half a schedule to three); what random needs more
#: than 24 for, this phase finds 2 to 10 times as often per schedule.
MIXED_RANDOM_FIRST = 24
#: Under a weak memory model (tso, lkmm) the random search drains a buffered store at its next
#: pick with probability 1/(runnable entities): the reorderings a missing barrier allows come from
#: stores held back, which PCT's priorities do and random rarely does (the missing-barrier
#: variants, 50 seeds: random's medians 19 to 51 where pct:3's are 5 to 17; with 24 first, 6 of
#: their 22 hunts stayed under 99 % within 100, with 12, 4, and the medians' sum fell from 369 to
#: 313).
MIXED_RANDOM_FIRST_WEAK = 12
#: After them every schedule is PCT's with this depth (three priority change points): the bugs
#: random has not found by then need a thread starved across a window. Depths 3 to 6 drawn per
#: schedule found REQ-19's and SPTE-02's windows less often than 4 alone.
MIXED_DEPTH = 4
#: Half of those PCT schedules lean their change points towards the first decisions (a point is
#: 1 + steps * u^MIXED_EARLY): a window at a thread's first steps (SPTE-02's ABA) is found twice
#: as often that way, while windows further in (REQ-19's) are found less often.
MIXED_EARLY = 2.0
MIXED_EARLY_SHARE = 0.5
#: Under tso or lkmm the PCT phase has depth 3 and no lean: a store held back is one more
#: entity whose priority decides when it drains, and the missing-barrier windows lie anywhere
#: in a schedule. Measured on the 22 missing-barrier hunts, 100 seeds: with depth 4 and half
#: leaning, NoWmbInMakeRequest@lkmm was found within 100 schedules on 96 % of seeds; with
#: depth 3 unleaned, every hunt on 99 to 100 % and no median higher.
MIXED_DEPTH_WEAK = 3
MIXED_EARLY_SHARE_WEAK = 0.0
#: The PCT phase's parameters and steps: dealt from decks, and this share of sequences at their
#: longest (more steps contain more patterns; the shrinker removes the extra ones; the random
#: phase keeps drawing every length). This doubles the rate of bugs that need one parameter
#: value among many (MP-01's HALTED read: 1.4 to 3.3 per 100 schedules). All of them, not 0.8:
#: bench_search, 100 seeds, MP-01 within 100 on 95 % of seeds -> 99 % (98.4 % of 500 seeds),
#: its median 43 -> 41, and no other variant's median or share changed.
MIXED_LONG = 1.0


@dataclass
class Search:
    """One ``--kvm-search`` value."""

    name: str
    #: PCT's depth d (bug depth it targets); 0 for the other searches.
    depth: int = 0
    #: PCT's estimate of the decisions per schedule: the most any PCT schedule met so far.
    steps: int = 10
    #: mixed: how many of the random search's schedules come first, the depth of the PCT ones
    #: after them and the share of those that lean early (see for_model).
    random_first: int = MIXED_RANDOM_FIRST
    mixed_depth: int = MIXED_DEPTH
    early_share: float = MIXED_EARLY_SHARE
    #: mixed: schedule data its PCT phase met more than once (engine/explored.py)
    recurring: Recurring = field(default_factory=Recurring, repr=False, compare=False)
    #: mixed: the generated steps the backend refused (engine/refused.py)
    refusals: Refusals = field(default_factory=Refusals, repr=False, compare=False)

    def for_model(self, memory_model: str) -> Search:
        """This search as it runs under ``memory_model`` (mixed hands over to PCT sooner under a
        weak one, and its PCT is shallower and unleaned there)."""
        if memory_model == "sc":
            return self
        return replace(self, random_first=MIXED_RANDOM_FIRST_WEAK, mixed_depth=MIXED_DEPTH_WEAK,
                       early_share=MIXED_EARLY_SHARE_WEAK)

    def drawer(self, g: Guarantee, doc_version: str, rng: Random) -> Callable[[int], Schedule]:
        """Draws the ``index``-th schedule of a hunt (its tape empty: the picker makes the picks).

        The mixed search's first schedules come from the same drawer, picker and random stream
        as the random search's, so they are exactly random's: where random finds a bug early,
        mixed finds it at the same schedule, and its own phase only has to do better on what
        random finds late."""
        plain = Drawer(g, doc_version, rng)
        if self.name != "mixed":
            return lambda index: plain.schedule()
        decks = Drawer(g, doc_version, rng, decks=True, long=MIXED_LONG, refusals=self.refusals)
        return lambda index: (plain if index < self.random_first else decks).schedule()

    def picker(self, rng: Random, index: int = 0, data: Hashable | None = None) -> Picker:
        """The picker for the ``index``-th schedule of a hunt.

        ``data``: the schedule's parameters and generated steps, where a run of the same data
        and picks is sure to repeat its outcome (a backend that replays, scheduled by the
        engine): where mixed's PCT phase meets data again, it enumerates their interleavings
        with one switch on a share of its schedules (engine/explored.py)."""
        if self.name == "pct":
            return PctPicker(rng, self.depth, self.steps)
        if self.name == "mixed" and index >= self.random_first:
            tape = None if data is None else self.recurring.tape_for(data, rng)
            if tape is not None:
                return tape
            return PctPicker(rng, self.mixed_depth, self.steps,
                             MIXED_EARLY if rng.random() < self.early_share else 1.0)
        return RandomPicker(rng)

    def observed(self, picker: Picker, outcome: Outcome | None = None, data: Hashable | None = None) -> None:
        """Learn from a finished schedule (``outcome``, its tape the one the picks made): PCT
        widens its estimate of the decisions per schedule; mixed learns which generated steps
        the backend refused, and (``data`` given) that this interleaving of the data has run.

        Only PCT's own schedules count for the estimate: a random one switches at every other
        decision, keeps every thread alive longer and so meets more decisions than a PCT
        schedule ever does; change points placed past a PCT schedule's end change nothing."""
        if self.name == "mixed" and outcome is not None:
            self.refusals.learn(outcome.schedule.params, outcome.generated)
            if data is not None and isinstance(picker, (PctPicker, TapePicker)):
                self.recurring.ran(data, picker, outcome.schedule.tape)
        if isinstance(picker, PctPicker):
            self.steps = max(self.steps, picker.count)

    @property
    def own(self) -> bool:
        """True when the engine's own loop runs it (every search but hypothesis)."""
        return self.name != "hypothesis"

    def __str__(self) -> str:
        return f"pct:{self.depth}" if self.name == "pct" else self.name


#: search name -> what it does, for option help and errors.
SEARCHES: dict[str, str] = {
    "mixed": f"the default: the random search's first {MIXED_RANDOM_FIRST} schedules ({MIXED_RANDOM_FIRST_WEAK} "
             f"under tso or lkmm), then PCT ones (depth {MIXED_DEPTH}, {MIXED_DEPTH_WEAK} under tso or lkmm) "
             "with parameters and steps dealt from shuffled decks, sequences at their longest; data that recur "
             "get their one-switch interleavings enumerated, each once; steps the backend refused, and "
             "parameter values under which it refuses more, come up less often",
    "random": "a uniformly random runnable entity at every scheduling point",
    "pct": "PCT with depth D (pct:D, default 3): random priorities, D-1 priority change points",
    "hypothesis": "hypothesis draws and shrinks whole schedules (the search shipped before 'mixed')",
}
DEFAULT_SEARCH = "mixed"
PCT_DEPTH = 3


def parse_search(text: str) -> Search:
    """``random``, ``pct``, ``pct:3``, ``hypothesis``; ValueError naming the known ones."""
    name, _, arg = text.strip().partition(":")
    known = ", ".join(f"{n} ({d})" for n, d in SEARCHES.items())
    if name not in SEARCHES:
        raise ValueError(f"unknown search {text!r}; known searches: {known}")
    if name == "pct":
        try:
            depth = int(arg) if arg else PCT_DEPTH
        except ValueError:
            depth = 0
        if not 1 <= depth <= 10:
            raise ValueError(f"search {text!r}: pct's depth is a whole number from 1 to 10, e.g. pct:3")
        return Search("pct", depth)
    if arg:
        raise ValueError(f"search {text!r}: only pct takes a parameter (pct:D); known searches: {known}")
    return Search(name)
