"""The engine's small parts: the condition language, schedules, the chooser."""

from __future__ import annotations

import pytest

from pytest_kvmconf.engine.schedule import Chooser, Schedule
from pytest_kvmconf.facets import all_constants
from pytest_kvmconf.facets.requests import KVM_REQUEST_ARCH_BASE, KVM_REQUEST_MASK, arch_independent_requests
from pytest_kvmconf.spec.expr import EvalError, ExprError, parse


def test_expressions_evaluate_without_eval() -> None:
    e = parse("all(m != 1 for v in vcpus for m in v.modes if m) and len({1, 2} - {2}) == 1")
    assert e.evaluate({"vcpus": [{"modes": [0, 2]}, {"modes": []}]}) is True
    assert parse("x[1:3]").evaluate({"x": [0, 1, 2, 3]}) == [1, 2]
    assert parse("a if b else c").evaluate({"a": 1, "b": False, "c": 2}) == 2


@pytest.mark.parametrize("source", [
    "__import__('os')", "(lambda: 1)()", "x.__class__", "[y for y in x]", "open('f')", "f(x=1)",
    "x := 1", "",
])
def test_unsafe_or_unknown_syntax_is_rejected(source: str) -> None:
    with pytest.raises(ExprError):
        parse(source)


def test_unknown_names_are_rejected_at_parse_time() -> None:
    with pytest.raises(ExprError, match="unknown name 'nope'"):
        parse("all(v.x for v in vcpus) and nope", {"vcpus"}.__contains__)
    parse("all(v.x for v in vcpus)", {"vcpus"}.__contains__)  # generator names are bound


def test_evaluation_errors_are_reported_not_raised_raw() -> None:
    with pytest.raises(EvalError, match="no field 'missing'"):
        parse("v.missing").evaluate({"v": {"present": 1}})


def test_schedule_round_trips_through_its_replay_string() -> None:
    s = Schedule("REQ-04", (("r1", 768), ("flag", True)), (("api", ((1, (("first", False),)),)),), (1, 3, 0))
    assert Schedule.decode(s.encode()) == s
    with pytest.raises(ValueError, match="damaged"):
        Schedule.decode("REQ-04:notbase64!!")


def test_chooser_reads_the_tape_as_preemptions() -> None:
    a, b = "a", "b"
    c = Chooser((1, 2, 0))  # start with b; after 2 more decisions switch to the other
    assert c.pick([a, b], None) == b
    assert [c.pick([a, b], b), c.pick([a, b], b), c.pick([a, b], b)] == [b, b, a]
    assert c.pick([a, b], a) == a  # tape exhausted: no more switches
    assert c.pick([b], a) == b  # a blocked thread forces a switch without using the tape


def test_request_numbering_follows_the_document() -> None:
    # "The first 8 bits are reserved for architecture independent requests"
    for version in ("4.13", "6.18"):
        assert all(r & KVM_REQUEST_MASK < KVM_REQUEST_ARCH_BASE for r in arch_independent_requests(version))
    constants = all_constants()
    assert constants["KVM_REQUEST_ARCH_BASE"] == 8 and constants["KVM_REQUEST_MASK"] == 0xFF
