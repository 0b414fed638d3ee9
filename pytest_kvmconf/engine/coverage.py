"""What a search explored: the figures a report shows beside its verdict.

* schedules run (hypothesis' examples, shrinking replays included);
* distinct interleavings: distinct orders in which the threads took their scheduling steps. The
  engine does not know which steps touch the same state, so two orders that differ only in
  independent steps count twice: an upper bound on the interleavings that differ in effect;
* for each ``exists`` check, the example at which it was first reached;
* the examples to the first violation, before hypothesis shrinks it;
* the time inside the runs, the rest of the search's time being hypothesis drawing, shrinking
  and its database.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..spec.model import Guarantee

#: Points kept of the coverage curve (the report's chart needs no more).
CURVE_POINTS = 60


@dataclass
class Coverage:
    schedules: int = 0
    running: float = 0.0
    running_cpu: float = 0.0
    first_violation: int | None = None
    reached_at: dict[int, int] = field(default_factory=dict)
    orders: set[int] = field(default_factory=set)
    #: (examples, distinct interleavings) each time a new one appeared
    curve: list[tuple[int, int]] = field(default_factory=list)

    def run(self, example: int, outcome_of: Any) -> Any:
        """Call ``outcome_of()`` (one run of a schedule), time it and record what it showed."""
        start, cpu = time.perf_counter(), time.process_time()
        try:
            outcome = outcome_of()
        finally:
            self.running += time.perf_counter() - start
            self.running_cpu += time.process_time() - cpu
        self.schedules += 1
        order = hash(tuple(e.thread for e in outcome.timeline))
        if order not in self.orders:
            self.orders.add(order)
            self.curve.append((example, len(self.orders)))
        for i in outcome.reached:
            self.reached_at.setdefault(i, example)
        if outcome.violation is not None and self.first_violation is None:
            self.first_violation = example
        return outcome

    def summary(self, g: Guarantee, examples: int, seconds: float) -> dict[str, Any]:
        """Plain data for the report (JSON, Markdown and HTML)."""
        step = max(1, len(self.curve) // CURVE_POINTS)
        curve = self.curve[::step]
        if self.curve and curve[-1] != self.curve[-1]:
            curve.append(self.curve[-1])
        if curve and curve[-1][0] < examples:
            curve.append((examples, len(self.orders)))
        return {
            "examples": examples,
            "schedules": self.schedules,
            "interleavings": len(self.orders),
            "first_violation": self.first_violation,
            "exists": [{"condition": str(c.expr), "example": self.reached_at.get(i)}
                       for i, c in enumerate(g.checks) if c.kind == "exists"],
            "seconds_running": round(self.running, 3),
            "seconds_drawing": round(max(seconds - self.running, 0.0), 3),
            "curve": [list(p) for p in curve],
        }
