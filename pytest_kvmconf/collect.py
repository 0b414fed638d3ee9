"""Spec files become pytest collectors; each guarantee becomes a test item."""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from . import replay as replays
from .backend_check import BackendWarning
from .conformance import why_not
from .engine import guard
from .engine.explore import CouldNotDecide, NothingReached, ViolationFound, explore, replay
from .engine.runner import RunOptions
from .errors import BackendFault, EvalError, ExprError, Finding, KvmconfError, ReplayError
from .profiles import base_settings, search
from .progress import Progress
from .report import violation_record, violation_report
from .session import RunState, state_of
from .spec.loader import SpecError, load_file
from .spec.model import Guarantee


class SpecFile(pytest.File):
    def collect(self) -> list[GuaranteeItem]:
        run = state_of(self.config)
        items = []
        guarantees = load_file(self.path)
        for area in {g.area for g in guarantees}:  # a user's spec file may bring a new area
            self.config.addinivalue_line("markers", f"{area}: guarantees of the {area} document area")
        for g in guarantees:
            if g.id in run.seen_ids and run.seen_ids[g.id] != self.path:
                raise SpecError(self.path, g.id, "id",
                                f"id {g.id} is already used in {run.seen_ids[g.id]}; ids must be unique")
            run.seen_ids[g.id] = self.path
            item = GuaranteeItem.from_parent(self, name=g.id, guarantee=g)
            for m in g.markers:
                item.add_marker(m)
            items.append(item)
        return items

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, KvmconfError):
            return _error_text(excinfo.value)
        return super().repr_failure(excinfo)


class GuaranteeItem(pytest.Item):
    def __init__(self, *, guarantee: Guarantee, **kwargs: Any):
        super().__init__(**kwargs)
        self.guarantee = guarantee
        self.stats: Any = None
        #: what the search explored and the violation's timeline, as plain data for the report
        self.coverage: dict[str, Any] | None = None
        self.violation: dict[str, Any] | None = None

    def runtest(self) -> None:
        run: RunState = state_of(self.config)
        g = self.guarantee
        backend = run.backend()
        reason = why_not(g, run)
        if reason:
            # The skip points at the guarantee in its spec file, not at this line.
            raise pytest.skip.Exception(reason, _use_item_location=True)
        left: list[Any] = []
        try:
            with guard.watching(g.id, backend) as left:
                self._run(run, g, backend)
        finally:
            if left:
                frames = sys._current_frames()
                warnings.warn(BackendWarning(
                    f"backend {run.backend_name} left {len(left)} thread(s) of its own running after {g.id}: "
                    f"{'; '.join(x.describe(frames) for x in left)}; pytest will not wait for them at exit"),
                    stacklevel=1)

    def _run(self, run: RunState, g: Guarantee, backend: Any) -> None:
        options = RunOptions(run.doc_version, free=run.free, point_timeout=run.point_timeout,
                             memory_model=run.memory_model)
        if run.replay is not None:
            try:
                replay(g, backend, options, run.replay.schedule)
            except CouldNotDecide as exc:  # a live backend under load: neither a pass nor a failure
                pytest.skip(str(exc))
            return
        # hypothesis' own pytest plugin only sees test functions: give it this item's statistics
        # (--hypothesis-show-statistics) and its verbose output (--hypothesis-verbosity).
        from hypothesis.reporting import default as default_reporter
        from hypothesis.reporting import with_reporter
        from hypothesis.statistics import collector, describe_statistics

        lines: list[str] = []
        show_now = self.config.getoption("capture", "fd") == "no"

        def report(text: Any) -> None:
            lines.append(str(text))
            if show_now:
                default_reporter(text)

        def note_statistics(stats: dict[str, Any]) -> None:
            stats["nodeid"] = self.nodeid
            self.hypothesis_statistics = describe_statistics(stats)

        base = base_settings(self.config)
        progress = Progress(self, g.id, (base or settings.default).max_examples)
        try:
            with collector.with_value(note_statistics), with_reporter(report):
                self.stats = explore(g, backend, options, base=base,
                                     seed=self.config.getoption("hypothesis_seed", None),
                                     search=search(self.config),
                                     progress=progress if progress.enabled else None)
        except (ViolationFound, NothingReached) as exc:
            self.stats = exc.stats
            if isinstance(exc, ViolationFound):
                self.violation = violation_record(exc.outcome)
            raise
        except CouldNotDecide as exc:  # a live backend under load: neither a pass nor a failure
            self.stats = exc.stats
            pytest.skip(str(exc))
        finally:
            if lines:
                self.hypothesis_report_information = "\n".join(lines)
            if self.stats is not None:
                self.coverage = self.stats.coverage.summary(g, self.stats.examples, self.stats.seconds)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        run = state_of(self.config)
        exc = excinfo.value
        if isinstance(exc, ViolationFound):
            cmd = replays.command(
                exc.outcome.guarantee, exc.outcome.schedule, base_args=run.base_args, backend=run.backend_name,
                invocation_dir=run.invocation_dir, environ=run.environ, doc_version=run.doc_version,
                spec_folders=[p for p in run.spec_paths if p != run.bundled_folder],
                bundled=run.bundled_folder is not None, free=run.free, point_timeout=run.point_timeout,
                memory_model=run.memory_model)
            text = violation_report(exc.outcome, run.doc_version, cmd, free=run.free)
            return f"{text}\n{exc.note}" if exc.note else text
        if isinstance(exc, KvmconfError) and not isinstance(exc, Finding):
            return _error_text(exc)
        if isinstance(exc, NothingReached):
            g = exc.guarantee
            return (f"{g.id} not shown: {g.title}\n  \"{g.quote}\"\n\n{exc}\n"
                    "An existence check needs some schedule to reach the outcome; none of the "
                    "explored ones did. Raise the budget with --hypothesis-profile or check that "
                    "the backend really models the steps the document describes.")
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, self.guarantee_line(), f"{self.guarantee.id}: {self.guarantee.title}"

    def guarantee_line(self) -> int | None:
        """The 0-based line of ``id = "<id>"`` in the spec file, where a skip points."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError:
            return None
        m = re.search(rf'^\s*id\s*=\s*["\']{re.escape(self.guarantee.id)}["\']', text, re.M)
        return None if m is None else text.count("\n", 0, m.start())


def _error_text(exc: KvmconfError) -> str:
    """One paragraph, no traceback: the message already names the file, guarantee and key, or
    the backend and its method."""
    kind = ("spec error" if isinstance(exc, (SpecError, ExprError, EvalError)) else
            "replay error" if isinstance(exc, ReplayError) else
            "backend error" if isinstance(exc, BackendFault) else "error")
    return f"{kind}: {exc}"

