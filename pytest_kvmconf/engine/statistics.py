"""Statistics of the engine's own searches in hypothesis' format, so that
``--hypothesis-show-statistics`` describes them like a hypothesis run, and their verbose
output (``--hypothesis-verbosity=verbose``): each schedule as it runs."""

from __future__ import annotations

import time
from typing import Any

from hypothesis import Verbosity, settings
from hypothesis.reporting import report
from hypothesis.statistics import note_statistics


class SearchStatistics:
    def __init__(self, s: settings):
        self.settings = s
        self.phases: dict[str, dict[str, Any]] = {}
        self.current: dict[str, Any] | None = None
        self.started = 0.0
        self.failures = 0

    def phase(self, name: str) -> None:
        """Start counting the phase ``name`` (reuse, generate, shrink)."""
        self._close()
        self.current = self.phases.setdefault(name, {
            "test-cases": [], "distinct-failures": self.failures, "shrinks-successful": 0})
        self.started = time.perf_counter()

    def case(self, schedule: Any, failed: bool, seconds: float, kept: bool = False) -> None:
        """One schedule run; ``kept``: a shrink step that was kept."""
        if self.settings.verbosity >= Verbosity.verbose:
            report(f"{'Falsifying' if failed else 'Trying'} example: schedule={schedule!r}")
        if self.current is None:
            return
        self.current["test-cases"].append({"status": "interesting" if failed else "valid",
                                           "runtime": seconds, "drawtime": 0.0, "events": []})
        self.current["shrinks-successful"] += kept

    def failure(self) -> None:
        self.failures = 1
        if self.current is not None:
            self.current["distinct-failures"] = 1

    def _close(self) -> None:
        if self.current is not None:
            self.current["duration-seconds"] = time.perf_counter() - self.started
        self.current = None

    def publish(self, stopped_because: str) -> None:
        """Hand the figures to hypothesis' statistics collector (set by collect.py)."""
        self._close()
        stats: dict[str, Any] = {f"{k}-phase": v for k, v in self.phases.items()}
        stats["stopped-because"] = stopped_because
        note_statistics(stats)  # type: ignore[arg-type]
