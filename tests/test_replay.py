"""The replay command is self-contained, and a replay string only replays what it was made from."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.toy import ARGS, make_project

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    make_project(pytester)
    return pytester


def replay_command(out: str) -> str:
    lines = out.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith(("replay exactly", "replay (free mode")))
    return next(ln.strip() for ln in lines[i + 1:] if ln.strip().startswith("cd "))


def shell(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a printed command in a clean environment, from elsewhere, as a user pasting it would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHON"))}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_replay_of_a_module_backend_carries_its_environment(pytester: pytest.Pytester, tmp_path: Path) -> None:
    elsewhere = tmp_path / "backends"
    elsewhere.mkdir()
    (elsewhere / "mybackend.py").write_text(
        "from tests.broken.requests import backend\n\ndef make():\n    return backend('CheckBeforeMode')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHON"))}
    env["PYTHONPATH"] = f"{elsewhere}:{ROOT}"
    first = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--kvm-backend=mybackend:make",
                            "-k", "REQ-15", "--hypothesis-seed=0"], cwd=pytester.path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 1, first.stdout + first.stderr
    command = replay_command(first.stdout)
    assert f"PYTHONPATH={elsewhere}:{ROOT}" in command and "--kvm-doc-version=6.18" in command
    replayed = shell(command, tmp_path)
    assert replayed.returncode == 1, replayed.stdout + replayed.stderr
    timeline = first.stdout.split("schedule (one column")[1].split("final state")[0]
    assert timeline in replayed.stdout


#: The broken toy as a thread backend: free mode needs one (on a generator backend it is a usage error).
THREAD_TOY = """
from pytest_kvmconf.scheduling import point
from toy_backend import BrokenToyBackend, ToyMachine


class ThreadToyMachine(ToyMachine):
    execution = "threads"

    def run_op(self, ctx, op, args):
        steps = super().run_op(ctx, op, args)
        try:
            while True:
                point(next(steps).label)
        except StopIteration as stop:
            return stop.value


class ThreadToyBackend(BrokenToyBackend):
    def new_machine(self, config):
        return ThreadToyMachine(config, self.broken)
"""


def test_replay_carries_spec_folders_and_schedule_mode(project: pytest.Pytester, tmp_path: Path) -> None:
    project.makepyfile(thread_toy=THREAD_TOY)
    result = project.runpytest_subprocess(*ARGS, "--kvm-backend=thread_toy:ThreadToyBackend", "-k", "TOY-02",
                                          "--kvm-schedule=free")
    command = replay_command(result.stdout.str())
    args = shlex.split(command.split("&&", 1)[1])
    assert f"--kvm-specs={project.path / 'specs'}" in args or "--kvm-specs=specs" in args
    assert "--kvm-no-bundled-specs" in args and "--kvm-schedule=free" in args
    assert not any(a.startswith("-k") or a == "TOY-02" for a in args)
    replayed = shell(command, tmp_path)
    assert "TOY-02 violated" in replayed.stdout, replayed.stdout + replayed.stderr


def _string(result: pytest.RunResult) -> str:
    m = re.search(r"--kvm-replay=(\S+)", result.stdout.str())
    assert m is not None, result.stdout.str()
    return m[1]


def test_replay_string_of_another_guarantee_is_refused(project: pytest.Pytester) -> None:
    string = _string(project.runpytest_subprocess(*ARGS, "--kvm-backend=toy-broken", "-k", "TOY-02"))
    assert re.fullmatch(r"TOY-02@[0-9a-f]{10}:[-\w]+", string)
    moved = "TOY-01" + string[len("TOY-02"):]
    result = project.runpytest_subprocess(*ARGS, "--kvm-backend=toy-broken", f"--kvm-replay={moved}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--kvm-replay: this replay string was not made from TOY-01 as it is now*"])
    assert "Traceback" not in result.stderr.str()


def test_stale_replay_string_fails_loudly_and_a_changed_check_does_not_stale_it(project: pytest.Pytester) -> None:
    string = _string(project.runpytest_subprocess(*ARGS, "--kvm-backend=toy-broken", "-k", "TOY-02"))
    spec = project.path / "specs" / "toy.toml"
    text = spec.read_text()
    spec.write_text(text.replace('final = "seen"', 'final = "seen or not seen"'))
    relaxed = project.runpytest_subprocess(*ARGS, "--kvm-backend=toy-broken", f"--kvm-replay={string}")
    relaxed.assert_outcomes(passed=1)  # the corrected condition holds on the replayed schedule
    spec.write_text(text.replace('{ op = "kvm_test_request", req = "req", vcpu = 0, as = "seen" },',
                                 '{ op = "kvm_test_request", req = "req", vcpu = 0, as = "seen" },\n'
                                 '  { op = "kvm_make_request", req = "req", vcpu = 0 },'))
    stale = project.runpytest_subprocess(*ARGS, "--kvm-backend=toy-broken", f"--kvm-replay={string}")
    assert stale.ret == pytest.ExitCode.USAGE_ERROR
    stale.stderr.fnmatch_lines(["*not made from TOY-02 as it is now*steps*changed since*"])


def test_replay_string_without_fingerprint_says_what_one_looks_like(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--kvm-backend=reference", "--kvm-replay=REQ-15:eNqLjo5W")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*a replay string looks like REQ-15@*:eNq...*"])
