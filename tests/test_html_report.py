"""What was explored, in --kvm-report's JSON, Markdown and HTML page; the page checked in a real browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from pytest_kvmconf.html_report import page
from tests.toy import ARGS, make_project

pytest_plugins = ["pytester"]

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


@pytest.fixture
def report(pytester: pytest.Pytester) -> Path:
    make_project(pytester)
    result = pytester.runpytest(*ARGS, "--kvm-backend=toy-broken", "--kvm-report=out/r.json")
    assert (pytester.path / "out" / "r.html").is_file(), result.stdout.str()
    return pytester.path / "out" / "r.json"


def test_report_says_what_was_explored(report: Path) -> None:
    rows = {r["id"]: r for r in json.loads(report.read_text())["guarantees"]}
    ok, bad, skipped = rows["TOY-01"]["coverage"], rows["TOY-02"]["coverage"], rows["TOY-03"]
    assert ok["examples"] == 10 and ok["schedules"] == 10 and ok["interleavings"] == 1  # one thread, one order
    assert ok["first_violation"] is None and ok["exists"] == []
    assert ok["seconds_running"] > 0 and ok["seconds_drawing"] >= 0 and ok["curve"][-1] == [10, 1]
    assert bad["first_violation"] == 1  # every schedule breaks TOY-02: the first one did
    assert rows["TOY-02"]["violation"]["threads"] == ["requester"]
    assert [e["thread"] for e in rows["TOY-02"]["violation"]["timeline"]] == ["requester"] * 4
    assert skipped["coverage"] is None and skipped["violation"] is None
    md = report.with_suffix(".md").read_text()
    assert "| Guarantee | Examples | Distinct interleavings | Examples to the first violation |" in md
    assert "| TOY-02 | " in md


def test_page_keeps_its_data_inert() -> None:
    text = page({"backend": {"name": "a</script><script>alert(1)</script>"}, "guarantees": []})
    assert text.count("<script") == 2 and "\\u003c/script>" in text


def browser() -> str | None:
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


@pytest.mark.skipif(browser() is None, reason="no Chromium or Chrome on PATH (Debian: apt-get install chromium); "
                                              "the HTML report's rendering is checked only in a real browser")
def test_html_page_renders_in_a_headless_browser(report: Path) -> None:
    with tempfile.TemporaryDirectory() as profile:
        # No background connections: on a closed network they are refused, many at a time.
        dom = subprocess.run([browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                              "--no-first-run", "--disable-background-networking", "--disable-component-update",
                              "--disable-sync", f"--user-data-dir={profile}", "--dump-dom",
                              report.with_suffix(".html").as_uri()],
                             capture_output=True, text=True, timeout=180).stdout
    body = re.search(r"<body([^>]*)>", dom)
    assert body is not None and 'data-rendered="3"' in body[1] and "data-error" not in body[1], body
    assert dom.count('class="guarantee"') == 3
    toy2 = dom.split('data-id="TOY-02"')[1].split('class="guarantee"')[0]
    assert 'class="timeline"' in toy2 and "<th>requester</th>" in toy2 and "kvm_test_request" in toy2
    toy1 = dom.split('data-id="TOY-01"')[1].split('class="guarantee"')[0]
    assert "<polyline" in toy1 and 'class="curve"' in toy1 and "10 examples" in toy1
