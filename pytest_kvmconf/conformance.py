"""What a run says about a backend, for people who were not watching it.

* ``--kvm-report=PATH`` writes PATH as JSON and a Markdown table beside it
  (PATH with the suffix ``.md``): each guarantee that ran, with its document
  sentence, its verdict on the chosen backend (pass, fail, skip with the
  reason, expected failure, unexpected pass, error), the schedules explored
  and the time taken.
* ``--kvm-list`` prints the catalogue and what the chosen backend can check
  of it, without running anything.

Results travel in the test reports' ``user_properties`` (``kvm_guarantee``,
``kvm_examples``, ``kvm_seconds``), so they also reach JUnit XML and survive
pytest-xdist, where the reports are made on the workers and the report file
is written by the controller.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from . import __version__
from .backend import memory_skip_reason, skip_reason
from .expectations import NO_LONGER, plugin_of
from .html_report import page
from .session import RunState, state_of
from .spec.loader import SpecError, load_file, spec_files
from .spec.model import Guarantee

PASS, FAIL, SKIP, XFAIL, XPASS, ERROR = "pass", "fail", "skip", "expected failure", "unexpected pass", "error"
VERDICTS = (PASS, FAIL, SKIP, XFAIL, XPASS, ERROR)
PROP_ID, PROP_EXAMPLES, PROP_SECONDS = "kvm_guarantee", "kvm_examples", "kvm_seconds"
PROP_COVERAGE, PROP_VIOLATION = "kvm_coverage", "kvm_violation"


def add_options(group: pytest.OptionGroup) -> None:
    group.addoption("--kvm-report", dest="kvm_report", default=None, metavar="PATH",
                    help="write the conformance report: PATH as JSON and a Markdown table beside it "
                         "(PATH with suffix .md)")
    group.addoption("--kvm-list", dest="kvm_list", action="store_true",
                    help="print the catalogue of guarantees and what the chosen backend can check "
                         "(or why not), without running anything")


def report_paths(config: pytest.Config) -> tuple[Path, Path] | None:
    value = config.getoption("kvm_report", None)
    if not value:
        return None
    path = Path(config.invocation_params.dir, value).resolve()
    if path.suffix.lower() == ".md":
        raise pytest.UsageError(f"--kvm-report={value}: give the JSON path (e.g. report.json); "
                                "the Markdown table is written beside it with the suffix .md")
    return path, path.with_suffix(".md")


def configure(config: pytest.Config) -> None:
    config.pluginmanager.register(RecordPlugin(), "kvmconf-record")
    paths = report_paths(config)
    # Under xdist the workers only record; the controller writes the files.
    # --kvm-list runs nothing, so it reports nothing.
    if paths is not None and not hasattr(config, "workerinput") and not config.getoption("kvm_list", False):
        config.pluginmanager.register(ConformancePlugin(config, *paths), "kvmconf-conformance")


def why_not(g: Guarantee, run: RunState) -> str | None:
    """Why the chosen backend cannot check ``g`` (the reason the item skips with), or None."""
    if not g.versions.contains(run.doc_version):
        return (f"{g.id} is stated by the document text {g.versions}, "
                f"not by {run.doc_version} (choose it with --kvm-doc-version)")
    backend = run.backend()
    reason = skip_reason(backend, g.needs, g.arch, run.doc_version)
    if reason is None and hasattr(backend, "skip_reason"):
        reason = backend.skip_reason(g)
    return reason or memory_skip_reason(backend, g.id, g.memory_models, run.memory_model, run.free)


class RecordPlugin:
    """Puts the guarantee id and its search figures into every report of a guarantee."""

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
        g = getattr(item, "guarantee", None)
        if g is not None:  # before the report is made, so the properties are in it
            props = item.user_properties
            if not any(name == PROP_ID for name, _ in props):
                props.append((PROP_ID, g.id))
            stats = getattr(item, "stats", None)
            if call.when == "call" and stats is not None:
                props.append((PROP_EXAMPLES, stats.examples))
                props.append((PROP_SECONDS, round(stats.seconds, 3)))
        outcome = yield
        # What was explored rides on the report itself (as hypothesis' statistics do), not in
        # user_properties: it reaches the controller under xdist but stays out of JUnit XML.
        if call.when == "call" and g is not None:
            report = outcome.get_result()
            report.__dict__[PROP_COVERAGE] = getattr(item, "coverage", None)
            report.__dict__[PROP_VIOLATION] = getattr(item, "violation", None)


@dataclass
class Result:
    id: str
    verdict: str = PASS
    reason: str = ""
    detail: str = ""
    examples: int | None = None
    seconds: float = 0.0
    phases: dict[str, str] = field(default_factory=dict)
    coverage: dict[str, Any] | None = None
    violation: dict[str, Any] | None = None


def _skip_text(report: pytest.TestReport) -> str:
    lr = report.longrepr
    text = lr[2] if isinstance(lr, tuple) and len(lr) == 3 else str(lr)
    return text.removeprefix("Skipped: ")


def _failure_summary(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:  # the violation report's own summary line (report.py)
        if ln.startswith(("what went wrong", NO_LONGER)):
            return ln
    for ln in reversed(lines):  # a plain traceback ends with the exception
        if ln.startswith("E "):
            return ln[2:].strip()
    return lines[0] if lines else ""


class ConformancePlugin:
    """Gathers each guarantee's verdict from the reports and writes the report files."""

    def __init__(self, config: pytest.Config, json_path: Path, md_path: Path):
        self.config, self.json_path, self.md_path = config, json_path, md_path
        self.html_path = json_path.with_suffix(".html")
        self.results: dict[str, Result] = {}
        self.started = _dt.datetime.now(_dt.timezone.utc)
        self.written = False

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        gid = props.get(PROP_ID)
        if gid is None:
            return
        r = self.results.setdefault(report.nodeid, Result(str(gid)))
        r.phases[report.when] = report.outcome
        if report.when == "call":
            r.seconds = round(report.duration, 3)
            r.coverage = report.__dict__.get(PROP_COVERAGE)
            r.violation = report.__dict__.get(PROP_VIOLATION)
            if PROP_EXAMPLES in props:
                r.examples = int(props[PROP_EXAMPLES])
        wasxfail = getattr(report, "wasxfail", None)
        if report.when == "setup" and report.failed:
            r.verdict, r.reason, r.detail = ERROR, _failure_summary(report.longreprtext), report.longreprtext
        elif report.when in ("setup", "call") and report.skipped:
            if wasxfail is not None:
                r.verdict, r.reason = XFAIL, wasxfail
                r.detail = report.longreprtext
            else:
                r.verdict, r.reason = SKIP, _skip_text(report)
        elif report.when == "call" and report.passed:
            r.verdict, r.reason = (XPASS, wasxfail) if wasxfail is not None else (PASS, "")
        elif report.when == "call" and report.failed:
            text = report.longreprtext
            xpass = text.startswith((NO_LONGER, "[XPASS"))
            r.verdict, r.reason, r.detail = (XPASS if xpass else FAIL), _failure_summary(text), text
        elif report.when == "teardown" and report.failed and r.verdict != FAIL:
            r.verdict, r.reason, r.detail = ERROR, _failure_summary(report.longreprtext), report.longreprtext

    def catalogue(self) -> dict[str, Guarantee]:
        out: dict[str, Guarantee] = {}
        for path in spec_files(state_of(self.config).spec_paths):
            try:
                out.update((g.id, g) for g in load_file(path))
            except SpecError:
                continue  # already reported as a collection error
        return out

    def document(self) -> dict[str, Any]:
        run = state_of(self.config)
        backend = run.backend()
        known = self.catalogue()
        order = {gid: i for i, gid in enumerate(known)}
        rows = []
        for r in sorted(self.results.values(), key=lambda r: (order.get(r.id, len(order)), r.id)):
            g = known.get(r.id)
            rows.append({
                "id": r.id,
                "title": g.title if g else "",
                "area": g.area if g else "",
                "document": g.document if g else "",
                "section": g.section if g else "",
                "quote": g.quote if g else "",
                "versions": str(g.versions) if g else "",
                "verdict": r.verdict,
                "reason": r.reason,
                "examples": r.examples,
                "seconds": r.seconds,
                "detail": r.detail,
                "coverage": r.coverage,
                "violation": r.violation,
            })
        finished = _dt.datetime.now(_dt.timezone.utc)
        from .profiles import describe, profile_name

        return {
            "tool": "pytest-kvmconf",
            "version": __version__,
            # As the user named it (--kvm-backend / kvm_backend), and as the backend calls itself.
            "backend": {"name": run.backend_name, "backend_name": backend.name,
                        "description": getattr(backend, "description", "")},
            "doc_version": run.doc_version,
            "profile": profile_name(self.config),
            "profile_in_force": describe(self.config),
            "schedule": "free" if run.free else "controlled",
            "command": ["pytest", *self.config.invocation_params.args],
            "started": self.started.isoformat(timespec="seconds"),
            "seconds": round((finished - self.started).total_seconds(), 3),
            "summary": {v: sum(1 for row in rows if row["verdict"] == v) for v in VERDICTS},
            "guarantees": rows,
        }

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        doc = self.document()
        self.json_path.parent.mkdir(parents=True, exist_ok=True)
        self.json_path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        self.md_path.write_text(markdown(doc), encoding="utf-8")
        self.html_path.write_text(page(doc), encoding="utf-8")
        self.written = True

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.written:
            terminalreporter.write_line(f"kvmconf conformance report: {self.json_path} and {self.md_path}")
            terminalreporter.write_line(f"kvmconf explored, with each violation's timeline: {self.html_path}")


def _cell(text: str) -> str:
    """Table-cell text: one line, no raw HTML, no column breaks."""
    return html.escape(" ".join(str(text).split()), quote=False).replace("|", "\\|")


def markdown(doc: Mapping[str, Any]) -> str:
    summary = ", ".join(f"{n} {v}" for v, n in doc["summary"].items() if n)
    out = [
        f"# KVM conformance of backend `{doc['backend']['name']}`",
        "",
        *([f"(it calls itself `{_cell(doc['backend']['backend_name'])}`)", ""]
          if doc["backend"]["backend_name"] != doc["backend"]["name"] else []),
        f"{_cell(doc['backend']['description'])}",
        "",
        f"Document text {doc['doc_version']}, search profile {doc['profile_in_force']}, "
        f"{doc['schedule']} schedules, run started "
        f"{doc['started']} ({doc['seconds']} s), pytest-kvmconf {doc['version']}.",
        "",
        f"{len(doc['guarantees'])} guarantees: {summary or 'none ran'}.",
        "",
        "| Guarantee | Document sentence | Verdict | Examples | Time (s) |",
        "|---|---|---|---:|---:|",
    ]
    for row in doc["guarantees"]:
        verdict = f"**{row['verdict']}**" if row["verdict"] in (FAIL, XPASS, ERROR) else row["verdict"]
        if row["reason"]:
            verdict += f": {_cell(row['reason'])}"
        where = f"<br>_{_cell(row['document'])}, {_cell(row['section'])}; text {row['versions']}_" \
            if row["document"] else ""
        out.append(
            f"| **{row['id']}** {_cell(row['title'])} | “{_cell(row['quote'])}”{where} | {verdict} | "
            f"{'' if row['examples'] is None else row['examples']} | {row['seconds']:.2f} |")
    out += ["", "Examples: schedules run, shrinking of a violation included (blank when none ran, e.g. a replay). "
                "Time: seconds the guarantee's test took."]
    explored = [row for row in doc["guarantees"] if row.get("coverage")]
    if explored:
        out += ["", "## What was explored", "",
                "| Guarantee | Examples | Distinct interleavings | Examples to the first violation | "
                "`exists` reached after | Drawing / running (s) |",
                "|---|---:|---:|---:|---|---:|"]
        for row in explored:
            c = row["coverage"]
            reached = "; ".join(f"`{_cell(e['condition'])}`: " + ("not reached" if e["example"] is None
                                                                   else f"{e['example']} examples")
                                for e in c["exists"]) or "—"
            first = "—" if c["first_violation"] is None else str(c["first_violation"])
            out.append(f"| {row['id']} | {c['examples']} | {c['interleavings']} | {first} | {reached} | "
                       f"{c['seconds_drawing']:.2f} / {c['seconds_running']:.2f} |")
        out += ["", "Distinct interleavings: distinct orders in which the threads took their scheduling steps "
                    "(orders that differ only in independent steps count apart). Examples to the first violation: "
                    "before shrinking. Drawing: hypothesis' own time (generation, shrinking, bookkeeping); "
                    "running: time inside the runs. The HTML page beside this file charts the interleavings "
                    "over the examples and draws each violation's per-thread timeline."]
    return "\n".join(out) + "\n"


# --kvm-list ---------------------------------------------------------------


def pytest_cmdline_main(config: pytest.Config) -> int | None:
    if not config.getoption("kvm_list", False):
        return None
    from _pytest.main import wrap_session

    return wrap_session(config, _list_main)


def _list_main(config: pytest.Config, session: pytest.Session) -> int:
    session.perform_collect()
    if session.testsfailed:  # spec errors: reported like any collection error
        n = session.testsfailed
        raise session.Interrupted(f"{n} error{'s' if n > 1 else ''} during collection; nothing listed")
    tw = config.get_terminal_writer()
    run = state_of(config)
    expected = plugin_of(config)
    items = [i for i in session.items if getattr(i, "guarantee", None) is not None]
    tw.line(f"kvmconf catalogue: {len(items)} guarantees; backend {run.backend_name}, "
            f"document text {run.doc_version}")
    checkable = 0
    for item in items:
        g: Guarantee = item.guarantee  # type: ignore[attr-defined]
        reason = why_not(g, run)
        exp = expected.lookup(g.id) if expected is not None and reason is None else None
        status = "skip" if reason else ("xfail" if exp else "check")
        checkable += reason is None
        tw.line(f"{g.id:<10} {g.area:<9} {str(g.versions):<11} {status:<6} {g.title}")
        if reason:
            tw.line(f"{'':<10} skip: {reason}")
        elif exp:
            tw.line(f"{'':<10} expected failure ({exp.file.name}): {exp.reason}")
    tw.line(f"{checkable} of {len(items)} can be checked on backend {run.backend_name}")
    return pytest.ExitCode.OK
