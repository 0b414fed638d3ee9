"""engine/refused.py: the mixed search learns which generated steps the backend refuses and deals
them less often, per parameter value, without ever ruling them out."""

from __future__ import annotations

import random
from collections import Counter

from pytest_kvmconf.backends.reference import ReferenceBackend
from pytest_kvmconf.engine.refused import Refusals, is_refusal
from pytest_kvmconf.engine.runner import RunOptions, run_schedule
from pytest_kvmconf.engine.schedule import Recording
from pytest_kvmconf.engine.search import RandomPicker
from pytest_kvmconf.strategies import Drawer, param_values

from .bite import NEWEST, guarantees

HALTED = ("vcpu", 1, (("s", 3),))
EINVAL_ANYWHERE = ("vcpu", 1, (("s", 7),))


def test_a_step_refused_with_one_value_is_not_held_against_another() -> None:
    r = Refusals()
    without, with_ = (("n", 1), ("irqchip", False)), (("n", 1), ("irqchip", True))
    r.learn(without, [(HALTED, -22), (EINVAL_ANYWHERE, -22)])
    assert r.only_refused(without, HALTED)
    # Refused only where irqchip was False: with an irqchip it was never refused.
    assert not r.only_refused(with_, HALTED)
    r.learn((("n", 2), ("irqchip", True)), [(EINVAL_ANYWHERE, -22), (HALTED, 0)])
    assert r.only_refused(with_, EINVAL_ANYWHERE)  # n=1 and irqchip=True each saw it refused
    assert not r.only_refused((("n", 2), ("irqchip", True)), HALTED)
    r.learn(without, [(EINVAL_ANYWHERE, 0)])  # accepted once with these values: no longer refused-only
    assert not r.only_refused(with_, EINVAL_ANYWHERE)
    assert is_refusal(-4) and not is_refusal(0) and not is_refusal({"ret": -4}) and not is_refusal(True)


def test_runs_report_what_each_generated_step_returned() -> None:
    g = guarantees()["MP-01"]
    drawer = Drawer(g, NEWEST, random.Random(0))
    backend = ReferenceBackend()
    seen = 0
    for _ in range(30):
        schedule = drawer.schedule()
        outcome = run_schedule(g, backend, schedule, RunOptions(NEWEST), Recording(RandomPicker(random.Random(1))))
        planned = {(t, c, drawn) for t, steps in schedule.sequences for c, drawn in steps}
        assert all(step in planned for step, _ in outcome.generated)
        sets = [result for (t, c, drawn), result in outcome.generated if (t, c) == ("vcpu", 1)]
        seen += len(sets)
        assert all(result in (0, -22) for result in sets)
    assert seen > 10


def test_refused_steps_come_up_less_often_but_still_come_up() -> None:
    g = guarantees()["MP-01"]
    values = param_values(g.threads[0].sequence.choice_params[1][0], NEWEST)
    refused_values = [v for v in values if v not in (0, 1, 2, 3, 4, 10)]

    def states_drawn(refusals: Refusals | None) -> Counter:
        drawer = Drawer(g, NEWEST, random.Random(2), decks=True, refusals=refusals)
        out: Counter = Counter()
        for _ in range(600):
            schedule = drawer.schedule()
            out.update(dict(drawn)["s"] for t, steps in schedule.sequences for c, drawn in steps
                       if t == "vcpu" and c == 1)
        return out

    r = Refusals()
    for n in (1, 2):
        for irqchip in (False, True):
            for program in ("busy", "hlt", "pio"):
                context = (("n", n), ("irqchip", irqchip), ("program", program))
                r.learn(context, [(("vcpu", 1, (("s", v),)), -22) for v in refused_values])
    plain, steered = states_drawn(None), states_drawn(r)
    share = lambda c, vs: sum(c[v] for v in vs) / sum(c.values())  # noqa: E731
    assert share(plain, refused_values) > 0.45
    assert 0.03 < share(steered, refused_values) < 0.15
    assert steered[3] > 1.6 * plain[3] * sum(steered.values()) / sum(plain.values())


def test_parameter_values_under_which_more_steps_are_refused_are_dealt_less_often() -> None:
    r = Refusals()
    step = ("vcpu", 0, ())
    for _ in range(20):
        r.learn((("irqchip", True),), [(step, 0)] * 24 + [(step, -22)])
        r.learn((("irqchip", False),), [(step, 0)] * 13 + [(step, -22)] * 7)
    assert r.keep("irqchip", True) == 1.0
    assert 0.15 < r.keep("irqchip", False) < 0.3  # (0.65 / 0.96) ** 4
    assert r.keep("n", 1) == 1.0  # nothing known of it: no lean
    g = guarantees()["MP-01"]
    drawer = Drawer(g, NEWEST, random.Random(3), decks=True, refusals=r)
    irqchip = Counter(dict(drawer.schedule().params)["irqchip"] for _ in range(1000))
    assert 0.1 < irqchip[False] / 1000 < 0.35, irqchip


def test_without_generated_steps_nothing_leans_and_the_draws_are_unchanged() -> None:
    """A spec with parameters but no generated steps (REQ-13) draws exactly as without refusals:
    the lean must not even consume randomness there."""
    g = guarantees()["REQ-13"]
    r = Refusals()
    r.learn((("nr", 1), ("flags", 0)), [])
    plain = Drawer(g, NEWEST, random.Random(5), decks=True)
    steered = Drawer(g, NEWEST, random.Random(5), decks=True, refusals=r)
    assert [plain.schedule() for _ in range(50)] == [steered.schedule() for _ in range(50)]
