"""Schedule data that recur: enumerate their one-switch interleavings instead of sampling them.

A spec whose steps are fixed (SPTE-02: two threads, five steps, one parameter) has few
schedule data, and PCT samples the interleavings of each with replacement: on SPTE-02 three
quarters of its schedules were interleavings already run (the commonest one 18 % of all),
while the bug needs one preemption at one of a few points among some sixteen decisions.

For data that come up again, :class:`Recurring` runs, on a share of its schedules, the
interleavings with at most one switch in random order, each once (iterative context
bounding, Musuvathi and Qadeer, PLDI 2007, to bound one; a switch is a pick other than the
Chooser's default: a preemption, or where the current entity cannot go on, another than the
first runnable): first each starting entity without a switch, and from each such run the
tapes that switch at one of its decisions
(``(start, k, t)``: k decisions as in that run, then the t-th other runnable entity, as the
ordinary :class:`~pytest_kvmconf.engine.schedule.Chooser` reads it). An interleaving some
other schedule of the same data already ran (its canonical tape) is not run again. Data seen
once are left to the search's own picker: a spec that generates its steps rarely repeats its
data, and nothing changes for it.

Only where a run's data and picks decide its outcome (a backend that replays, scheduled by
the engine) is a tape's interleaving known from one run.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from random import Random
from typing import Any

from ..spec.model import Guarantee
from ..strategies import param_values
from .schedule import Chooser, Schedule

#: Parameters with more values than this are left out of what makes two schedules' data the
#: same: many-valued ones are request numbers, vectors, payloads (REQ-13's request number, 8
#: values, beside its flags, 4), which seldom change how the threads interleave, while with
#: them in, data would seldom recur within a budget. bench_search, 1,000 seeds each: within 100
#: schedules WaitConditionIgnored/REQ-13 98.8 % -> 100 %, NoWmbInMakeRequest@lkmm/REQ-14 97.7 %
#: -> 100 %, with every parameter in the key.
KEY_VALUES = 4
#: The share of a recurring data's schedules that run its next unexplored tape (the rest are
#: the search's own: a bug needing two preemptions is still found by PCT meanwhile).
SHARE = 0.5
#: Most recurring data kept, and most tapes kept waiting per data (bounded memory on a
#: thorough budget whatever the spec).
MAX_DATA = 256
MAX_PENDING = 4096


def data_keys(g: Guarantee, doc_version: str) -> Callable[[Schedule], Hashable]:
    """What two schedules of ``g`` must share to count as the same data: their generated steps
    and their parameters of at most KEY_VALUES values. Where a parameter left out does change
    the interleavings, a tape of one schedule is still a valid schedule of the other; only the
    enumeration is less exact (an interleaving run with one value is not run with another)."""
    kept = {p.name for p in g.params if len(param_values(p, doc_version)) <= KEY_VALUES}
    return lambda schedule: (tuple(kv for kv in schedule.params if kv[0] in kept), schedule.sequences)


class _Data:
    __slots__ = ("seen", "pending", "ran", "started")

    def __init__(self) -> None:
        self.seen = 0
        self.pending: list[tuple[int, ...]] = []
        self.ran: set[tuple[int, ...]] = set()
        self.started = False


class TapePicker:
    """Makes the picks of ``tape`` (as a Chooser does) and notes how many entities were runnable."""

    __slots__ = ("tape", "chooser", "first", "widths")

    def __init__(self, tape: tuple[int, ...]):
        self.tape, self.chooser = tape, Chooser(tape)
        self.first = 0
        self.widths: list[int] = []

    def pick(self, runnable: list, current: Any) -> Any:
        if not self.first:
            self.first = len(runnable)
        elif len(runnable) > 1:
            self.widths.append(len(runnable))
        return self.chooser.pick(runnable, current)


class Recurring:
    """Per schedule data: how often it came, the tapes left to run, the interleavings run."""

    def __init__(self, share: float = SHARE):
        self.data: OrderedDict[Hashable, _Data] = OrderedDict()
        self.share = share

    def tape_for(self, data: Hashable, rng: Random) -> TapePicker | None:
        """A picker for this schedule of ``data``, or None to leave it to the search's own."""
        d = self.data.get(data)
        if d is None:
            d = self.data[data] = _Data()
            while len(self.data) > MAX_DATA:
                self.data.popitem(last=False)
        self.data.move_to_end(data)
        d.seen += 1
        if d.seen < 2:
            return None
        if not d.started:  # the second time: start from entity 0, no switch
            d.started = True
            return TapePicker((0,))
        while d.pending and rng.random() < self.share:
            tape = d.pending.pop(rng.randrange(len(d.pending)))
            if tape not in d.ran:
                return TapePicker(tape)
        return None

    def ran(self, data: Hashable, picker: Any, tape: tuple[int, ...]) -> None:
        """A schedule of ``data`` ran with canonical tape ``tape`` (under ``picker``)."""
        d = self.data.get(data)
        if d is None:
            return
        d.ran.add(tape)
        if not isinstance(picker, TapePicker) or len(picker.tape) != 1:
            return
        # A run without a switch from one start: the tapes that switch once from it, and (from
        # start 0) the other starts.
        start = picker.tape[0]
        new = [(s,) for s in range(1, picker.first)] if start == 0 else []
        new += [(start, k, t) for k, width in enumerate(picker.widths) for t in range(width - 1)]
        d.pending += [t for t in new if t not in d.ran][:MAX_PENDING - len(d.pending)]
