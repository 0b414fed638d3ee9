"""Generated steps the backend refuses: dealt less often once seen, so that a step that changes
something comes up instead.

A refused call (one that returns -errno) changes nothing the document lets it change (4.39
KVM_SET_MP_STATE: "any other fails with EINVAL and changes nothing"), yet it takes a place in
a sequence. MP-01's vCPU thread draws KVM_SET_MP_STATE's state from 13 values, 7 of which x86
refuses; a bug that needs a HALTED vCPU read back needs the one value of 13 that makes it
HALTED, then a read: about 4 schedules in 100 can show it, and no ordering of them shows it
in more. With every refused value known, MP-01 is found within 100 schedules on every seed.

:class:`Refusals` learns, per hunt, which generated steps (spec thread, choice, drawn
parameters) the backend refused, and never accepted, with each value of the schedule's
parameters (KVM refuses KVM_MP_STATE_HALTED without an in-kernel irqchip and takes it with
one). The mixed search's drawer redraws such a step's parameters (the same kind of step) up
to :data:`REDRAWS` times. It only leans: a value refused everywhere still comes up, and a
backend that wrongly accepts a step is never steered away from it, as it does not refuse it.

The same counts lean the schedule's own parameters: a value under which the backend accepts
a smaller share of the generated steps (no in-kernel irqchip: KVM_SIGNAL_MSI and every x86
state but RUNNABLE refused) is a smaller machine, and is dealt again with the chance it falls
short of the parameter's best value (:meth:`Refusals.keep`). Only the mixed search's second
phase leans; its first phase, the random search's schedules, draws every value alike.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

#: How many times a refused step's parameters are drawn again: with 7 of 13 values refused, one
#: of MP-01's state draws in 12 is still a refused one (one in 1.9 without). bench_search, 4 x 100
#: seeds: within 100 schedules on 88-94 % of seeds before, 95-98 % with 3 (94-97 % with 2).
REDRAWS = 3
#: How hard the lean of schedule parameters is (Refusals.keep). MP-01 with an irqchip: 96 % of
#: its generated steps accepted, 65 % without, so a dealt irqchip=False is kept with chance
#: (0.65 / 0.96)^4 = 0.21. bench_search, 1,000 seeds: HaltedReadAsStopped/MP-01 within 100 on
#: 98.1 % of seeds without the lean, 98.5 % with power 2, 99.6 % with 4, 99.7 % with 8; all 177
#: hunts on seeds 0-199 stayed at or above 99 % and at most random's median.
LEAN_POWER = 4
#: Most (context, step) pairs kept: bounded memory whatever the spec.
MAX_KEPT = 100_000


def is_refusal(result: Any) -> bool:
    """-errno: the convention of every operation that can refuse (an ioctl's -1 and errno)."""
    return type(result) is int and result < 0


class Refusals:
    """The generated steps refused, and never accepted, with each parameter value, in one hunt."""

    __slots__ = ("refused", "accepted", "counts", "entries", "informed")

    def __init__(self) -> None:
        # parameter name -> value -> [generated steps accepted, refused] in runs with that value
        self.counts: dict[str, dict[Any, list[int]]] = {}
        self.entries = 0
        # the parameters some run with generated steps had: for the others every value's share
        # is the prior alike, and keep() need not look (a 1,000-valued payload such as REQ-14's
        # would cost a walk over its values per schedule)
        self.informed: set[str] = set()
        # (one parameter's (name, value), step)
        self.refused: set[tuple[Hashable, tuple]] = set()
        self.accepted: set[tuple[Hashable, tuple]] = set()

    def learn(self, context: tuple[tuple[str, Any], ...], generated: list[tuple[tuple, Any]]) -> None:
        """What a run of a schedule with parameters ``context`` returned for its generated steps."""
        refusals = sum(is_refusal(result) for _, result in generated)
        for name, value in context:
            per = self.counts.setdefault(name, {})
            c = per.get(value)
            if c is None:
                if self.entries >= MAX_KEPT:
                    continue
                c = per[value] = [0, 0]
                self.entries += 1
            c[0] += len(generated) - refusals
            c[1] += refusals
            if generated:
                self.informed.add(name)
        for step, result in generated:
            kept = self.refused if is_refusal(result) else self.accepted
            for p in context or ((),):
                if len(kept) < MAX_KEPT:
                    kept.add((p, step))

    def keep(self, name: str, value: Any) -> float:
        """How likely a dealt value of schedule parameter ``name`` is kept: the share of generated
        steps the backend accepted with it, against the best of the parameter's values seen so
        far, to the power LEAN_POWER (1.0 for a value not seen yet)."""
        if name not in self.informed:
            return 1.0
        per = self.counts[name]
        mine = per.get(value)
        if mine is None:
            return 1.0
        share = lambda c: (c[0] + 1) / (c[0] + c[1] + 2)  # noqa: E731
        return (share(mine) / max(map(share, per.values()))) ** LEAN_POWER

    def only_refused(self, context: tuple[tuple[str, Any], ...], step: tuple) -> bool:
        """True if, for each of the schedule's parameter values, the step was refused with that
        value and never accepted with it. A step refused only where one parameter has other
        values (HALTED without an irqchip) is not held against it where that parameter has
        this value (with an irqchip), and one observation counts for every schedule sharing
        one parameter value with it: a hunt learns in a handful of schedules, not one per
        combination of values."""
        return all((p, step) in self.refused and (p, step) not in self.accepted for p in context or ((),))
