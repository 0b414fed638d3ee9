"""Live backends: an example whose evidence did not come in time is undecided, never a verdict.

* an operation raising UndecidedUnderLoad discards the example (counted, not failed);
* a few undecided examples among decided ones: the guarantee passes, with the figure;
* most examples undecided: CouldNotDecide, which the plugin reports as a skip with the figures;
* a backend that does not replay (``replays = False``) keeps its first violation as it
  happened: no shrinking through hypothesis, no FlakyFailure when a rerun passes.
"""

from __future__ import annotations

import itertools

import pytest

from pytest_kvmconf.backends.reference import ReferenceBackend, ReferenceMachine
from pytest_kvmconf.engine.explore import CouldNotDecide, ViolationFound
from pytest_kvmconf.errors import UndecidedUnderLoad

from .bite import stats, verdict


def counting_backend(undecided_every: int, replays: bool = True, broken_from: int | None = None):
    """The reference backend, except that every ``undecided_every``-th machine gives up waiting,
    and (``broken_from``) machines from that count on lose every request."""
    count = itertools.count()

    class Machine(ReferenceMachine):
        def __init__(self, config):  # type: ignore[no-untyped-def]
            super().__init__(config)
            self.n = next(count)

        def kvm_make_request(self, ctx, req, vcpu, state=None):  # type: ignore[no-untyped-def]
            if undecided_every and self.n % undecided_every == 0:
                raise UndecidedUnderLoad("the kernel showed nothing within the bound (test)")
            if broken_from is not None and self.n >= broken_from:
                yield from ()
                return None
            return (yield from super().kvm_make_request(ctx, req, vcpu, state))

    b = ReferenceBackend()
    b.machine_class = Machine
    b.replays = replays  # type: ignore[attr-defined]
    return b


def test_a_few_undecided_examples_are_counted_not_failed() -> None:
    s = stats("REQ-01", counting_backend(undecided_every=7), max_examples=40)
    assert 0 < s.undecided < s.examples / 2
    assert "within the bound" in (s.undecided_why or "")


def test_mostly_undecided_is_could_not_decide_with_the_figures() -> None:
    found = verdict("REQ-01", counting_backend(undecided_every=1), max_examples=40)
    assert isinstance(found, CouldNotDecide)
    assert found.stats is not None and found.stats.undecided * 2 > found.stats.examples
    # It stops early: every undecided example may cost a whole bound on a live backend.
    assert found.stats.examples <= 12
    assert "could not decide under load" in str(found) and "of" in str(found)


def test_a_backend_that_does_not_replay_keeps_its_first_violation() -> None:
    # Machines 0-4 are correct, every later one loses requests: hypothesis' replay of the
    # failing example would see a different machine. The violation is kept, not Flaky.
    found = verdict("REQ-01", counting_backend(undecided_every=0, replays=False, broken_from=5),
                    max_examples=60, shrink=True)
    assert isinstance(found, ViolationFound), found


def test_the_plugin_skips_an_undecided_guarantee_with_the_figures(pytester: pytest.Pytester) -> None:
    pytester.makeconftest('''
import itertools
from pytest_kvmconf.errors import UndecidedUnderLoad
from pytest_kvmconf.backends.reference import ReferenceBackend, ReferenceMachine

class Machine(ReferenceMachine):
    def kvm_make_request(self, ctx, req, vcpu, state=None):
        raise UndecidedUnderLoad("no evidence (test)")
        yield

def pytest_kvmconf_backends():
    def make():
        b = ReferenceBackend()
        b.name = "slow"
        b.machine_class = Machine
        return b
    return {"slow": make}
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--kvm-backend=slow", "-k", "REQ-01",
                                           "-rs")
    outcomes = result.parseoutcomes()
    assert outcomes.get("skipped") == 1 and not outcomes.get("failed"), result.stdout.str()
    result.stdout.fnmatch_lines(["*could not decide under load: * of * examples*"])
