"""What the terminal shows a user: counts, ids, locations, and hypothesis' own options."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from tests.toy import ARGS, make_project

pytest_plugins = ["pytester"]

SPECS_ROOT = "vcpu-requests.toml"


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    make_project(pytester)
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)


def test_collection_counts_the_guarantees(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--kvm-backend=reference", "-k", "REQ-15", "--kvm-profile=quick")
    out = result.stdout.str()
    count = re.search(r"collected (\d+) items / (\d+) deselected / 1 selected", out)
    assert count is not None, out
    assert int(count[1]) == int(count[2]) + 1 > 40
    assert "collected 0 items" not in out and "-" + count[2] not in out


def test_a_node_id_as_shown_selects_one_guarantee(pytester: pytest.Pytester) -> None:
    # The bundled file lives outside the project: its node id is its name, not a long path.
    result = run(pytester, "--kvm-backend=reference", "--kvm-profile=quick", "-v", f"{SPECS_ROOT}::REQ-15")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"{SPECS_ROOT}::REQ-15 PASSED*"])
    assert "collected 1 item" in result.stdout.str()
    quiet = run(pytester, "--kvm-backend=reference", "--kvm-profile=quick", f"{SPECS_ROOT}::REQ-15")
    quiet.stdout.re_match_lines([rf"^{re.escape(SPECS_ROOT)} \.\s+\[100%\]$"])


def test_a_spec_file_of_the_project_selects_by_its_path(project: pytest.Pytester) -> None:
    result = run(project, *ARGS, "--kvm-backend=toy", "-v", "specs/toy.toml::TOY-01")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["specs/toy.toml::TOY-01 PASSED*"])
    folder = run(project, *ARGS, "--kvm-backend=toy", "specs")
    folder.assert_outcomes(passed=2, skipped=1)


def test_junit_classname_is_the_spec_file(project: pytest.Pytester) -> None:
    run(project, *ARGS, "--kvm-backend=toy", "--junitxml=junit.xml")
    names = {c.get("classname") for c in ET.parse(project.path / "junit.xml").iter("testcase")}
    assert names == {"specs.toy.toml"}


def test_a_skip_points_at_the_guarantee_in_its_spec_file(project: pytest.Pytester) -> None:
    result = run(project, *ARGS, "--kvm-backend=toy", "-rs", "-k", "TOY-03")
    line = 1 + (project.path / "specs" / "toy.toml").read_text().splitlines().index('id = "TOY-03"')
    result.stdout.fnmatch_lines([f"SKIPPED [1] specs/toy.toml:{line}: backend 'toy' lacks capability kick"])
    assert "collect.py" not in result.stdout.str()


def test_hypothesis_statistics_per_guarantee(project: pytest.Pytester) -> None:
    result = run(project, *ARGS, "--kvm-backend=toy", "-k", "TOY-01", "--hypothesis-show-statistics")
    result.stdout.fnmatch_lines(["*= Hypothesis Statistics =*", "specs/toy.toml::TOY-01:",
                                 "*10 passing, 0 failing*", "*Stopped because settings.max_examples=10*"])


def _drawn(result: pytest.RunResult) -> list[str]:
    return [ln for ln in result.outlines if "schedule=Schedule(guarantee='REQ-01'" in ln]


def test_hypothesis_verbosity_and_seed_reach_the_search(pytester: pytest.Pytester) -> None:
    args = ("--kvm-backend=reference", "--kvm-profile=quick", "-k", "REQ-01 and not REQ-01.", "-s",
            "--hypothesis-verbosity=verbose")
    one = run(pytester, *args, "--hypothesis-seed=7")
    drawn = _drawn(one)
    assert len(drawn) >= 5, one.stdout.str()  # each example's schedule, as it runs
    assert _drawn(run(pytester, *args, "--hypothesis-seed=7")) == drawn
    assert _drawn(run(pytester, *args, "--hypothesis-seed=8")) != drawn


def test_the_example_database_replays_the_last_failure_first(project: pytest.Pytester) -> None:
    # hypothesis' own "ci" profile (loaded where the CI variable is set) keeps no database: ask for
    # the default profile, whose database is the one this test is about.
    args = (*ARGS, "-k", "TOY-02", "--hypothesis-show-statistics", "--hypothesis-profile=default")
    first = run(project, *args, "--kvm-backend=toy-broken")
    first.assert_outcomes(failed=1)
    assert "reuse phase" not in first.stdout.str()
    assert (project.path / ".hypothesis").is_dir()
    again = run(project, *args, "--kvm-backend=toy-broken")
    again.stdout.fnmatch_lines(["*during reuse phase*", "*0 passing, 1 failing*"])
    # Keyed per backend too: another backend's run of the same guarantee starts afresh.
    other = run(project, *args, "--kvm-backend=toy")
    assert "reuse phase" not in other.stdout.str()


def test_long_searches_show_their_progress(project: pytest.Pytester) -> None:
    result = run(project, *ARGS, "--kvm-backend=toy", "-k", "TOY-01", "-v", "--kvm-progress=0.000001")
    result.stdout.fnmatch_lines(["  TOY-01: * of 10 examples, * s", "specs/toy.toml::TOY-01 PASSED*"])
    assert "TOY-01: 10 of 10 examples" in result.stdout.str()
    quiet = run(project, *ARGS, "--kvm-backend=toy", "-k", "TOY-01", "--kvm-progress=0")
    assert "of 10 examples" not in quiet.stdout.str()
