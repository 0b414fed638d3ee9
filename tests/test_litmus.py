"""The lkmm memory model against the kernel's own litmus tests (tests/litmus/lkmm.toml).

Each translated test must get the verdict its kernel file states: a "Never" outcome is not reached
within the budget (benchmarks/bench_memory.py --litmus enumerates every schedule of the small
ones), a "Sometimes" outcome is reached.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings

from pytest_kvmconf.backends.reference import ReferenceBackend
from pytest_kvmconf.engine.runner import RunOptions, run_schedule
from pytest_kvmconf.spec.loader import load_file
from pytest_kvmconf.spec.model import Guarantee
from pytest_kvmconf.strategies import schedule_strategy

from .enumerate import walk

LITMUS = Path(__file__).resolve().parent / "litmus" / "lkmm.toml"
#: Schedules per test. A Never test runs them all (benchmarks/bench_memory.py runs many more, and
#: every schedule where that is cheap); a Sometimes test stops at the first that reaches its
#: outcome. The slowest, Z6.0+pooncerelease+poacquirerelease+fencembonceonce, needs a store
#: ordered before a write it had not seen plus three reads-from links: 20 to 2,100 examples
#: over seeds 0-4; IRIW+poonceonces+OnceOnce needs both readers' loads reordered: 116 to 754.
NEVER_BUDGET = 200
SOMETIMES_BUDGET = 5000
#: A Never test of at most this many accesses in all has every schedule run (the Co* tests: 20 to
#: 2,184 schedules; a fourth access makes it thousands more, benchmarks/bench_memory.py runs those).
EVERY_SCHEDULE_UP_TO = 3


@cache
def litmus() -> dict[str, Guarantee]:
    return {g.section: g for g in load_file(LITMUS)}


class _Found(Exception):
    pass


def search(g: Guarantee, budget: int) -> tuple[str, int]:
    """("violated", n) for a `never` outcome reached, ("reached", n) for an `exists` outcome reached
    (n: schedules run), ("not reached", budget) when no schedule reached it."""
    count = 0
    backend, options = ReferenceBackend(), RunOptions("6.18", memory_model="lkmm")

    @seed(0)
    @settings(max_examples=budget, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(schedule_strategy(g, "6.18"))
    def hunt(schedule):
        nonlocal count
        count += 1
        outcome = run_schedule(g, backend, schedule, options)
        if outcome.violation is not None:
            raise _Found("violated")
        if outcome.reached:
            raise _Found("reached")

    try:
        hunt()
    except _Found as found:
        return str(found), count
    return "not reached", count


@pytest.mark.parametrize("name", sorted(litmus()))
def test_verdict_agrees_with_the_kernel(name: str) -> None:
    g = litmus()[name]
    stated = g.quote.split(".")[0]
    kinds = {c.kind for c in g.checks}
    assert stated in ("Result: Never", "Result: Sometimes") and \
        kinds == ({"never"} if stated == "Result: Never" else {"exists"}), (stated, kinds)
    never = stated == "Result: Never"
    verdict, n = search(g, NEVER_BUDGET if never else SOMETIMES_BUDGET)
    if never:
        assert verdict == "not reached", f"{name}: the kernel says Never, the lkmm model reached it after {n}"
        if sum(len(t.steps) for t in g.threads) <= EVERY_SCHEDULE_UP_TO:
            runs, complete, hit = walk(g, ReferenceBackend(), RunOptions("6.18", memory_model="lkmm"),
                                       10_000, lambda o: o.violation is not None)
            assert hit is None, f"{name}: the kernel says Never, schedule {runs} of the enumeration reached it"
            assert complete, f"{name}: more than {runs} schedules, raise the limit or lower EVERY_SCHEDULE_UP_TO"
    else:
        assert verdict == "reached", f"{name}: the kernel says Sometimes, none of {n} schedules reached it"


def test_the_translation_covers_the_subset() -> None:
    assert len(litmus()) == 32
