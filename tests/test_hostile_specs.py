"""Hostile spec files, replay strings and expectation files: each ends with a clear message.

Every class of issue 11 is generated here (deep nesting, long chains, bombs) and loaded, then
run for a few examples on the reference backend, in a subprocess limited to 1 GB of address
space; each must end with an error of pytest-kvmconf (never a Python exception of another
kind) that names the file, and where it is about one guarantee the guarantee and the key,
within 10 s. End-to-end runs check that pytest prints no traceback and exits.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest

from pytest_kvmconf.engine import replay_guard
from pytest_kvmconf.engine.schedule import Schedule
from pytest_kvmconf.errors import ExpectationError, ReplayError, SpecError
from pytest_kvmconf.expectations import load as load_expectations
from pytest_kvmconf.spec.loader import load_file

ROOT = Path(__file__).resolve().parent.parent
#: The bounds every hostile input must stay within.
SECONDS, MEMORY = 10.0, 1 << 30

HEAD = '''
[document]
file = "vcpu-requests.rst"
area = "requests"
'''


def guarantee(gid: str = "HOS-01", *, top: str = "", thread: str = "", steps: str = "",
              check: str = 'final = "True"') -> str:
    """One guarantee with a requester thread; the keywords replace or add its parts."""
    steps = steps or 'steps = [{ op = "kvm_make_request", req = 0, vcpu = 0 }]'
    return textwrap.dedent(f'''
        [[guarantee]]
        id = "{gid}"
        title = "hostile"
        section = "Overview"
        quote = "Make request @req of VCPU @vcpu."
        versions = {{ since = "4.13" }}
        {top}
        [[guarantee.thread]]
        name = "requester"
        {thread}
        {steps}
        [[guarantee.check]]
        {check}
        ''')


def toml_string(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid TOML basic string


#: file name -> (contents, what the message must say). Contents are str (a spec) or bytes.
CASES: dict[str, tuple[str | bytes, str]] = {
    "long_sum": (HEAD + guarantee(check=f"final = {toml_string('+'.join(['1'] * 1000) + ' > 0')}"),
                 "nests more than 100 levels"),
    "not_chain": (HEAD + guarantee(check=f"final = {toml_string('not ' * 5000 + 'True')}"),
                  "at most 10000 characters"),
    "not_chain_short": (HEAD + guarantee(check=f"final = {toml_string('not ' * 2400 + 'True')}"),
                        "nests more than 100 levels"),
    "nested_arrays": (HEAD + "x = " + "[" * 100_000 + "]" * 100_000 + "\n", "nest too deeply"),
    "nested_tables": (HEAD + "x = " + "{a = " * 100_000 + "1" + "}" * 100_000 + "\n", "nest too deeply"),
    "bad_utf8": (HEAD.encode() + b"# \xff\xfe\n" + guarantee().encode(), "not valid UTF-8"),
    "steps_int": (HEAD + guarantee(steps="steps = 5"), "key thread[0].steps"),
    "machine_option": (HEAD + guarantee(top='params.i = { range = [5, 6] }\nmachine.opt = "[1, 2][i]"'),
                       "key machine.opt: '[1, 2][i]' cannot be evaluated"),
    "sum_range": (HEAD + guarantee(check='final = "sum(range(1 << 62)) > 0"'), "exceeded its budget"),
    "string_bomb": (HEAD + guarantee(check='''final = "len('x' * 10000000000) > 0"'''), "exceeded its budget"),
    "shift_bomb": (HEAD + guarantee(check='final = "(1 << (1 << 40)) > 0"'), "exceeded its budget"),
    "loop_bomb": (HEAD + guarantee(check='final = "sum(1 for a in range(99999) for b in range(99999)) > 0"'),
                  "exceeded its budget"),
    "vcpus_param": (HEAD + guarantee(top='params.n = { range = [1, 1000000000] }\nvcpus = "n"'), "key vcpus"),
    "vcpus_empty": (HEAD + guarantee(top='params.n = { range = [0, 0] }\nvcpus = "n"'), "key vcpus"),
    "vcpu_out_of_range": (HEAD + guarantee(steps='steps = [{ op = "kvm_make_request", req = 0, vcpu = 5 }]'),
                          "vCPU index 5 is out of range"),
    "vcpu_negative": (HEAD + guarantee(steps='steps = [{ op = "kvm_make_request", req = 0, vcpu = -1 }]'),
                      "must be of type vcpu"),
    "vcpu_param_negative": (HEAD + guarantee(
        top='params.v = { range = [-3, -1] }',
        steps='steps = [{ op = "kvm_make_request", req = 0, vcpu = "v" }]'), "not a vCPU index"),
    "vcpu_from_tables": (HEAD + guarantee(top='params.v = { choice = [{ a = 1 }] }',
                                          steps='steps = [{ op = "kvm_make_request", req = 0, vcpu = "v" }]'),
                         "key params.v.choice"),
    "fixed_steps": (HEAD + guarantee(steps="steps = [" + ", ".join(
        ['{ op = "kvm_make_request", req = 0, vcpu = 0 }'] * 10_000) + "]"), "at most 200 steps"),
    "field_typo": (HEAD + guarantee(check='final = "vcpus[0].requsets == 0"'), "reads field 'requsets'"),
    "per_vcpu_no": (HEAD + guarantee(thread='per_vcpu = "no"'), "key thread[0].per_vcpu"),
    "vcpu_true": (HEAD + guarantee(thread="vcpu = true"), "key thread[0].vcpu"),
    "since_after_until": (HEAD + guarantee().replace('{ since = "4.13" }', '{ since = "6.8", until = "5.19" }'),
                          "until 5.19 is before since 6.8"),
    "id_newline": (HEAD + guarantee("HOS-01\\n"), "guarantee[0].id"),
    "id_arabic_digits": (HEAD + guarantee("HOS-\u0660\u0661"), "guarantee[0].id"),
    "id_long": (HEAD + guarantee("H" * 5000 + "-01"), "guarantee[0].id"),
    "int_huge": (HEAD + guarantee(top="params.r = { range = [0, 100000000000000000000000000000] }"),
                 "64-bit"),
    "max_steps_huge": (HEAD + guarantee(top="max_steps = 1000000000000"), "key max_steps"),
}

PROBE = textwrap.dedent('''
    import json, resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory}))
    from pathlib import Path
    from hypothesis import settings
    from pytest_kvmconf.backends.reference import ReferenceBackend
    from pytest_kvmconf.engine.explore import explore
    from pytest_kvmconf.engine.runner import RunOptions
    from pytest_kvmconf.errors import KvmconfError
    from pytest_kvmconf.spec.loader import load_file

    for path in sorted(Path(sys.argv[1]).iterdir()):
        start = time.monotonic()
        try:
            for g in load_file(path):
                explore(g, ReferenceBackend(), RunOptions("6.18", point_timeout=2.0),
                        base=settings(max_examples=3, database=None))
            kind, message = "none", ""
        except KvmconfError as exc:
            kind, message = "kvmconf", f"{{type(exc).__name__}}: {{exc}}"
        except BaseException as exc:
            kind, message = "python", f"{{type(exc).__name__}}: {{exc}}"
        print(json.dumps({{"file": path.name, "seconds": time.monotonic() - start, "kind": kind,
                          "message": message[:2000]}}), flush=True)
''')


def probe(folder: Path) -> dict[str, dict]:
    """Load and run every file of ``folder`` in a subprocess under the memory limit."""
    code = PROBE.format(memory=MEMORY)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True,
                          timeout=60 + SECONDS * len(list(folder.iterdir())), env=env, cwd=str(folder))
    results = {}
    for line in done.stdout.splitlines():
        r = json.loads(line)
        results[r["file"]] = r
    assert done.returncode == 0, done.stderr[-3000:]
    return results


@pytest.fixture(scope="module")
def hostile_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    folder = tmp_path_factory.mktemp("hostile-specs")
    for name, (contents, _) in CASES.items():
        path = folder / f"{name}.toml"
        if isinstance(contents, bytes):
            path.write_bytes(contents)
        else:
            path.write_text(contents, encoding="utf-8")
    os.mkfifo(folder / "fifo.toml")
    (folder / "loop.toml").symlink_to(folder / "loop.toml")
    return probe(folder)


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_hostile_spec_ends_with_a_clear_error(hostile_results: dict[str, dict], name: str) -> None:
    r = hostile_results[f"{name}.toml"]
    assert r["kind"] == "kvmconf", r
    assert f"{name}.toml" in r["message"], r  # the file is named
    assert CASES[name][1] in r["message"], r
    assert r["seconds"] < SECONDS, r


@pytest.mark.parametrize("name, says", [("fifo", "a FIFO"), ("loop", "cannot be read")])
def test_fifos_and_symlink_loops_are_errors_not_hangs(hostile_results: dict[str, dict], name: str,
                                                      says: str) -> None:
    r = hostile_results[f"{name}.toml"]
    assert r["kind"] == "kvmconf" and says in r["message"] and r["seconds"] < SECONDS, r


def test_guarantee_errors_name_the_guarantee_and_the_key(hostile_results: dict[str, dict]) -> None:
    for name in ("steps_int", "machine_option", "vcpus_param", "field_typo", "per_vcpu_no", "max_steps_huge"):
        message = hostile_results[f"{name}.toml"]["message"]
        assert "guarantee HOS-01" in message and "key " in message, message


# -- every error of a guarantee, and of a file, at once ---------------------------------

MANY_ERRORS = HEAD.replace('area = "requests"', 'area = "requests"\nauthor = "me"') + textwrap.dedent('''
    [[guarantee]]
    id = "HOS-01"
    title = ""
    section = "Overview"
    quote = "Make request @req of VCPU @vcpu."
    versions = { since = "4.13", until = "banana" }
    params.n = { range = [5, 1] }
    params.m = { choise = [1] }
    vcpus = 2
    [[guarantee.thread]]
    name = "a"
    per_vcpu = "no"
    steps = [{ op = "kvm_make_request", req = "n", vcpu = 0 }, { op = "kvm_make_requets", vcpu = 0 }]
    [[guarantee.thread]]
    name = "b"
    vcpu = 7
    steps = [{ op = "kvm_make_request", req = "m", vcpu = 9, colour = 1 }]
    [[guarantee.thread]]
    name = "c"
    steps = [{ op = "kvm_make_request", rq = 1, vcpu = 1 }]
    [[guarantee.check]]
    final = "vcpus[0].requests and"
    [[guarantee.check]]
    never = "n > nowhere"
    [[guarantee.check]]
    final = "True"
    never = "False"
    [[guarantee.check]]
    finl = "True"

    ''') + guarantee("HOS-02", top='max_steps = 0\nlocks = { leaves = ["kvm->no_such_lock"], deadlock_free = "yes" }') \
    + guarantee("HOS 04", top='arch = "pdp11"') + guarantee("HOS-03")

#: (guarantee, key) of every mistake above, once each: a wrong parameter (n, m) named by a step
#: or a condition, or a thread whose vCPU is wrong, gives no second error.
MANY_KEYS = [
    (None, "document.author"),
    ("HOS-01", "title"), ("HOS-01", "versions.until"), ("HOS-01", "params.n.range"), ("HOS-01", "params.m"),
    ("HOS-01", "thread[0].per_vcpu"), ("HOS-01", "thread[0].steps[1].op"),
    ("HOS-01", "thread[1].vcpu"), ("HOS-01", "thread[1].steps[0].vcpu"), ("HOS-01", "thread[1].steps[0].colour"),
    ("HOS-01", "thread[2].steps[0].rq"),
    ("HOS-01", "check[0].final"), ("HOS-01", "check[1].never"), ("HOS-01", "check[2]"), ("HOS-01", "check[3].finl"),
    ("HOS-02", "max_steps"), ("HOS-02", "locks.deadlock_free"), ("HOS-02", "locks.leaves[0]"),
    (None, "guarantee[2].id"), (None, "guarantee[2].arch"),
]


def test_every_error_of_a_guarantee_and_of_its_file_is_reported_once(tmp_path: Path) -> None:
    path = tmp_path / "many.toml"
    path.write_text(MANY_ERRORS)
    with pytest.raises(SpecError) as info:
        load_file(path)
    errors = info.value.errors
    assert [(e.gid, e.key) for e in errors] == MANY_KEYS, "\n".join(map(str, errors))
    text = str(info.value)
    assert text.startswith(f"{len(MANY_KEYS)} errors:\n") and text.count(str(path)) == len(MANY_KEYS), text
    for says in ("'kvm_make_requets' (did you mean 'kvm_make_request'?)", "'rq' (did you mean 'req'?)",
                 "unknown name 'nowhere'", "'finl' (did you mean 'final'?)", "vCPU index from 0 to 1 (got 7)"):
        assert says in text, text
    assert "unknown name 'n'" not in text and "unknown name 'm'" not in text, text  # no cascade


def test_a_file_with_several_errors_is_one_clear_report_in_pytest(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", many=MANY_ERRORS)
    result = pytester.runpytest("-p", "no:cacheprovider", "--kvm-backend=reference", "--kvm-no-bundled-specs",
                                "--kvm-specs=many.toml")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines([f"*spec error: {len(MANY_KEYS)} errors:",
                                 "*many.toml: guarantee HOS-01: key thread?0?.per_vcpu: true or false (got 'no')",
                                 "*many.toml: guarantee HOS-02: key max_steps: an integer from 1 to 100000"])
    no_traceback(result)


# -- end to end: the plugin --------------------------------------------------------------

def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=120)


def no_traceback(result: pytest.RunResult) -> None:
    text = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in text and "INTERNALERROR" not in text, text


def test_a_folder_of_hostile_specs_is_reported_and_pytest_exits(pytester: pytest.Pytester) -> None:
    specs = pytester.mkdir("specs")
    (specs / "deep.toml").write_text(HEAD + "x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    (specs / "budget.toml").write_text(HEAD + guarantee(check='final = "sum(range(1 << 62)) > 0"'))
    os.mkfifo(specs / "fifo.toml")
    (specs / "loop.toml").symlink_to(specs / "loop.toml")
    result = run(pytester, "--kvm-no-bundled-specs", "--kvm-specs=specs", "--kvm-profile=quick",
                 "--continue-on-collection-errors")
    assert result.ret not in (0, 3, 4), result.ret  # failures, not an internal or usage error
    result.stdout.fnmatch_lines(["*deep.toml: not usable TOML: its arrays or tables nest too deeply*",
                                 "*condition exceeded its budget: range(4611686018427387904) has more than*"])
    result.stdout.fnmatch_lines(["*fifo.toml is left out: a FIFO*"])
    result.stdout.fnmatch_lines(["*loop.toml is left out: cannot be read*"])
    no_traceback(result)


@pytest.mark.parametrize("args, says", [
    (("--kvm-doc-version=9.9",), "*--kvm-doc-version=9.9 names no known document text; known texts: 4.13*"),
    (("--kvm-schedule=free",), "*--kvm-schedule=free runs a thread backend's OS threads preemptively*"),
    (("--kvm-replay=",), "*--kvm-replay: an empty replay string*"),
])
def test_usage_errors(pytester: pytest.Pytester, args: tuple[str, ...], says: str) -> None:
    result = run(pytester, "--kvm-backend=reference", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([says])
    no_traceback(result)


# -- replay strings ---------------------------------------------------------------------

def blob(data: bytes) -> str:
    return base64.urlsafe_b64encode(zlib.compress(data, 9)).decode().rstrip("=")


def req15():
    from pytest_kvmconf.spec.loader import load_file as load

    return {g.id: g for g in load(ROOT / "specs" / "vcpu-requests.toml")}


@pytest.mark.parametrize("text, says", [
    ("REQ-15:" + blob(b"[[],[],[0]" + b" " * 10_000_000 + b"]"), "inflates to more than"),
    ("REQ-15:" + "A" * 100_000, "at most 16384 characters"),
    ("REQ-15:" + blob(b"[" * 100_000 + b"]" * 100_000), "nests deeper than 8 levels"),
    ("REQ-15:" + blob(b'[[["req", Infinity]],[],[0]]'), "Infinity"),
    ("REQ-15:" + blob(b'[[["req", NaN]],[],[0]]'), "NaN"),
    ("REQ-15:" + blob(b"{}"), "damaged"),
    ("   ", "an empty replay string"),
])
def test_damaged_replay_strings_are_rejected_within_limits(text: str, says: str) -> None:
    with pytest.raises(ReplayError, match=says):
        Schedule.decode(text)


@pytest.mark.parametrize("schedule, says", [
    (Schedule("REQ-15", (("req", 10**30),), (), (0,)), "outside its domain"),
    (Schedule("REQ-15", (("nope", 1),), (), (0,)), "the spec has req"),
    (Schedule("REQ-15", (("req", 768),), (("api", ((0, ()),)),), (0,)), "sequence threads are none"),
    (Schedule("REQ-15", (("req", 768),), (), (0, -1)), "choice tape"),
    (Schedule("REQ-15", (("req", 768),), (), (0,) * 20_000), "choice tape"),
    (Schedule("REQ-14", (("req", 768),), (), (0,)), "not REQ-15"),
])
def test_replays_that_cannot_be_of_the_guarantee_are_rejected_before_running(schedule: Schedule,
                                                                             says: str) -> None:
    g = req15()["REQ-15"]
    decoded = Schedule.decode(schedule.encode())
    with pytest.raises(ReplayError, match=says):
        replay_guard.check(decoded, g, "6.18")


def test_a_printed_replay_string_passes_the_checks() -> None:
    g = req15()["REQ-15"]
    p = g.params[0]
    s = Schedule("REQ-15", ((p.name, 768),), (), (1, 0, 1))
    replay_guard.check(Schedule.decode(s.encode()), g, "6.18")


# -- expectation files -----------------------------------------------------------------

@pytest.mark.parametrize("contents, says", [
    (b"violation = [1, 2]\n", "key violation[0]: each entry is a [[violation]] table"),
    (b'[[violation]]\nid = "REQ-15"\nreason = "\xff"\n', "not valid UTF-8"),
    (b"x = " + b"[" * 100_000 + b"]" * 100_000 + b"\n", "nest too deeply"),
    (b'[[violation]]\nid = "REQ-15\\n"\nreason = "x"\n', "key violation[0].id"),
])
def test_malformed_expectation_files_are_clear_errors(tmp_path: Path, contents: bytes, says: str) -> None:
    path = tmp_path / "expect.toml"
    path.write_bytes(contents)
    with pytest.raises(ExpectationError) as info:
        load_expectations(path)
    assert says in str(info.value) and "expect.toml" in str(info.value)


def test_a_malformed_expectation_file_is_a_usage_error(pytester: pytest.Pytester) -> None:
    (pytester.path / "expect.toml").write_bytes(b"violation = [1, 2]\n")
    result = run(pytester, "--kvm-backend=reference", "--kvm-expect=expect.toml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "expect.toml: key violation[0]: each entry is a [[violation]] table" in result.stderr.str()
    no_traceback(result)


def test_bundled_specs_still_load() -> None:
    assert len(load_file(ROOT / "specs" / "vcpu-requests.toml")) > 20
