"""spec -> :class:`~pytest_kvmconf.engine.schedule.Schedule`: the values a schedule's
parameters and generated steps may take, drawn uniformly (:func:`draw_schedule`,
for the engine's own searches) or as a hypothesis strategy (:func:`schedule_strategy`,
for ``--kvm-search=hypothesis``).

Everything but the interleaving is drawn up front, so a schedule is plain data
that shrinks well and replays without hypothesis.
"""

from __future__ import annotations

from collections.abc import Sequence
from random import Random
from typing import Any

from hypothesis import strategies as st

from . import facets
from .engine.refused import REDRAWS, Refusals
from .engine.schedule import Schedule
from .spec.model import Guarantee, Param

#: At most this many preemptions per schedule (each a pair on the tape). Few preemptions find
#: the bugs of these protocols sooner (measured: benchmarks/bench_engine.py).
MAX_PREEMPTIONS = 3
#: Largest "go on for k decisions" between two preemptions.
MAX_RUN = 12
#: Largest thread choice: large enough to reach any other thread of a spec.
MAX_THREAD = 7


def param_values(p: Param, doc_version: str) -> Sequence[Any]:
    """Every value ``p`` may take, simplest first (what a shrinker moves towards)."""
    if p.kind == "range":
        return range(p.low, p.high + 1)
    if p.kind == "bool":
        return (False, True)
    if p.kind == "set":
        return facets.all_named_sets()[p.set_name](doc_version)
    return p.values


#: Larger domains (a wide integer range) are drawn independently: a deck would hold them all.
DECK_LIMIT = 1024


class Drawer:
    """Draws the parameters and generated steps of a search's schedules, uniformly.

    ``decks``: each parameter's values (and the kind of step at each position of a sequence)
    are dealt from a shuffled deck, refilled when empty, instead of drawn independently: every
    value of an n-valued parameter comes up once in n schedules, so a bug needing one value is
    not left to chance in the tail. ``long``: the share of schedules whose sequences have their
    longest length (more steps, more patterns for a bug to need; the shrinker removes the
    extra ones).
    """

    def __init__(self, g: Guarantee, doc_version: str, rng: Random, decks: bool = False,
                 long: float = 0.0, refusals: Refusals | None = None):
        self.g, self.doc_version, self.rng = g, doc_version, rng
        self.decks: dict[Any, list[int]] | None = {} if decks else None
        self.long = long
        self.refusals = refusals

    def _index(self, key: Any, n: int) -> int:
        if self.decks is None or not 1 < n <= DECK_LIMIT:
            return self.rng.randrange(n)
        deck = self.decks.get(key)
        if not deck:
            deck = self.decks[key] = list(range(n))
            self.rng.shuffle(deck)
        return deck.pop()

    def params(self, params: tuple[Param, ...], where: Any) -> tuple[tuple[str, Any], ...]:
        out = []
        for p in params:
            values = param_values(p, self.doc_version)
            i = self._index((where, p.name), len(values))
            if where is None and self.refusals is not None and len(values) <= DECK_LIMIT:
                # A schedule parameter's value under which the backend refused more generated
                # steps is dealt again with the chance it falls short (engine/refused.py).
                keep = self.refusals.keep(p.name, values[i])
                if keep < 1.0 and self.rng.random() >= keep:
                    i = self._index((where, p.name), len(values))
            out.append((p.name, values[i]))
        return tuple(out)

    def schedule(self) -> Schedule:
        """A schedule with an empty tape: the search's scheduler makes the picks."""
        rng, seqs = self.rng, []
        # The parameters are the context a refusal is known in, so they come first where
        # refusals steer the steps (the plain drawer keeps its order: the random search's
        # schedules for a seed stay what they were).
        params = self.params(self.g.params, None) if self.refusals is not None else None
        for t in self.g.threads:
            if t.sequence is None:
                continue
            seq = t.sequence
            kinds = len(seq.choice_params)
            length = seq.max_length if rng.random() < self.long else rng.randint(seq.min_length, seq.max_length)
            steps = []
            for at in range(length):
                # One deck per position: a deck shared by a schedule's steps would deal them
                # without replacement, and a bug needing the same step twice would be rare.
                i = self._index((t.name, at), kinds)
                drawn = self.params(seq.choice_params[i], (t.name, at, i))
                if self.refusals is not None and seq.choice_params[i]:
                    for _ in range(REDRAWS):
                        if not self.refusals.only_refused(params, (t.name, i, drawn)):
                            break
                        drawn = self.params(seq.choice_params[i], (t.name, at, i))
                steps.append((i, drawn))
            seqs.append((t.name, tuple(steps)))
        if params is None:
            params = self.params(self.g.params, None)
        return Schedule(self.g.id, params, tuple(seqs), ())


def param_strategy(p: Param, doc_version: str) -> st.SearchStrategy:
    if p.kind == "range":
        return st.integers(p.low, p.high)
    if p.kind == "bool":
        return st.booleans()
    if p.kind == "set":
        return st.sampled_from(facets.all_named_sets()[p.set_name](doc_version))
    return st.sampled_from(p.values)


def params_strategy(params: tuple[Param, ...], doc_version: str) -> st.SearchStrategy:
    return st.tuples(*(st.tuples(st.just(p.name), param_strategy(p, doc_version)) for p in params))


def schedule_strategy(g: Guarantee, doc_version: str) -> st.SearchStrategy[Schedule]:
    seqs = []
    for t in g.threads:
        if t.sequence is None:
            continue
        choice = st.one_of(*(
            st.tuples(st.just(i), params_strategy(ps, doc_version))
            for i, ps in enumerate(t.sequence.choice_params)
        ))
        steps = st.lists(choice, min_size=t.sequence.min_length, max_size=t.sequence.max_length)
        seqs.append(st.tuples(st.just(t.name), steps.map(tuple)))
    return st.builds(
        Schedule,
        guarantee=st.just(g.id),
        params=params_strategy(g.params, doc_version),
        sequences=st.tuples(*seqs),
        tape=tape_strategy(),
    )


def tape_strategy() -> st.SearchStrategy[tuple[int, ...]]:
    """The choice tape read by :class:`~pytest_kvmconf.engine.schedule.Chooser`:
    a starting thread, then (run length, thread) pairs, one per preemption."""
    # Short runs are likelier: the windows of these protocols are a few steps wide.
    run = st.one_of(st.integers(0, 3), st.integers(0, MAX_RUN))
    pair = st.tuples(run, st.integers(0, MAX_THREAD))
    return st.tuples(st.integers(0, MAX_THREAD), st.lists(pair, max_size=MAX_PREEMPTIONS)).map(
        lambda t: (t[0], *(x for p in t[1] for x in p)))
