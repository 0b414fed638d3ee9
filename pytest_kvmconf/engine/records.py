"""What a run produces, as plain data: the timeline's rows, a violation, the outcome.

Data only (no behaviour, no engine imports), so that the runner, lockdep, the
explorer and the report can all speak of it without importing one another.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..spec.model import Check, Guarantee
from .schedule import Schedule


@dataclass(frozen=True)
class Entry:
    """One advance of one thread: the timeline's row."""

    index: int
    thread: str
    texts: tuple[str, ...]


@dataclass
class Violation:
    #: always, final, never, deadlock, livelock, error, hang, backend
    kind: str
    message: str
    check: Check | None = None
    at: int | None = None  # timeline index where an `always` check failed
    #: the names the failed check was judged with, for explain.py's sub-expression values
    env: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)


@dataclass
class Outcome:
    guarantee: Guarantee
    schedule: Schedule
    params: dict[str, Any]
    threads: list[str]
    timeline: list[Entry]
    final_state: Mapping[str, Any] | None
    violation: Violation | None = None
    #: indices of `exists` checks this schedule satisfied.
    reached: set[int] = field(default_factory=set)
    positions: list[str] = field(default_factory=list)
    #: why a live backend could not decide this example (its bound on the kernel's evidence
    #: was exceeded); such an outcome is neither a pass nor a violation.
    undecided: str | None = None
    #: (PlannedStep.generated, result) of each generated step that returned, in order: what a
    #: search learns from (engine/refused.py)
    generated: list[tuple[tuple, Any]] = field(default_factory=list)
