"""The plugin as users meet it: selection, registration, replay, and every kind of bad input."""

from __future__ import annotations

import re
import shlex
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

BROKEN_CONFTEST = """
from tests.broken.requests import backend

def pytest_kvmconf_backends():
    return {"late-mode": lambda: backend("CheckBeforeMode")}
"""

GOOD_SPEC = """
[document]
file = "vcpu-requests.rst"
area = "mine"

[[guarantee]]
id = "MY-01"
title = "a made request is pending"
section = "Overview"
quote = "Make request @req of VCPU @vcpu."
versions = { since = "4.13" }
params.req = { from = "arch_requests" }

[[guarantee.thread]]
name = "vcpu0"
vcpu = 0
steps = [{ op = "kvm_make_request", req = "req", vcpu = 0 }]

[[guarantee.check]]
final = "(req & KVM_REQUEST_MASK) in vcpus[0].requests"
"""


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)


def no_traceback(result: pytest.RunResult) -> None:
    text = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in text, text


@pytest.fixture
def broken_project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(BROKEN_CONFTEST)
    pytester.makeini(f"[pytest]\npythonpath = {ROOT}\n")
    return pytester


def test_k_selects_one_guarantee_by_id(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--kvm-backend=reference", "-k", "REQ-15", "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*vcpu-requests.toml::REQ-15 PASSED*"])


def test_m_selects_by_area_and_need(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--kvm-backend=reference", "-m", "needs_block and not needs_run_loop",
                 "--co", "-q")
    ids = re.findall(r"::(REQ-[\d.a-z]+)", result.stdout.str())
    assert ids and set(ids) <= {"REQ-08", "REQ-12", "REQ-21", "REQ-25", "REQ-26"}, ids


def test_plugin_is_silent_without_kvm_options(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = run(pytester)
    result.assert_outcomes(passed=1)


def test_old_text_statement_is_skipped_with_reason_and_runs_under_its_version(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--kvm-backend=reference", "-k", "REQ-26 and not REQ-26.a", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*REQ-26 is stated by the document text 4.13..6.0, not by 6.18*"])
    result = run(pytester, "--kvm-backend=reference", "--kvm-doc-version=4.13", "-k", "REQ-26")
    result.assert_outcomes(passed=2)


def test_violation_prints_timeline_and_a_replay_that_replays(broken_project: pytest.Pytester) -> None:
    # A fixed seed: the search meets this race after 9 to 73 examples (seeds 0-9, see the report's
    # "examples to the first violation"), so an unseeded run of 100 may miss it.
    result = run(broken_project, "--kvm-backend=late-mode", "-k", "REQ-15", "--hypothesis-seed=0")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "REQ-15 violated: No lost request at guest entry" in out
    assert "With the memory barriers we can exclude" in out
    assert re.search(r"#\s+vcpu0\s+requester", out), out
    assert "kvm_request_pending() = false" in out
    assert "forbidden outcome:" in out
    # The parts of the forbidden outcome, with their values (as pytest shows an assert's).
    where = out.split("forbidden outcome:")[1].split("parameters:")[0]
    assert "  where\n" in where and "vcpus[0].in_guest = True" in where and "vcpus[0].ipi_pending = False" in where
    assert "vcpus[0].requests = {KVM_REQ_" in where
    command = out.split("replay exactly this schedule:")[1].strip().splitlines()[0]
    args = shlex.split(command.split("&&", 1)[1])
    args = args[next(i for i, a in enumerate(args) if a == "pytest"):]  # after the carried environment
    assert any(a.startswith("--kvm-replay=REQ-15@") for a in args)
    replayed = run(broken_project, *args[1:])
    replayed.assert_outcomes(failed=1)
    timeline = out.split("schedule (one column")[1].split("final state")[0]
    assert timeline in replayed.stdout.str()


def test_replay_of_a_damaged_string_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--kvm-backend=reference", "--kvm-replay=REQ-15@0123456789:@@@")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*--kvm-replay: replay string for REQ-15 is damaged*"])
    no_traceback(result)


def test_unknown_backend_lists_the_known_ones(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--kvm-backend=nosuch")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*unknown backend 'nosuch'; known backends: *reference*"])
    no_traceback(result)


def test_backend_factory_that_raises(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
        def make():
            raise RuntimeError("no device here")

        def pytest_kvmconf_backends():
            return {"flaky": make}
    """)
    result = run(pytester, "--kvm-backend=flaky")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*backend 'flaky': its factory raised RuntimeError: no device here*"])
    no_traceback(result)


def test_backend_by_module_path(broken_project: pytest.Pytester) -> None:
    broken_project.makepyfile(mybackend="""
        from tests.broken.requests import backend

        def make():
            return backend("KickWithoutIpi")
    """)
    broken_project.makeconftest("")
    result = run(broken_project, "--kvm-backend=mybackend:make", "-k", "REQ-07 and not REQ-07.")
    result.assert_outcomes(failed=1)
    result = run(broken_project, "--kvm-backend=mybackend:nothing", "-k", "REQ-07 and not REQ-07.")
    result.stderr.fnmatch_lines(["*module 'mybackend' has no 'nothing'*"])


def test_backend_from_an_installed_entry_point(broken_project: pytest.Pytester, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    dist = site / "kvm_vendor_backend-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kvm-vendor-backend\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[pytest_kvmconf]\nvendor = vendorbackend:make\n")
    (site / "vendorbackend.py").write_text(textwrap.dedent("""
        from tests.broken.requests import backend

        def make():
            return backend("KickDoesNotWake")
    """))
    broken_project.makeconftest("")
    monkeypatch.setenv("PYTHONPATH", f"{site}:{ROOT}")
    result = run(broken_project, "--kvm-backend=vendor", "-k", "REQ-08 and not REQ-08.")
    result.assert_outcomes(failed=1)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("[document\n", "bad.toml: not valid TOML"),
        (GOOD_SPEC.replace('title = "a made', 'colour = "red"\ntitle = "a made'),
         "bad.toml: guarantee MY-01: key colour: unknown key 'colour'; allowed: id, title"),
        (GOOD_SPEC.replace('op = "kvm_make_request"', 'op = "kvm_make_reqest"'),
         "bad.toml: guarantee MY-01: key thread[0].steps[0].op: unknown operation 'kvm_make_reqest' "
         "(did you mean 'kvm_make_request'?); known: "),
        (GOOD_SPEC.replace('final = "(req', 'final = "(reqq'),
         "bad.toml: guarantee MY-01: key check[0].final: unknown name 'reqq' (did you mean 'req'?) in"),
        (GOOD_SPEC.replace('final = "(req & KVM_REQUEST_MASK) in vcpus[0].requests"',
                           'final = "__import__(1)"'),
         "bad.toml: guarantee MY-01: key check[0].final: only these functions can be called"),
        (GOOD_SPEC.replace('vcpu = 0 }]', 'vcpu = true }]'),
         "bad.toml: guarantee MY-01: key thread[0].steps[0].vcpu: kvm_make_request.vcpu must be of type vcpu"),
        (GOOD_SPEC.replace('{ from = "arch_requests" }', '{ from = "no_such_set" }'),
         "bad.toml: guarantee MY-01: key params.req.from: unknown named set 'no_such_set'; known:"),
        (GOOD_SPEC + GOOD_SPEC.split("[document]")[1].split('area = "mine"')[1],
         "bad.toml: guarantee MY-01: key id: id MY-01 appears twice in this file"),
    ],
    ids=["toml", "unknown-key", "unknown-op", "unknown-name", "unsafe-call", "bad-type", "unknown-set",
         "duplicate-id"],
)
def test_malformed_spec_names_file_guarantee_and_key(pytester: pytest.Pytester, text: str,
                                                      expected: str) -> None:
    pytester.makefile(".toml", bad=text)
    result = run(pytester, "--kvm-backend=reference", "--kvm-no-bundled-specs", "--kvm-specs=bad.toml")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert expected in result.stdout.str(), result.stdout.str()
    no_traceback(result)


def test_every_error_of_a_file_is_reported_at_once(pytester: pytest.Pytester) -> None:
    second = GOOD_SPEC.split('area = "mine"')[1].replace("MY-01", "MY-02").replace("from = ", "fron = ")
    text = GOOD_SPEC.replace('title = "a made', 'titel = "x"\ntitle = "a made') + second
    pytester.makefile(".toml", bad=text)
    result = run(pytester, "--kvm-backend=reference", "--kvm-no-bundled-specs", "--kvm-specs=bad.toml")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines([
        "*spec error: 2 errors:",
        "*bad.toml: guarantee MY-01: key titel: unknown key 'titel' (did you mean 'title'?); allowed: *",
        "*bad.toml: guarantee MY-02: key params.req: a parameter is a table with exactly one of:*",
    ])
    no_traceback(result)


def test_duplicate_id_across_files(pytester: pytest.Pytester) -> None:
    pytester.mkdir("specs")
    (pytester.path / "specs" / "a.toml").write_text(GOOD_SPEC)
    (pytester.path / "specs" / "b.toml").write_text(GOOD_SPEC)
    result = run(pytester, "--kvm-backend=reference", "--kvm-no-bundled-specs", "--kvm-specs=specs")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*b.toml: guarantee MY-01: key id: id MY-01 is already used in *a.toml*"])
    no_traceback(result)


def test_user_spec_folder_runs_beside_the_bundled_ones(pytester: pytest.Pytester) -> None:
    pytester.mkdir("myspecs")
    (pytester.path / "myspecs" / "mine.toml").write_text(GOOD_SPEC)
    pytester.makeini("[pytest]\nkvm_specs = myspecs\n")
    result = run(pytester, "-m", "mine")
    result.assert_outcomes(passed=1)


def test_missing_spec_folder_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--kvm-specs=nowhere")
    result.stderr.fnmatch_lines(["*--kvm-specs: nowhere does not exist*"])
    no_traceback(result)


def test_bad_doc_version(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--kvm-backend=reference", "--kvm-doc-version=six")
    result.stderr.fnmatch_lines(["*--kvm-doc-version: 'six' is not a kernel version of the form X.Y*"])


def test_python_version_is_supported() -> None:
    assert sys.version_info >= (3, 10)


def test_suite_without_paths_collects_only_the_specs(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_unrelated="def test_fails(): assert False")
    result = run(pytester, "--kvm-backend=reference", "-k", "REQ-01")
    result.assert_outcomes(passed=1)
    result = run(pytester, "--kvm-backend=reference", "-k", "REQ-01 or test_fails", "test_unrelated.py")
    result.assert_outcomes(passed=1, failed=1)
