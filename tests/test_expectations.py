"""Expectation files: known violations run as strict expected failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_kvmconf.expectations import ExpectationError, backend_file, load
from tests.toy import ARGS, make_project, outcomes

pytest_plugins = ["pytester"]

EXPECT = '''
# Known violations of the toy-broken backend.
[[violation]]
id = "TOY-02"
reason = """kvm_test_request is a stub that
returns false"""
'''


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    make_project(pytester)
    (pytester.path / "expect.toml").write_text(EXPECT, encoding="utf-8")
    return pytester


def test_load_reads_ids_and_reasons(tmp_path: Path) -> None:
    path = tmp_path / "e.toml"
    path.write_text(EXPECT + '\n[[violation]]\nid = "REQ-26.a"\nreason = "old API"\n')
    got = load(path)
    assert list(got) == ["TOY-02", "REQ-26.a"]
    assert got["TOY-02"].reason == "kvm_test_request is a stub that returns false"
    assert got["TOY-02"].file == path


@pytest.mark.parametrize(("text", "message"), [
    ("[[violation]\n", "{f}: not valid TOML: "),
    ('[[violations]]\nid = "REQ-15"\nreason = "x"\n',
     "{f}: key violations: unknown key 'violations'; an expectation file holds only [[violation]] tables"),
    ('violation = "REQ-15"\n', "{f}: key violation: write each entry as a [[violation]] table"),
    ('[[violation]]\nid = "REQ-15"\n', "{f}: key violation[0].reason: required, a non-empty string saying why"),
    ('[[violation]]\nid = "REQ-15"\nreason = "x"\n[[violation]]\nid = "req15"\nreason = "y"\n',
     "{f}: key violation[1].id: required, a guarantee id such as REQ-15 or REQ-15.a (got 'req15')"),
    ('[[violation]]\nid = "REQ-15"\nreason = "x"\nbackend = "kvm"\n',
     "{f}: key violation[0].backend: unknown key 'backend'; allowed: id, reason"),
    ('[[violation]]\nid = "REQ-15"\nreason = "x"\n[[violation]]\nid = "REQ-15"\nreason = "y"\n',
     "{f}: key violation[1].id: REQ-15 is listed twice"),
])
def test_malformed_file_names_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "known.toml"
    path.write_text(text)
    with pytest.raises(ExpectationError) as info:
        load(path)
    assert str(info.value).startswith(message.format(f=path))


def test_malformed_file_is_a_usage_error(project: pytest.Pytester) -> None:
    (project.path / "bad.toml").write_text('[[violation]]\nid = "TOY-02"\n')
    result = project.runpytest(*ARGS, "--kvm-backend=toy-broken", "--kvm-expect=bad.toml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*expectation file bad.toml: key violation[[]0[]].reason: required*"])


def test_known_violation_is_an_expected_failure_with_its_reason(project: pytest.Pytester) -> None:
    result = project.runpytest(*ARGS, "--kvm-backend=toy-broken", "--kvm-expect=expect.toml", "-v", "-rx",
                               "--kvm-report=r.json")
    assert outcomes(result) == {"TOY-01": "PASSED", "TOY-02": "XFAIL", "TOY-03": "SKIPPED"}
    assert result.ret == 0
    result.stdout.fnmatch_lines(["XFAIL *TOY-02 - known violation (expect.toml): "
                                 "kvm_test_request is a stub that returns false"])
    row = {r["id"]: r for r in json.loads((project.path / "r.json").read_text())["guarantees"]}["TOY-02"]
    assert row["verdict"] == "expected failure"
    assert row["reason"] == "known violation (expect.toml): kvm_test_request is a stub that returns false"


def test_known_violation_no_longer_reproduced_fails(project: pytest.Pytester) -> None:
    result = project.runpytest(*ARGS, "--kvm-backend=toy", "--kvm-expect=expect.toml", "-v",
                               "--kvm-report=r.json")
    assert outcomes(result)["TOY-02"] == "FAILED"
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "known violation no longer reproduced: TOY-02 is listed in expect.toml as a "
        "known violation of this backend (kvm_test_request is a stub that returns false), but none of "
        "10 schedules explored violated it.",
        "If the backend was fixed, remove TOY-02 from expect.toml.",
    ])
    row = {r["id"]: r for r in json.loads((project.path / "r.json").read_text())["guarantees"]}["TOY-02"]
    assert row["verdict"] == "unexpected pass" and row["reason"].startswith("known violation no longer reproduced")


def test_runxfail_shows_the_violation(project: pytest.Pytester) -> None:
    # The xfail is a plain pytest mark, so --runxfail turns it back into the full violation report.
    result = project.runpytest(*ARGS, "--kvm-backend=toy-broken", "--kvm-expect=expect.toml", "--runxfail",
                               "-k", "TOY-02")
    result.stdout.fnmatch_lines(["TOY-02 violated: kvm_test_request sees a made request"])


def test_backend_ships_its_own_file(project: pytest.Pytester) -> None:
    backend = project.path / "toy_backend.py"
    backend.write_text(backend.read_text().replace(
        '    description = "kvm_test_request never sees a request"\n',
        '    description = "kvm_test_request never sees a request"\n'
        '    expected_failures_file = "known/toy-broken.toml"\n'))
    (project.path / "known").mkdir()
    (project.path / "known" / "toy-broken.toml").write_text(EXPECT)
    result = project.runpytest(*ARGS, "--kvm-backend=toy-broken", "-v")
    assert outcomes(result) == {"TOY-01": "PASSED", "TOY-02": "XFAIL", "TOY-03": "SKIPPED"}
    # --kvm-expect adds to it and wins for the same id.
    (project.path / "mine.toml").write_text('[[violation]]\nid = "TOY-01"\nreason = "pretend"\n'
                                            '[[violation]]\nid = "TOY-02"\nreason = "my reason"\n')
    result = project.runpytest(*ARGS, "--kvm-backend=toy-broken", "--kvm-expect=mine.toml", "-v", "-rxf")
    assert outcomes(result) == {"TOY-01": "FAILED", "TOY-02": "XFAIL", "TOY-03": "SKIPPED"}
    result.stdout.fnmatch_lines(["XFAIL *TOY-02 - known violation (mine.toml): my reason"])


def test_backend_file_resolves_against_the_backend_module() -> None:
    class Backend:
        expected_failures_file = "known.toml"

    assert backend_file(Backend()) == Path(__file__).resolve().parent / "known.toml"
    Backend.expected_failures_file = "/abs/known.toml"
    assert backend_file(Backend()) == Path("/abs/known.toml")
    assert backend_file(object()) is None


def test_unknown_id_warns(project: pytest.Pytester) -> None:
    (project.path / "typo.toml").write_text('[[violation]]\nid = "TOY-20"\nreason = "typo"\n')
    result = project.runpytest(*ARGS, "--kvm-backend=toy", "--kvm-expect=typo.toml", "-k", "TOY-01")
    result.stdout.fnmatch_lines(["*typo.toml: expected violation TOY-20 names no collected guarantee*"])
    # A deselected guarantee is still a known one.
    (project.path / "typo.toml").write_text('[[violation]]\nid = "TOY-02"\nreason = "x"\n')
    result = project.runpytest(*ARGS, "--kvm-backend=toy", "--kvm-expect=typo.toml", "-k", "TOY-01")
    assert "names no collected guarantee" not in result.stdout.str()


def test_only_a_reported_violation_is_the_expected_one(project: pytest.Pytester) -> None:
    # A machine that cannot even be created is not the known violation: it stays a failure.
    (project.path / "conftest.py").write_text(
        "from toy_backend import ToyBackend\n\n\n"
        "class Crash(ToyBackend):\n    def new_machine(self, config):\n        raise RuntimeError('no VM')\n\n\n"
        "def pytest_kvmconf_backends():\n    return {'crash': Crash}\n")
    result = project.runpytest(*ARGS, "--kvm-backend=crash", "--kvm-expect=expect.toml", "-v", "-k", "TOY-02")
    assert outcomes(result) == {"TOY-02": "FAILED"}
    result.stdout.fnmatch_lines(["*RuntimeError: no VM*"])
