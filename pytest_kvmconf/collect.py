"""Spec files become pytest collectors; each guarantee becomes a test item."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .backend import skip_reason
from .engine.explore import NothingReached, ViolationFound, explore, replay
from .engine.runner import RunOptions
from .engine.schedule import Schedule
from .profiles import base_settings
from .report import replay_command, violation_report
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
        if isinstance(excinfo.value, SpecError):
            return f"spec error: {excinfo.value}"
        return super().repr_failure(excinfo)


class GuaranteeItem(pytest.Item):
    def __init__(self, *, guarantee: Guarantee, **kwargs: Any):
        super().__init__(**kwargs)
        self.guarantee = guarantee
        self.stats: Any = None

    def runtest(self) -> None:
        run: RunState = state_of(self.config)
        g = self.guarantee
        if not g.versions.contains(run.doc_version):
            pytest.skip(f"{g.id} is stated by the document text {g.versions}, "
                        f"not by {run.doc_version} (choose it with --kvm-doc-version)")
        backend = run.backend()
        reason = skip_reason(backend, g.needs, g.arch, run.doc_version)
        if reason is None and hasattr(backend, "skip_reason"):
            reason = backend.skip_reason(g)  # a backend's own, finer reason (no /dev/kvm, ...)
        if reason:
            pytest.skip(reason)
        options = RunOptions(run.doc_version, free=run.free, point_timeout=run.point_timeout)
        if run.replay is not None:
            replay(g, backend, options, run.replay)
            return
        try:
            self.stats = explore(g, backend, options, base=base_settings(self.config))
        except (ViolationFound, NothingReached) as exc:
            self.stats = exc.stats
            raise

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        run = state_of(self.config)
        exc = excinfo.value
        if isinstance(exc, ViolationFound):
            cmd = replay_command(exc.outcome, run.base_args, run.backend_name, run.invocation_dir)
            return violation_report(exc.outcome, run.doc_version, cmd, free=run.free)
        if isinstance(exc, NothingReached):
            g = exc.guarantee
            return (f"{g.id} not shown: {g.title}\n  \"{g.quote}\"\n\n{exc}\n"
                    "An existence check needs some schedule to reach the outcome; none of the "
                    "explored ones did. Raise the budget with --hypothesis-profile or check that "
                    "the backend really models the steps the document describes.")
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"{self.guarantee.id}: {self.guarantee.title}"


def replay_schedule(text: str) -> Schedule:
    return Schedule.decode(text)
