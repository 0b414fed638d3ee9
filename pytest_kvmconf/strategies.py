"""spec -> hypothesis strategy of :class:`~pytest_kvmconf.engine.schedule.Schedule`.

Everything is drawn up front, as one value composed from the spec's data, so a
schedule is plain data that shrinks well and replays without hypothesis.
"""

from __future__ import annotations

from hypothesis import strategies as st

from . import facets
from .engine.schedule import Schedule
from .spec.model import Guarantee, Param

#: At most this many preemptions per schedule (each a pair on the tape). Few preemptions find
#: the bugs of these protocols sooner (measured: benchmarks/bench_engine.py).
MAX_PREEMPTIONS = 3
#: Largest "go on for k decisions" between two preemptions.
MAX_RUN = 12
#: Largest thread choice: large enough to reach any other thread of a spec.
MAX_THREAD = 7


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
