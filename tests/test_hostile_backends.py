"""Hostile backends: each misbehaviour is reported in one paragraph naming the backend and the
method, a hang is stopped within the point timeout, nothing is left behind, and pytest exits."""

from __future__ import annotations

import os
import signal
import textwrap
import threading
import time
from typing import Any

import pytest
from hypothesis import settings

from pytest_kvmconf import Point
from pytest_kvmconf.engine import guard, leftover, workers
from pytest_kvmconf.engine.explore import explore
from pytest_kvmconf.engine.runner import RunOptions, run_schedule
from pytest_kvmconf.engine.schedule import Schedule
from pytest_kvmconf.errors import BackendError, BackendFault, BackendHang, ViolationFound
from pytest_kvmconf.facets.requests import KVM_REQUEST_MASK
from pytest_kvmconf.registry import resolve
from pytest_kvmconf.spec.loader import load_file
from pytest_kvmconf.spec.versions import VersionRange
from tests import toy

SPEC = toy.SPEC  # TOY-01: a made request is pending (the first guarantee of the toy spec)
QUICK = settings(max_examples=10, database=None)
#: Seconds a hostile backend's run may take before the test calls it unbounded: the point
#: timeouts are 0.25-0.5 s, but a loaded 2-core CI machine stretched one run to 11.8 s.
BOUND = 60


@pytest.fixture(scope="module")
def g(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("bad") / "bad.toml"
    path.write_text(SPEC)
    return next(g for g in load_file(path) if g.id == "TOY-01")


def schedule() -> Schedule:
    return Schedule("TOY-01", (("req", 768),), (), (0,))


class Machine:
    """A correct generator machine of the request bitmap; the tests break one thing each."""

    execution = "generator"

    def __init__(self, config: Any):
        self.requests: set[int] = set()

    def run_op(self, ctx: Any, op: str, args: dict) -> Any:
        return getattr(self, op)(**args)

    def kvm_make_request(self, req: int, vcpu: int, state: Any = None) -> Any:
        self.requests.add(req & KVM_REQUEST_MASK)
        yield Point("set_bit(req, &vcpu->requests)")

    def observe(self) -> Any:
        return {"vcpus": [{"requests": frozenset(self.requests)}]}

    def close(self) -> None:
        pass


class Backend:
    name = "bad"
    description = "a hostile backend"
    capabilities = frozenset({"requests"})
    archs = frozenset({"x86_64"})
    doc_versions = VersionRange("4.13")
    machine = Machine

    def new_machine(self, config: Any) -> Any:
        return self.machine(config)


def backend(**overrides: Any) -> Backend:
    """A Backend whose machine class has ``overrides`` (methods or attributes)."""
    b = Backend()
    b.machine = type("Broken", (Machine,), overrides)
    return b


# -- backends that block or spin ---------------------------------------------------------

def blocking_backend(gate: threading.Event, seen: list[int]) -> Backend:
    def kvm_make_request(self: Any, req: int, vcpu: int, state: Any = None) -> Any:
        seen.append(threading.get_ident())
        gate.wait()  # nobody sets it while the run lasts
        yield Point("never reached")

    return backend(kvm_make_request=kvm_make_request)


def test_a_generator_backend_that_blocks_forever_is_interrupted_as_a_hang() -> None:
    gate, seen = threading.Event(), []
    start = time.monotonic()
    out = run_schedule(_g(), blocking_backend(gate, seen), schedule(), RunOptions("6.18", point_timeout=0.5))
    assert time.monotonic() - start < BOUND
    assert out.violation is not None and out.violation.kind == "hang", out.violation
    msg = out.violation.message
    assert "no progress for 0.5 s" in msg and "gate.wait()" in msg and "interrupted" in msg, msg
    assert seen == [threading.get_ident()]  # unwound on this very thread: nothing left behind
    assert not gate.is_set()


def test_around_a_guarantee_the_handler_is_held_once_and_a_blocking_run_is_still_interrupted() -> None:
    found = signal.getsignal(guard.HANG_SIGNAL)
    gate, seen = threading.Event(), []
    with guard.watching("TOY-01", Backend()):
        held = signal.getsignal(guard.HANG_SIGNAL)
        assert held is not found
        assert run_schedule(_g(), Backend(), schedule(), RunOptions("6.18")).violation is None
        assert signal.getsignal(guard.HANG_SIGNAL) is held  # a run does not install it again
        out = run_schedule(_g(), blocking_backend(gate, seen), schedule(), RunOptions("6.18", point_timeout=0.5))
        assert out.violation is not None and out.violation.kind == "hang" and "gate.wait()" in out.violation.message
        assert run_schedule(_g(), Backend(), schedule(), RunOptions("6.18")).violation is None
    assert signal.getsignal(guard.HANG_SIGNAL) == found  # put back as found


def test_threads_a_backend_leaves_running_are_recorded_with_their_position() -> None:
    stop = threading.Event()
    earlier = threading.Thread(target=stop.wait, name="started-before", daemon=True)
    earlier.start()

    def parked() -> None:
        stop.wait()

    try:
        with leftover.recording("TOY-01", "'bad'"):
            threading.Thread(target=parked, name="left-running", daemon=True).start()
            threading.Thread(target=lambda: None, name="ended").start()
            time.sleep(0.05)
        lines = [line for line in leftover.report() if "TOY-01" in line]
        assert len(lines) == 1, lines
        assert lines[0].startswith("'left-running' (daemon; left by backend 'bad' in TOY-01, at "
                                   "test_hostile_backends.py:") and lines[0].endswith(" in parked)"), lines
    finally:
        stop.set()
    deadline = time.monotonic() + BOUND
    while any("TOY-01" in line for line in leftover.report()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any("TOY-01" in line for line in leftover.report())  # ended threads are forgotten


def test_off_the_main_thread_a_blocking_generator_run_is_abandoned_on_a_worker() -> None:
    gate, seen, outcomes = threading.Event(), [], []
    t = threading.Thread(target=lambda: outcomes.append(run_schedule(
        _g(), blocking_backend(gate, seen), schedule(), RunOptions("6.18", point_timeout=0.5))))
    try:
        t.start()
        t.join(30)
        out = outcomes[0]
        assert out.violation is not None and out.violation.kind == "hang", out.violation
        assert "gate.wait()" in out.violation.message and "abandoned" in out.violation.message
        assert any("TOY-01 generator run" in name for name in workers.abandoned())
    finally:
        gate.set()
    # Released, the abandoned worker ends instead of going back to the pool.
    deadline = time.monotonic() + BOUND
    while any(x.ident == seen[0] for x in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(x.ident == seen[0] for x in threading.enumerate())
    assert not workers.abandoned()


def _blocks(gate: threading.Event) -> Any:
    def method(*args: Any, **kwargs: Any) -> Any:
        gate.wait()  # nobody sets it while the run lasts

    return method


@pytest.mark.parametrize("method", ["new_machine", "close"])
def test_a_backend_method_that_blocks_outside_an_operation_is_interrupted(method: str) -> None:
    """new_machine() and close() run on the engine's thread outside any operation: one that
    blocks hung pytest for good. They get METHOD_SLACK point timeouts, then are interrupted."""
    gate = threading.Event()
    b = type("B", (Backend,), {"new_machine": _blocks(gate)})() if method == "new_machine" \
        else backend(close=_blocks(gate))
    start = time.monotonic()
    with pytest.raises(BackendHang) as info:
        run_schedule(_g(), b, schedule(), RunOptions("6.18", point_timeout=0.25))
    assert time.monotonic() - start < BOUND
    msg = str(info.value)
    assert msg.startswith(f"backend 'bad': {method}(): no return for 1 s or more (it blocks or loops); "
                          "interrupted"), msg
    assert "gate.wait()" in msg and "guard.py" not in msg, msg  # the backend's frames, not the engine's
    assert not gate.is_set()


def test_a_thread_backend_whose_observe_blocks_on_its_hung_thread_does_not_hang_the_run() -> None:
    """The op takes the machine's lock and hangs; observe() waits for that lock on the engine's
    thread. The hang is the verdict, and the run ends."""
    lock = threading.Lock()
    gate = threading.Event()

    def kvm_make_request(self: Any, req: int, vcpu: int, state: Any = None) -> Any:
        with lock:
            gate.wait()

    def observe(self: Any) -> Any:
        with lock:
            return Machine.observe(self)

    b = backend(execution="threads", kvm_make_request=kvm_make_request, observe=observe)
    start = time.monotonic()
    try:
        out = run_schedule(_g(), b, schedule(), RunOptions("6.18", point_timeout=0.25))
    finally:
        gate.set()
    assert time.monotonic() - start < BOUND
    assert out.violation is not None and out.violation.kind == "hang", out.violation
    assert "gate.wait()" in out.violation.message, out.violation.message
    assert out.final_state == {"observe() failed": "see above"}


def test_a_generator_run_op_that_returns_no_generator_is_one_paragraph() -> None:
    with pytest.raises(BackendFault) as info:
        run_schedule(_g(), backend(run_op=lambda self, ctx, op, args: None), schedule(), RunOptions("6.18"))
    msg = str(info.value)
    assert msg.startswith("backend 'bad': run_op('kvm_make_request') returned NoneType None; a generator "
                          "machine's run_op returns a generator"), msg
    assert "\n" not in msg


_G: list[Any] = []


def _g() -> Any:
    return _G[0]


@pytest.fixture(autouse=True)
def _remember(g: Any) -> None:
    if not _G:
        _G.append(g)


HANGING = textwrap.dedent('''
    import threading
    from pytest_kvmconf import Point
    from pytest_kvmconf.scheduling import point
    from pytest_kvmconf.facets.requests import KVM_REQUEST_MASK
    from pytest_kvmconf.spec.versions import VersionRange

    class Blocks:
        execution = "generator"
        def __init__(self, config):
            self.requests = set()
        def run_op(self, ctx, op, args):
            return getattr(self, op)(**args)
        def kvm_make_request(self, req, vcpu, state=None):
            threading.Event().wait()  # forever
            yield Point("never")
        def observe(self):
            return {"vcpus": [{"requests": frozenset(self.requests)}]}
        def close(self):
            pass

    class Spins(Blocks):
        execution = "threads"
        def kvm_make_request(self, req, vcpu, state=None):
            while True:  # forever, no scheduling point
                pass

    class Backend:
        description = "hangs"
        capabilities = frozenset({"requests"})
        archs = frozenset({"x86_64"})
        doc_versions = VersionRange("4.13")
        def __init__(self, machine):
            self.machine, self.name = machine, machine.__name__.lower()
        def new_machine(self, config):
            return self.machine(config)

    def blocks():
        return Backend(Blocks)

    def spins():
        return Backend(Spins)
''')


@pytest.mark.parametrize("factory", ["blocks", "spins"])
def test_pytest_exits_when_a_backend_hangs_for_good(pytester: pytest.Pytester, factory: str) -> None:
    pytester.makepyfile(hanging=HANGING)
    (pytester.path / "bad.toml").write_text(SPEC)
    pytester.syspathinsert()
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", f"--kvm-backend=hanging:{factory}", "--kvm-no-bundled-specs",
        "--kvm-specs=bad.toml", "--kvm-point-timeout=0.5", "--kvm-profile=quick", "-k", "TOY-01",
        timeout=120)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    text = result.stdout.str()
    assert "hang" in text and ("interrupted" if factory == "blocks" else "abandoned") in text, text
    assert "Traceback" not in text and "INTERNALERROR" not in text, text


STRANDING = textwrap.dedent('''
    import atexit
    import sys
    import threading
    from pytest_kvmconf import Point
    from pytest_kvmconf.facets.requests import KVM_REQUEST_MASK
    from pytest_kvmconf.spec.versions import VersionRange

    atexit.register(lambda: sys.stderr.write("the backend's atexit handler ran\\n"))

    def helper_waits_forever(gate):
        gate.wait()  # nobody sets it

    def strand(name):
        threading.Thread(target=helper_waits_forever, args=(threading.Event(),), name=name, daemon=False).start()

    class Correct:
        execution = "generator"
        def __init__(self, config):
            self.requests = set()
        def run_op(self, ctx, op, args):
            return getattr(self, op)(**args)
        def kvm_make_request(self, req, vcpu, state=None):
            self.requests.add(req & KVM_REQUEST_MASK)
            yield Point("set_bit(req, &vcpu->requests)")
        def observe(self):
            return {"vcpus": [{"requests": frozenset(self.requests)}]}
        def close(self):
            pass

    class Lingers(Correct):
        """Correct, but its first machine starts a non-daemon helper that nothing ever stops."""
        started = []
        def __init__(self, config):
            super().__init__(config)
            if not Lingers.started:
                Lingers.started.append(strand("lingering-helper"))

    class Strands(Correct):
        """Thread-style: the operation starts a non-daemon helper, then blocks for good."""
        execution = "threads"
        def kvm_make_request(self, req, vcpu, state=None):
            strand("stranded-helper")
            threading.Event().wait()

    class Backend:
        description = "leaves a non-daemon thread running"
        capabilities = frozenset({"requests"})
        archs = frozenset({"x86_64"})
        doc_versions = VersionRange("4.13")
        def __init__(self, machine):
            self.machine, self.name = machine, machine.__name__.lower()
        def new_machine(self, config):
            return self.machine(config)

    def lingers():
        return Backend(Lingers)

    def starts_a_service():
        """Correct machines, but its factory starts a non-daemon thread that never ends."""
        strand("service-thread")
        return Backend(Correct)

    def strands():
        return Backend(Strands)
''')

USER_THREAD = textwrap.dedent('''
    import pathlib
    import threading
    import time

    def test_starts_a_slow_non_daemon_thread():
        def finish():
            time.sleep(1.5)
            pathlib.Path("user-thread-finished").write_text("yes")
        threading.Thread(target=finish, name="users-own").start()
''')


@pytest.mark.parametrize("factory, helper, ret", [
    ("lingers", "lingering-helper", pytest.ExitCode.OK),
    ("strands", "stranded-helper", pytest.ExitCode.TESTS_FAILED),
    ("starts_a_service", "service-thread", pytest.ExitCode.OK),
])
def test_pytest_exits_when_a_backend_leaves_a_non_daemon_thread_behind(
        pytester: pytest.Pytester, factory: str, helper: str, ret: pytest.ExitCode) -> None:
    """Python joins every non-daemon thread at exit: one a backend left blocked forever held up
    pytest for good. Now it is named with its position, pytest's exit status is kept, atexit
    handlers run, and the user's own non-daemon thread is still waited for."""
    pytester.makepyfile(stranding=STRANDING, test_user=USER_THREAD)
    (pytester.path / "bad.toml").write_text(SPEC)
    pytester.syspathinsert()
    start = time.monotonic()
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", f"--kvm-backend=stranding:{factory}", "--kvm-no-bundled-specs",
        "--kvm-specs=bad.toml", "--kvm-point-timeout=0.5", "--kvm-profile=quick", "-k", "TOY-01 or user",
        "test_user.py", timeout=120)
    assert time.monotonic() - start < 120
    assert result.ret == ret, result.stdout.str()
    out, err = result.stdout.str(), result.stderr.str()
    assert "in helper_waits_forever" in out, out
    if factory == "starts_a_service":  # born in the factory, before any guarantee ran
        assert f"'{helper}' (non-daemon; left by backend 'stranding:{factory}' in its set-up, at stranding.py:" \
            in out, out
    else:
        assert f"'{helper}' (non-daemon; left by backend '{factory}' in TOY-01, at stranding.py:" in out, out
        warned = f"BackendWarning: backend stranding:{factory} left 1 thread(s) of its own running after TOY-01: "
        assert warned + f"'{helper}'" in out, out  # on the test itself: under xdist only this gets through
    assert "exiting without waiting for 1 non-daemon thread(s)" in err and helper in err, err
    assert "the backend's atexit handler ran" in err, err
    assert (pytester.path / "user-thread-finished").read_text() == "yes"
    assert "Traceback" not in out + err and "INTERNALERROR" not in out, out + err


# -- backend methods that raise or return the wrong type -------------------------------------

def _raise(*args: Any, **kwargs: Any) -> Any:
    raise OSError(5, "the device went away")


@pytest.mark.parametrize("b, method, says", [
    (type("B", (Backend,), {"new_machine": _raise})(), "new_machine()", "raised OSError"),
    (type("B", (Backend,), {"new_machine": lambda self, config: None})(), "new_machine()", "returned NoneType"),
    (backend(observe=_raise), "observe()", "raised OSError"),
    (backend(observe=lambda self: [1, 2]), "observe()", "returned list"),
    (backend(close=_raise), "close()", "raised OSError"),
])
def test_backend_methods_that_fail_are_one_paragraph_naming_backend_and_method(b: Any, method: str,
                                                                                says: str) -> None:
    with pytest.raises(BackendFault) as info:
        run_schedule(_g(), b, schedule(), RunOptions("6.18"))
    msg = str(info.value)
    assert f"backend 'bad': {method} {says}" in msg, msg
    assert "\n" not in msg and len(msg) < 600 and "has no value" not in msg, msg


def test_a_failing_backend_method_ends_the_search_with_that_message() -> None:
    with pytest.raises(BackendFault, match="backend 'bad': observe\\(\\) returned list"):
        explore(_g(), backend(observe=lambda self: [1]), RunOptions("6.18"), base=QUICK)


@pytest.mark.parametrize("attr, value, says", [
    ("capabilities", "requests", "capabilities is str"),
    ("archs", None, "archs is NoneType"),
    ("doc_versions", "4.13", "doc_versions is str"),
    ("name", 7, "name is int"),
])
def test_wrong_typed_declarations_are_refused_at_registration(attr: str, value: Any, says: str) -> None:
    cls = type("B", (Backend,), {attr: value})
    with pytest.raises(BackendError, match=f"backend 'x': {says}"):
        resolve("x", {"x": cls})


def test_a_declaration_that_raises_is_refused_at_registration() -> None:
    cls = type("B", (Backend,), {"capabilities": property(lambda self: 1 / 0)})
    with pytest.raises(BackendError, match="backend 'x': reading its declarations raised ZeroDivisionError"):
        resolve("x", {"x": cls})


# -- leaks and flakiness ---------------------------------------------------------------

def test_a_backend_leaking_fds_per_machine_is_reported() -> None:
    opened: list[int] = []

    def init(self: Any, config: Any) -> None:
        Machine.__init__(self, config)
        opened.append(os.open(os.devnull, os.O_RDONLY))

    try:
        with pytest.raises(BackendFault, match="backend 'bad' leaks per machine: .* more open file descriptors"):
            explore(_g(), backend(__init__=init), RunOptions("6.18"), base=QUICK)
    finally:
        for fd in opened:
            os.close(fd)


def test_a_backend_leaking_threads_per_machine_is_reported() -> None:
    stop = threading.Event()

    def init(self: Any, config: Any) -> None:
        Machine.__init__(self, config)
        threading.Thread(target=stop.wait, name="leaked-helper", daemon=True).start()

    try:
        with pytest.raises(BackendFault, match="leaks per machine: .* thread\\(s\\) still running \\(.*leaked-helper"):
            explore(_g(), backend(__init__=init), RunOptions("6.18"), base=QUICK)
    finally:
        stop.set()


def test_a_correct_backend_is_not_called_leaky() -> None:
    explore(_g(), Backend(), RunOptions("6.18"), base=QUICK)


def test_a_violation_that_does_not_reproduce_is_reported_with_its_timeline() -> None:
    made = [0]

    def kvm_make_request(self: Any, req: int, vcpu: int, state: Any = None) -> Any:
        made[0] += 1
        if made[0] != 1:  # only the very first machine loses the request
            self.requests.add(req & KVM_REQUEST_MASK)
        yield Point("set_bit(req, &vcpu->requests)")

    with pytest.raises(ViolationFound) as info:
        explore(_g(), backend(kvm_make_request=kvm_make_request), RunOptions("6.18"),
                base=settings(max_examples=5, database=None))
    exc = info.value
    assert "did not reproduce" in exc.note
    assert exc.outcome.timeline and exc.outcome.params and exc.outcome.violation.kind == "final"


FLAKY = textwrap.dedent('''
    from pytest_kvmconf import Point
    from pytest_kvmconf.spec.versions import VersionRange

    made = [0]

    class Flaky:
        execution = "generator"
        def __init__(self, config):
            self.requests = set()
        def run_op(self, ctx, op, args):
            return getattr(self, op)(**args)
        def kvm_make_request(self, req, vcpu, state=None):
            made[0] += 1
            if made[0] != 1:  # only the very first machine loses the request
                self.requests.add(req & 0xFF)
            yield Point("set_bit(req, &vcpu->requests)")
        def observe(self):
            return {"vcpus": [{"requests": frozenset(self.requests)}]}
        def close(self):
            pass

    class Backend:
        name = "flaky"
        description = "loses the first request it is given"
        capabilities = frozenset({"requests"})
        archs = frozenset({"x86_64"})
        doc_versions = VersionRange("4.13")
        def new_machine(self, config):
            return Flaky(config)
''')


def test_a_flaky_violation_reads_like_any_violation_in_pytest(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(flaky=FLAKY)
    (pytester.path / "bad.toml").write_text(SPEC)
    pytester.syspathinsert()
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--kvm-backend=flaky:Backend", "--kvm-no-bundled-specs",
        "--kvm-specs=bad.toml", "--kvm-profile=quick", "-k", "TOY-01", timeout=120)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    text = result.stdout.str()
    assert "This violation did not reproduce" in text and "--kvm-replay=TOY-01@" in text, text
    assert "FlakyFailure" not in text and "Traceback" not in text, text
