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

from dataclasses import dataclass
from random import Random
from typing import Any, Protocol

from ..spec.model import Guarantee
from ..strategies import Drawer


class Picker(Protocol):
    def pick(self, runnable: list, current: Any) -> Any: ...


class RandomPicker:
    """A uniformly random runnable entity at every scheduling point (shuttle's check_random)."""

    __slots__ = ("rng", "count")

    def __init__(self, rng: Random):
        self.rng = rng
        self.count = 0

    def pick(self, runnable: list, current: Any) -> Any:
        self.count += 1
        return runnable[self.rng.randrange(len(runnable))] if len(runnable) > 1 else runnable[0]


class PctPicker:
    """Probabilistic concurrency testing (Burckhardt et al., ASPLOS 2010): every entity gets a
    random priority when first seen, the highest-priority runnable one runs, and at d-1 random
    points among the first ``steps`` picks the running entity drops below all others.

    A bug of depth d (d ordering constraints) is found with probability at least
    1/(n * steps^(d-1)) per schedule, n the number of entities. ``early`` > 1 leans the change
    points towards the first picks (a point is 1 + steps * u^early, u uniform in [0, 1))."""

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
        self.count += 1
        chosen = self._top(runnable)
        lowered = self.changes.get(self.count)
        if lowered is not None:
            self.priority[chosen] = lowered
            chosen = self._top(runnable)
        return chosen


#: The mixed search (measured with benchmarks/bench_search.py): random alone misses bugs that
#: need one thread starved for many steps, which PCT finds; PCT is slower on bugs that need
#: several early switches, which random finds in a few schedules. So the first schedules are
#: uniformly random, then this share of schedules is PCT's, with these depths, and change points
#: leaning towards the first picks (early windows are the common case in short threads).
MIXED_RANDOM_FIRST = 6
MIXED_PCT_SHARE = 0.6
MIXED_DEPTHS = (3, 6)
MIXED_EARLY = 2.0
#: The mixed search's parameters and steps: dealt from decks, and this share of sequences at
#: their longest (more steps contain more patterns; the shrinker removes the extra ones).
MIXED_LONG = 0.8


@dataclass
class Search:
    """One ``--kvm-search`` value."""

    name: str
    #: PCT's depth d (bug depth it targets); 0 for the other searches.
    depth: int = 0
    #: PCT's estimate of the picks per schedule: the most any schedule needed so far.
    steps: int = 10

    def drawer(self, g: Guarantee, doc_version: str, rng: Random) -> Drawer:
        if self.name == "mixed":
            return Drawer(g, doc_version, rng, decks=True, long=MIXED_LONG)
        return Drawer(g, doc_version, rng)

    def picker(self, rng: Random, index: int = 0) -> Picker:
        """The picker for the ``index``-th schedule of a hunt."""
        if self.name == "pct":
            return PctPicker(rng, self.depth, self.steps)
        if self.name == "mixed" and index >= MIXED_RANDOM_FIRST and rng.random() < MIXED_PCT_SHARE:
            return PctPicker(rng, rng.randint(*MIXED_DEPTHS), self.steps, MIXED_EARLY)
        return RandomPicker(rng)

    def observed(self, picker: Picker) -> None:
        """Learn from a finished schedule (PCT widens its step estimate)."""
        self.steps = max(self.steps, getattr(picker, "count", 0))

    @property
    def own(self) -> bool:
        """True when the engine's own loop runs it (every search but hypothesis)."""
        return self.name != "hypothesis"

    def __str__(self) -> str:
        return f"pct:{self.depth}" if self.name == "pct" else self.name


#: search name -> what it does, for option help and errors.
SEARCHES: dict[str, str] = {
    "mixed": "the default: uniformly random schedules first, then 60% PCT ones (depth 3 to 6, "
             "early change points); parameters and steps dealt from shuffled decks, most sequences long",
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
