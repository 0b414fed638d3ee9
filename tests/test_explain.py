"""A failed condition shows the values of its parts, raw and named, like pytest's assert rewriting."""

from __future__ import annotations

import pytest

from pytest_kvmconf.explain import explain
from pytest_kvmconf.facets.requests import IN_GUEST_MODE, KVM_REQ_TLB_FLUSH, OUTSIDE_GUEST_MODE
from pytest_kvmconf.report import named_value

VCPUS = [{"id": 0, "mode": IN_GUEST_MODE, "requests": frozenset(), "kicks": 0},
         {"id": 1, "mode": OUTSIDE_GUEST_MODE, "requests": frozenset({KVM_REQ_TLB_FLUSH & 0xff}), "kicks": 2}]
ENV = {"vcpus": VCPUS, "nr_vcpus": 2, "seen": False, "req": KVM_REQ_TLB_FLUSH, "KVM_REQUEST_MASK": 0xff}


def named(text: str, value: object) -> str:
    return named_value(text, value, "6.18")


def test_final_and_shows_its_first_false_part() -> None:
    assert explain("nr_vcpus == 2 and seen", ENV, expected=True) == ["seen = False"]


def test_comparison_shows_both_sides_with_the_names_of_values() -> None:
    lines = explain("vcpus[0].mode == OUTSIDE_GUEST_MODE", {**ENV, "OUTSIDE_GUEST_MODE": 0}, True, named)
    assert lines == ["vcpus[0].mode = 1 (IN_GUEST_MODE)", "OUTSIDE_GUEST_MODE = 0"]


def test_arithmetic_shows_what_it_read() -> None:
    lines = explain("(req & KVM_REQUEST_MASK) in vcpus[0].requests", ENV, True, named)
    assert lines[0].startswith("req & KVM_REQUEST_MASK = 0x0 (KVM_REQ_TLB_FLUSH")
    assert "KVM_REQUEST_MASK = 255" in lines and "vcpus[0].requests = {}" in lines


def test_forbidden_outcome_shows_every_part_that_made_it_true() -> None:
    lines = explain("vcpus[0].mode == 1 and not seen", ENV, expected=False)
    assert lines == ["vcpus[0].mode = 1", "seen = False"]


def test_all_names_the_element_that_breaks_it() -> None:
    lines = explain("all(vcpus[i].kicks == 0 for i in range(nr_vcpus))", ENV, expected=True)
    assert lines == ["all(...) is decided by the element where i = 1:", "vcpus[i].kicks = 2"]


def test_any_that_should_not_hold() -> None:
    lines = explain("any(v.kicks > 1 for v in vcpus)", ENV, expected=False)
    assert lines[0] == "any(...) is decided by the element where v = " + str(VCPUS[1]) + ":"
    assert lines[1] == "v.kicks = 2"


def test_or_shows_every_part() -> None:
    assert explain("seen or nr_vcpus > 2", ENV, expected=True) == ["seen = False", "nr_vcpus = 2"]


@pytest.mark.parametrize("source", ["vcpus[5].mode == 1", "nosuch > 1"])
def test_a_part_that_cannot_be_evaluated_says_so(source: str) -> None:
    assert any("could not be evaluated" in line for line in explain(source, ENV, expected=True))
