"""Shrink a violating schedule of the engine's own searches to a minimal one.

Greedy, like hypothesis' shrinker but on the schedule's own structure: try simpler
candidates (fewer context switches, earlier switches, fewer and simpler generated steps,
simpler parameters), replay each, and keep one whenever it breaks the guarantee the same
way (same kind, same check) and is smaller. Each kept candidate's tape is rewritten in
canonical form by replaying it (schedule.Recording), so the result replays exactly.
Bounded by a number of replays.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from ..backend import Backend
from ..spec.model import Guarantee, Param
from ..strategies import param_values
from .records import Outcome, Violation
from .runner import RunOptions, run_schedule
from .schedule import Chooser, Recording, Schedule

#: Told of every replay: (the schedule, whether it failed, seconds, whether it was kept).
OnRun = Callable[[Schedule, bool, float, bool], None]

#: At most this many replays per shrink (a replay of the reference model takes about 1 ms).
SHRINK_RUNS = 1000


def same_failure(a: Violation | None, b: Violation) -> bool:
    return a is not None and a.kind == b.kind and a.check is b.check


class Shrinker:
    def __init__(self, g: Guarantee, backend: Backend, options: RunOptions, found: Outcome,
                 max_runs: int = SHRINK_RUNS, on_run: OnRun | None = None,
                 run: Callable[[Schedule, Any], Outcome] | None = None):
        self.g, self.backend, self.options = g, backend, options
        self.best = found
        self.runs, self.max_runs = 0, max_runs
        self.on_run = on_run
        self.run_one = run or (lambda s, chooser: run_schedule(g, backend, s, options, chooser))
        self.tried: set[str] = {found.schedule.encode()}
        seq = {t.name: t.sequence for t in g.threads if t.sequence is not None}
        self.sequences = seq

    # -- order -----------------------------------------------------------------------------

    def _index(self, p: Param, v: Any) -> int:
        values = param_values(p, self.options.doc_version)
        try:
            return values.index(v)
        except ValueError:
            return len(values)

    def key(self, s: Schedule) -> tuple:
        """Smaller is simpler: fewer switches first, then fewer generated steps, then earlier
        switches and lower targets, then simpler steps and parameters."""
        steps = []
        for name, drawn in s.sequences:
            seq = self.sequences.get(name)
            for choice, ps in drawn:
                params = seq.choice_params[choice] if seq is not None and choice < len(seq.choice_params) else ()
                steps.append((choice, *(self._index(p, v) for p, (_, v) in zip(params, ps))))
        params = tuple(self._index(p, v) for p, (_, v) in zip(self.g.params, s.params))
        return (len(s.tape), sum(len(d) for _, d in s.sequences), s.tape, tuple(steps), params)

    # -- trying ----------------------------------------------------------------------------

    def attempt(self, s: Schedule) -> bool:
        """Replay ``s``; keep it when it fails the same way and is simpler. True if kept."""
        text = s.encode()
        if text in self.tried or self.runs >= self.max_runs:
            return False
        self.tried.add(text)
        self.runs += 1
        rec = Recording(Chooser(s.tape))
        start = time.perf_counter()
        out = self.run_one(s, rec)
        seconds = time.perf_counter() - start
        out.schedule = replace(s, tape=rec.writer.tape())
        kept = same_failure(out.violation, self.best.violation) \
            and self.key(out.schedule) < self.key(self.best.schedule)  # type: ignore[arg-type]
        if self.on_run is not None:
            self.on_run(out.schedule, out.violation is not None, seconds, kept)
        if kept:
            self.best = out
        return kept

    def run(self) -> Outcome:
        improved = True
        while improved and self.runs < self.max_runs:
            improved = False
            for candidate in self.candidates():
                if self.attempt(candidate):
                    improved = True
                    break  # candidates are built from the best schedule: build them anew
        return self.best

    # -- candidates, simplest first --------------------------------------------------------

    def candidates(self) -> Iterator[Schedule]:
        s = self.best.schedule
        yield from self._tapes(s)
        yield from self._sequences(s)
        yield from self._params(s)

    def _tapes(self, s: Schedule) -> Iterator[Schedule]:
        tape = s.tape
        if not tape:
            return
        yield replace(s, tape=())
        pairs = [tape[i:i + 2] for i in range(1, len(tape), 2)]
        for i in reversed(range(len(pairs))):  # one switch fewer
            yield replace(s, tape=(tape[0], *(x for j, p in enumerate(pairs) if j != i for x in p)))
        for i, (k, *t) in enumerate(pairs):  # a switch earlier, to a lower target
            for smaller in _towards_zero(k):
                yield replace(s, tape=_set(tape, 1 + 2 * i, smaller))
            if t:
                for smaller in _towards_zero(t[0]):
                    yield replace(s, tape=_set(tape, 2 + 2 * i, smaller))
        for smaller in _towards_zero(tape[0]):
            yield replace(s, tape=_set(tape, 0, smaller))

    def _sequences(self, s: Schedule) -> Iterator[Schedule]:
        for ti, (name, drawn) in enumerate(s.sequences):
            seq = self.sequences.get(name)
            if seq is None:
                continue

            def with_steps(steps: tuple, ti: int = ti, name: str = name) -> Schedule:
                return replace(s, sequences=_set(s.sequences, ti, (name, steps)))

            if len(drawn) > seq.min_length:
                yield with_steps(drawn[:seq.min_length])
                for i in reversed(range(len(drawn))):
                    yield with_steps(drawn[:i] + drawn[i + 1:])
            for i, (choice, ps) in enumerate(drawn):
                for c in range(choice):  # a simpler kind of step, with the simplest params
                    simplest = tuple((p.name, param_values(p, self.options.doc_version)[0])
                                     for p in seq.choice_params[c])
                    yield with_steps(_set(drawn, i, (c, simplest)))
                if choice < len(seq.choice_params):
                    for new in self._simpler(seq.choice_params[choice], ps):
                        yield with_steps(_set(drawn, i, (choice, new)))

    def _params(self, s: Schedule) -> Iterator[Schedule]:
        for new in self._simpler(self.g.params, s.params):
            yield replace(s, params=new)

    def _simpler(self, params: tuple[Param, ...], values: tuple) -> Iterator[tuple]:
        for j, (p, (name, v)) in enumerate(zip(params, values)):
            domain = param_values(p, self.options.doc_version)
            for i in _towards_zero(self._index(p, v)):
                if i < len(domain):
                    yield _set(values, j, (name, domain[i]))


def _towards_zero(n: int) -> list[int]:
    """Smaller values to try for ``n``, the likeliest big steps first: 0, n/2, n-1."""
    return list(dict.fromkeys(x for x in (0, n // 2, n - 1) if 0 <= x < n))


def _set(t: tuple, i: int, v: Any) -> tuple:
    return (*t[:i], v, *t[i + 1:])


def shrink(g: Guarantee, backend: Backend, options: RunOptions, found: Outcome,
           max_runs: int = SHRINK_RUNS, on_run: OnRun | None = None,
           run: Callable[[Schedule, Any], Outcome] | None = None) -> Outcome:
    """The simplest schedule found that breaks ``g`` as ``found`` did, with its outcome.
    ``run(schedule, chooser)`` runs one (default: run_schedule)."""
    return Shrinker(g, backend, options, found, max_runs, on_run, run).run()
