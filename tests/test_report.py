"""--kvm-report (JSON + Markdown) and --kvm-list, on the toy project of tests/toy.py."""

from __future__ import annotations

import json

import pytest

from tests.toy import ARGS, make_project, outcomes

pytest_plugins = ["pytester"]


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    make_project(pytester)
    return pytester


def test_report_has_every_verdict_sentence_and_figures(project: pytest.Pytester) -> None:
    result = project.runpytest(*ARGS, "--kvm-backend=toy-broken", "--kvm-report=out/report.json", "-v")
    assert outcomes(result) == {"TOY-01": "PASSED", "TOY-02": "FAILED", "TOY-03": "SKIPPED"}
    json_path, md_path = project.path / "out" / "report.json", project.path / "out" / "report.md"
    result.stdout.fnmatch_lines([f"kvmconf conformance report: {json_path} and {md_path}"])
    doc = json.loads(json_path.read_text())
    assert doc["backend"]["name"] == "toy-broken"
    assert doc["doc_version"] == "6.18" and doc["profile"] == "quick"
    assert doc["command"][0] == "pytest" and "--kvm-backend=toy-broken" in doc["command"]
    assert doc["summary"] == {"pass": 1, "fail": 1, "skip": 1, "expected failure": 0,
                              "unexpected pass": 0, "error": 0}
    rows = {r["id"]: r for r in doc["guarantees"]}
    assert list(rows) == ["TOY-01", "TOY-02", "TOY-03"]  # catalogue order
    ok, bad, skipped = rows["TOY-01"], rows["TOY-02"], rows["TOY-03"]
    assert ok["verdict"] == "pass" and ok["examples"] == 10 and ok["seconds"] > 0
    assert ok["quote"] == "Make request @req of VCPU @vcpu." and ok["title"] == "A made request is pending"
    assert ok["document"] == "vcpu-requests.rst" and ok["section"] == "Overview" and ok["versions"] == "4.13+"
    assert bad["verdict"] == "fail" and "kvm_test_request missed a pending request" in bad["reason"]
    assert "replay exactly this schedule" in bad["detail"]
    assert skipped["verdict"] == "skip" and skipped["reason"] == "backend 'toy-broken' lacks capability kick"
    md = md_path.read_text()
    assert "# KVM conformance of backend `toy-broken`" in md
    assert "3 guarantees: 1 pass, 1 fail, 1 skip." in md
    assert ("| **TOY-01** A made request is pending | “Make request @req of VCPU @vcpu.”<br>_vcpu-requests.rst, "
            "Overview; text 4.13+_ | pass | 10 |") in md
    assert "| **fail**: what went wrong (final): kvm_test_request missed a pending request |" in md
    assert "| skip: backend 'toy-broken' lacks capability kick |  |" in md


def test_report_with_selection_lists_only_what_ran(project: pytest.Pytester) -> None:
    project.runpytest(*ARGS, "--kvm-backend=toy", "--kvm-report=r.json", "-k", "TOY-01")
    doc = json.loads((project.path / "r.json").read_text())
    assert [r["id"] for r in doc["guarantees"]] == ["TOY-01"]
    assert doc["summary"]["pass"] == 1


def test_markdown_cells_cannot_break_the_table(project: pytest.Pytester) -> None:
    spec = (project.path / "specs" / "toy.toml")
    spec.write_text(spec.read_text().replace('"Make request @req of VCPU @vcpu."',
                                             '"a | b <tag>\\n next line"'))
    project.runpytest(*ARGS, "--kvm-backend=toy", "--kvm-report=r.json", "-k", "TOY-01")
    md = (project.path / "r.md").read_text()
    assert "“a \\| b &lt;tag&gt; next line”" in md


def test_report_path_must_be_the_json_one(project: pytest.Pytester) -> None:
    result = project.runpytest(*ARGS, "--kvm-backend=toy", "--kvm-report=report.md")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--kvm-report=report.md: give the JSON path*"])


def test_list_prints_the_catalogue_without_running(project: pytest.Pytester) -> None:
    (project.path / "expect.toml").write_text('[[violation]]\nid = "TOY-02"\nreason = "test_bit is a stub"\n')
    result = project.runpytest(*ARGS, "--kvm-backend=toy-broken", "--kvm-list", "--kvm-expect=expect.toml",
                               "--kvm-report=never.json")
    assert result.ret == 0
    result.stdout.fnmatch_lines([
        "kvmconf catalogue: 3 guarantees; backend toy-broken, document text 6.18",
        "TOY-01     toy       4.13+       check  A made request is pending",
        "TOY-02     toy       4.13+       xfail  kvm_test_request sees a made request",
        "           expected failure (expect.toml): test_bit is a stub",
        "TOY-03     toy       4.13+       skip   A kick of a vCPU outside guest mode does nothing",
        "           skip: backend 'toy-broken' lacks capability kick",
        "2 of 3 can be checked on backend toy-broken",
    ])
    assert "PASSED" not in result.stdout.str() and "passed" not in result.stdout.str()
    assert not (project.path / "never.json").exists()


def test_list_skip_reasons_are_the_run_skip_reasons(project: pytest.Pytester) -> None:
    # --kvm-list computes skip reasons without running; they must stay the ones a run gives.
    listed = project.runpytest(*ARGS, "--kvm-backend=toy", "--kvm-list", "--kvm-doc-version=4.13")
    reason = next(ln.strip().removeprefix("skip: ") for ln in listed.outlines if ln.strip().startswith("skip:"))
    ran = project.runpytest(*ARGS, "--kvm-backend=toy", "--kvm-doc-version=4.13", "-rs", "-k", "TOY-03")
    ran.stdout.fnmatch_lines([f"SKIPPED * {reason}"])


def test_list_reports_spec_errors(project: pytest.Pytester) -> None:
    (project.path / "specs" / "bad.toml").write_text('[document]\nfile = "x.rst"\narea = "toy"\n')
    result = project.runpytest(*ARGS, "--kvm-backend=toy", "--kvm-list")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert "bad.toml: key guarantee: at least one [[guarantee]] is required" in result.stdout.str()
    assert "nothing listed" in result.stdout.str() and "TOY-01" not in result.stdout.str()


def test_report_names_the_backend_as_given_and_the_profile_in_force(project: pytest.Pytester) -> None:
    project.makepyfile(factory="from toy_backend import BrokenToyBackend\n\ndef make():\n"
                               "    return BrokenToyBackend()\n")
    base = tuple(a for a in ARGS if not a.startswith("--kvm-profile"))
    result = project.runpytest_subprocess(*base, "--kvm-backend=factory:make", "--kvm-report=r.json", "-k", "TOY-01",
                                          "--hypothesis-profile=kvmconf-quick")
    result.stdout.fnmatch_lines(["kvmconf: backend factory:make, document text 6.18, profile default "
                                 "(hypothesis profile 'kvmconf-quick', 10 examples), schedule controlled"])
    doc = json.loads((project.path / "r.json").read_text())
    assert doc["backend"]["name"] == "factory:make" and doc["backend"]["backend_name"] == "toy-broken"
    assert doc["profile_in_force"] == "default (hypothesis profile 'kvmconf-quick', 10 examples)"
    assert doc["schedule"] == "controlled"
    md = (project.path / "r.md").read_text()
    assert "# KVM conformance of backend `factory:make`" in md and "(it calls itself `toy-broken`)" in md
    assert "search profile default (hypothesis profile 'kvmconf-quick', 10 examples), controlled" in md
