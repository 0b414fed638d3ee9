"""Progress of a long search in the terminal: examples done of the budget, per guarantee.

A guarantee that searches for longer than ``--kvm-progress`` seconds (default 5) prints a line
every that many seconds, so a thorough run of one guarantee is not minutes of silence. Lines are
written with pytest's output capture suspended, as pytest's live logging does. Under
pytest-xdist the workers have no terminal, so nothing is shown there.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

DEFAULT_INTERVAL = 5.0


def add_options(group: pytest.OptionGroup) -> None:
    group.addoption("--kvm-progress", dest="kvm_progress", type=float, default=DEFAULT_INTERVAL, metavar="SECONDS",
                    help="print each guarantee's progress (examples done of the budget) every SECONDS while it "
                         f"searches; 0 turns it off (default {DEFAULT_INTERVAL:g})")


class Progress:
    """The ``progress`` callback of engine.explore.explore for one item."""

    def __init__(self, item: pytest.Item, gid: str, budget: int):
        self.item, self.gid, self.budget = item, gid, budget
        self.interval = float(item.config.getoption("kvm_progress", DEFAULT_INTERVAL) or 0)
        self.start = self.last = time.monotonic()
        self.reporter = item.config.pluginmanager.get_plugin("terminalreporter")
        self.capture = item.config.pluginmanager.get_plugin("capturemanager")

    @property
    def enabled(self) -> bool:
        return self.interval > 0 and self.reporter is not None and not hasattr(self.item.config, "workerinput")

    def __call__(self, stats: Any) -> None:
        now = time.monotonic()
        if now - self.last < self.interval:
            return
        self.last = now
        done = stats.examples
        what = f"{done} of {self.budget} examples" if done <= self.budget else \
            f"{done} examples (budget {self.budget}; the rest replay a violation while shrinking it)"
        line = f"  {self.gid}: {what}, {now - self.start:.0f} s"
        if self.capture is not None:
            with self.capture.global_and_fixture_disabled():
                self.reporter.write_line(line)
        else:
            self.reporter.write_line(line)
        self.reporter.currentfspath = None  # the verdict that follows names its file (or test) again
