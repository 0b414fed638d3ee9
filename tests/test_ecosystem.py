"""Fitting in: pytest-xdist, JUnit XML and hypothesis profiles."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from hypothesis import settings

from pytest_kvmconf.profiles import QUICK, THOROUGH
from tests.toy import ARGS, make_project, outcomes

pytest_plugins = ["pytester"]

#: ARGS without the profile, for the profile tests.
BASE = tuple(a for a in ARGS if not a.startswith("--kvm-profile"))


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    make_project(pytester)
    return pytester


def _report(project: pytest.Pytester, name: str) -> dict[str, dict]:
    return {r["id"]: r for r in json.loads((project.path / name).read_text())["guarantees"]}


def test_xdist_gives_the_same_verdicts(project: pytest.Pytester) -> None:
    serial = project.runpytest(*ARGS, "--kvm-backend=toy-broken", "-v", "--kvm-report=serial.json")
    parallel = project.runpytest(*ARGS, "--kvm-backend=toy-broken", "-v", "-n", "2", "--kvm-report=xdist.json")
    assert "2 workers" in parallel.stdout.str()
    assert outcomes(serial) == outcomes(parallel) == {"TOY-01": "PASSED", "TOY-02": "FAILED", "TOY-03": "SKIPPED"}
    one, two = _report(project, "serial.json"), _report(project, "xdist.json")
    # A failure's example count depends on where the random search met it (each process has its
    # own seed); a pass runs the whole budget everywhere.
    def figures(report: dict) -> dict:
        return {k: (r["verdict"], r["reason"], r["examples"] if r["verdict"] == "pass" else None)
                for k, r in report.items()}

    assert figures(one) == figures(two)
    assert two["TOY-01"]["examples"] == 10 and two["TOY-01"]["quote"]  # figures and sentences reach the controller
    # The failure drawing (and its replay command) still comes back from the worker.
    parallel.stdout.fnmatch_lines(["TOY-02 violated: kvm_test_request sees a made request", "*--kvm-replay=TOY-02@*"])


def test_junit_xml_names_cases_by_guarantee_id(project: pytest.Pytester) -> None:
    project.runpytest(*ARGS, "--kvm-backend=toy-broken", "--junitxml=junit.xml")
    cases = {c.get("name"): c for c in ET.parse(project.path / "junit.xml").iter("testcase")}
    assert set(cases) == {"TOY-01", "TOY-02", "TOY-03"}
    props = {p.get("name"): p.get("value") for p in cases["TOY-01"].iter("property")}
    assert props["kvm_guarantee"] == "TOY-01" and props["kvm_examples"] == "10"
    assert float(props["kvm_seconds"]) >= 0
    assert cases["TOY-01"].find("failure") is None
    failure = cases["TOY-02"].find("failure")
    assert failure is not None and "TOY-02 violated" in (failure.text or "")
    skipped = cases["TOY-03"].find("skipped")
    assert skipped is not None and "lacks capability kick" in skipped.get("message", "")


@pytest.mark.parametrize(("args", "ini", "examples"), [
    ((), None, 100),  # hypothesis' default budget
    (("--kvm-profile=quick",), None, 10),
    ((), "quick", 10),
    (("--kvm-profile=default",), "quick", 100),  # the option beats the ini key
])
def test_profile_sets_the_budget(project: pytest.Pytester, args: tuple[str, ...], ini: str | None,
                                 examples: int) -> None:
    if ini is not None:
        project.makepyprojecttoml(f'[tool.pytest.ini_options]\nkvm_profile = "{ini}"\n')
    project.runpytest(*BASE, *args, "--kvm-backend=toy", "-k", "TOY-01", "--kvm-report=r.json")
    assert _report(project, "r.json")["TOY-01"]["examples"] == examples


def test_profiles_are_hypothesis_profiles(project: pytest.Pytester) -> None:
    # In a subprocess: --hypothesis-profile changes hypothesis' global default.
    project.runpytest_subprocess(*BASE, "--hypothesis-profile=kvmconf-quick", "--kvm-backend=toy", "-k", "TOY-01",
                                 "--kvm-report=r.json")
    assert _report(project, "r.json")["TOY-01"]["examples"] == 10


def test_thorough_profile_is_many_examples() -> None:
    assert settings.get_profile(THOROUGH).max_examples >= 1000
    assert settings.get_profile(QUICK).max_examples <= 20


def test_bad_profile_is_a_usage_error(project: pytest.Pytester) -> None:
    project.makepyprojecttoml('[tool.pytest.ini_options]\nkvm_profile = "nightly"\n')
    result = project.runpytest(*BASE, "--kvm-backend=toy")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*kvm_profile = 'nightly' in the ini file: choose one of quick, default, thorough"])
    result = project.runpytest(*BASE, "--kvm-backend=toy", "--kvm-profile=nightly")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
