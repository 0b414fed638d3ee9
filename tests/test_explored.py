"""engine/explored.py: recurring schedule data get their one-preemption interleavings, each once."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import pytest

from pytest_kvmconf.engine import explored
from pytest_kvmconf.engine.explored import Recurring, TapePicker
from pytest_kvmconf.engine.schedule import Recording
from pytest_kvmconf.engine.search import PctPicker, parse_search


def run(lengths: dict[str, int], picker) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """A toy deterministic program: each thread takes ``lengths[t]`` steps; every thread with
    steps left is runnable. Returns the order the steps ran in and the run's canonical tape."""
    left, order, current = dict(lengths), [], None
    rec = Recording(picker)
    while any(left.values()):
        runnable = [t for t in lengths if left[t]]
        current = rec.pick(runnable, current)
        left[current] -= 1
        order.append(current)
    return tuple(order), rec.writer.tape()


def switches(order: tuple[str, ...], lengths: dict[str, int]) -> int:
    """Picks other than the Chooser's default after the start: a preemption (the current
    thread could go on), or, where it could not, a thread other than the first runnable."""
    left, n = dict(lengths), 0
    for a, b in itertools.pairwise(order):
        left[a] -= 1
        default = a if left[a] else next(t for t in lengths if left[t])
        n += b != default
    return n


@pytest.mark.parametrize("lengths", [{"a": 3, "b": 2}, {"a": 4, "b": 1, "c": 2}, {"a": 1}])
def test_recurring_data_run_every_one_preemption_interleaving_once(lengths: dict[str, int]) -> None:
    rng = random.Random(0)
    recurring, data = Recurring(share=1.0), ("params", "steps")
    assert recurring.tape_for(data, rng) is None  # first time: the search's own picker
    enumerated = []
    while (picker := recurring.tape_for(data, rng)) is not None:
        order, tape = run(lengths, picker)
        recurring.ran(data, picker, tape)
        enumerated.append(order)
    every = {o for o in set(itertools.permutations([t for t in lengths for _ in range(lengths[t])]))
             if switches(o, lengths) <= 1}
    assert len(enumerated) == len(set(enumerated)), "an interleaving ran twice"
    assert set(enumerated) == every


def test_interleavings_other_pickers_ran_are_not_run_again() -> None:
    rng = random.Random(1)
    lengths = {"a": 3, "b": 3}
    recurring, data = Recurring(share=1.0), "data"
    recurring.tape_for(data, rng)
    opening = recurring.tape_for(data, rng)  # from entity 0, no switch: the tapes to come
    recurring.ran(data, opening, run(lengths, opening)[1])
    ran_by_pct = set()
    for _ in range(3):  # PCT's runs of the same data, while the enumeration is under way
        order, tape = run(lengths, PctPicker(rng, 2, 6))
        recurring.ran(data, PctPicker(rng, 2, 6), tape)
        ran_by_pct.add(order)
    again = []
    while (picker := recurring.tape_for(data, rng)) is not None:
        order, tape = run(lengths, picker)
        recurring.ran(data, picker, tape)
        again.append(order)
    assert again and not set(again) & ran_by_pct


def test_data_met_once_are_left_to_the_search_and_memory_is_bounded(monkeypatch) -> None:
    monkeypatch.setattr(explored, "MAX_DATA", 8)
    rng = random.Random(2)
    recurring = Recurring(share=1.0)
    assert all(recurring.tape_for(i, rng) is None for i in range(100))
    assert len(recurring.data) == 8
    assert isinstance(recurring.tape_for(99, rng), TapePicker)  # kept: among the newest
    assert recurring.tape_for(0, rng) is None  # forgotten: counts as new


def test_mixed_enumerates_only_where_it_is_given_the_data() -> None:
    search = parse_search("mixed")
    rng = random.Random(3)
    first = search.random_first
    data = (("sp", "indirect"),), ()
    # Without data (a backend that does not replay, or free mode) every PCT-phase pick is PCT's.
    assert all(isinstance(search.picker(rng, first + i), PctPicker) for i in range(50))
    pickers = [search.picker(rng, first + i, data) for i in range(50)]
    assert isinstance(pickers[0], PctPicker) and isinstance(pickers[1], TapePicker)
    assert pickers[1].tape == (0,)
    # The random phase is the random search's, data or not.
    assert not isinstance(search.picker(rng, first - 1, data), (PctPicker, TapePicker))


def test_a_violation_the_enumeration_finds_replays_exactly_from_its_tape() -> None:
    """SPTE-02's ABA needs one preemption of vcpu0 at one of a few points: the enumeration of its
    one-switch interleavings finds it, and the tape written down replays it with the ordinary
    Chooser (what --kvm-replay and the shrinker run)."""
    from pytest_kvmconf.engine.runner import RunOptions, run_schedule
    from pytest_kvmconf.engine.shrink import same_failure
    from pytest_kvmconf.strategies import Drawer

    from .bite import guarantees, newest_text
    from .broken.spte import IndirectFastPathUnpinned
    from .broken.spte import backend as spte_backend

    g = guarantees()["SPTE-02"]
    version = newest_text("SPTE-02")
    backend, options = spte_backend(IndirectFastPathUnpinned), RunOptions(version)
    rng = random.Random(4)
    schedule = next(s for s in iter(Drawer(g, version, rng).schedule, None)
                    if dict(s.params)["sp"] == "indirect")
    recurring, data = Recurring(share=1.0), (schedule.params, schedule.sequences)
    recurring.tape_for(data, rng)
    found = None
    while found is None and (picker := recurring.tape_for(data, rng)) is not None:
        rec = Recording(picker)
        outcome = run_schedule(g, backend, schedule, options, rec)
        recurring.ran(data, picker, rec.writer.tape())
        if outcome.violation is not None:
            found = replace(schedule, tape=rec.writer.tape()), outcome.violation
    assert found is not None, "no one-switch interleaving of SPTE-02 shows the ABA"
    again = run_schedule(g, backend, found[0], options)
    assert same_failure(again.violation, found[1])


def test_data_are_the_same_but_for_parameters_of_many_values() -> None:
    from pytest_kvmconf.engine.explored import KEY_VALUES, data_keys
    from pytest_kvmconf.engine.schedule import Schedule

    from .bite import NEWEST, guarantees

    key = data_keys(guarantees()["REQ-13"], NEWEST)  # nr: 8 request numbers; flags: 4 values
    assert KEY_VALUES == 4
    a = Schedule("REQ-13", (("nr", 0), ("flags", 256)), (), ())
    assert key(a) == key(replace(a, params=(("nr", 3), ("flags", 256))))
    assert key(a) != key(replace(a, params=(("nr", 0), ("flags", 0))))
    key = data_keys(guarantees()["MP-01"], NEWEST)  # every parameter of MP-01 counts, and its steps
    b = Schedule("MP-01", (("n", 1), ("irqchip", True), ("program", "hlt")), (("vcpu", ((0, ()),)),), ())
    assert key(b) != key(replace(b, params=(("n", 1), ("irqchip", False), ("program", "hlt"))))
    assert key(b) != key(replace(b, sequences=(("vcpu", ((2, ()),)),)))
