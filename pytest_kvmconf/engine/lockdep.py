"""A lockdep for the locking facet: record lock acquisitions, judge them against documented rules.

A backend records, per thread, every lock it takes and releases, every
``synchronize_srcu()`` and every access to documented data, through a
:class:`LockRecorder`; ``observe()`` returns :meth:`LockRecorder.view`. After a
run, :func:`judge` turns the recorded acquisitions into the lock-order graph of
the run and evaluates the guarantee's ``[guarantee.locks]`` rules (see
:mod:`pytest_kvmconf.spec.locks`) against it.

As in the kernel's lockdep, the graph has an edge A -> B when some thread took
B while holding A, and an order is broken as soon as the graph has a path from
the inner lock back to the outer one, even if no run hung: the two acquisition
paths are the report. Two modelling choices follow lockdep:

* ``srcu_read_lock()`` never waits, so it adds no edge *into* the SRCU; a
  ``synchronize_srcu()`` waits for the readers, so holding A while calling it
  adds A -> srcu, and taking B inside a read-side section adds srcu -> B. A
  cycle through the SRCU is the deadlock of "For SRCU" in locking.rst.
* Read acquisitions of rwlocks and rwsems count like write acquisitions: a
  queued writer blocks new readers, so a read-read inversion can still hang.

Lock names are lock *classes* (``vcpu->mutex`` for every vCPU's mutex); the
label of each acquisition names the instance.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ..spec.locks import LockRules
    from ..spec.model import Guarantee

from .records import Violation

#: The SRCU whose read side and synchronize_srcu() locking.rst orders against mutexes.
SRCU = "kvm->srcu"
READ, WRITE, SYNC = "read", "write", "sync"
#: violations of one run shown in full in a report.
SHOWN = 3


@dataclass(frozen=True)
class Held:
    """A lock a thread holds: where it took it."""

    lock: str
    mode: str
    op: str
    label: str

    def __repr__(self) -> str:
        return self.label


@dataclass(frozen=True)
class Acquisition:
    """One acquisition (or synchronize_srcu: mode ``sync``) with the locks held at that moment."""

    seq: int
    thread: str
    op: str
    lock: str
    mode: str
    label: str
    held: tuple[Held, ...]

    def where(self) -> str:
        return f"thread {self.thread}, {self.op}: {self.label}"

    def __repr__(self) -> str:  # short, for the final state of reports
        held = f" holding {', '.join(h.lock for h in self.held)}" if self.held else ""
        return f"<{self.thread} {self.op}: {self.label}{held}>"


@dataclass(frozen=True)
class Access:
    """A read or write of documented data (vm_list, kvm_usage_count...) with the locks held."""

    seq: int
    thread: str
    op: str
    data: str
    write: bool
    label: str
    held: tuple[Held, ...]

    def where(self) -> str:
        return f"thread {self.thread}, {self.op}: {self.label}"

    def __repr__(self) -> str:
        held = f" holding {', '.join(h.lock for h in self.held)}" if self.held else ""
        return f"<{self.thread} {self.op}: {'write' if self.write else 'read'} {self.data}{held}>"


def held_where(thread: str, h: Held) -> str:
    return f"thread {thread}, {h.op}: {h.label}"


class LockRecorder:
    """Per-thread held-lock stacks and the log of acquisitions and accesses.

    Thread-safe: the threaded backend records from several OS threads.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held: dict[str, list[Held]] = {}
        self.acquisitions: list[Acquisition] = []
        self.accesses: list[Access] = []
        self._seq = 0

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def held(self, thread: str) -> tuple[Held, ...]:
        with self._mutex:
            return tuple(self._held.get(thread, ()))

    def holds(self, thread: str, lock: str) -> bool:
        return any(h.lock == lock for h in self.held(thread))

    def acquired(self, thread: str, op: str, lock: str, mode: str, label: str) -> None:
        with self._mutex:
            stack = self._held.setdefault(thread, [])
            self.acquisitions.append(Acquisition(self._next(), thread, op, lock, mode, label, tuple(stack)))
            stack.append(Held(lock, mode, op, label))

    def released(self, thread: str, lock: str) -> None:
        """Drop the innermost hold of ``lock``: releases need not be LIFO (kvm->lock before vcpu->mutex)."""
        with self._mutex:
            stack = self._held.get(thread, [])
            for i in range(len(stack) - 1, -1, -1):
                if stack[i].lock == lock:
                    del stack[i]
                    return
            raise RuntimeError(f"thread {thread} releases {lock}, which it does not hold")

    def synchronized(self, thread: str, op: str, srcu: str, label: str) -> None:
        with self._mutex:
            held = tuple(self._held.get(thread, ()))
            self.acquisitions.append(Acquisition(self._next(), thread, op, srcu, SYNC, label, held))

    def accessed(self, thread: str, op: str, data: str, write: bool, label: str) -> None:
        with self._mutex:
            held = tuple(self._held.get(thread, ()))
            self.accesses.append(Access(self._next(), thread, op, data, write, label, held))

    def view(self) -> dict[str, Any]:
        """The observable part: plain data for conditions and for :func:`judge`."""
        with self._mutex:
            acqs, accs = tuple(self.acquisitions), tuple(self.accesses)
        return {
            "lock_events": acqs,
            "data_accesses": accs,
            "lock_pairs": frozenset((h.lock, a.lock) for a in acqs if a.mode != SYNC for h in a.held),
            "locks_taken": frozenset(a.lock for a in acqs if a.mode != SYNC),
            "srcu_synced_under": frozenset(h.lock for a in acqs if a.mode == SYNC for h in a.held),
            "data_accessed": frozenset(a.data for a in accs),
        }


# -- the lock-order graph -------------------------------------------------------

@dataclass(frozen=True)
class Edge:
    """A -> B: ``acq`` took (or synchronized on) B while holding ``outer`` (A)."""

    outer: Held
    acq: Acquisition

    def describe(self) -> str:
        verb = "calls synchronize_srcu" if self.acq.mode == SYNC else f"takes {self.acq.lock}"
        holds = f"is in a {SRCU} read-side section" if self.outer.lock == SRCU and self.outer.mode == READ \
            else f"holds {self.outer.lock}"
        return (f"{self.outer.lock} -> {self.acq.lock}: {self.acq.thread} {holds} "
                f"(taken at {held_where(self.acq.thread, self.outer)}) and {verb} "
                f"(at {self.acq.where()})")


class LockGraph:
    """Edges between lock classes, each with the first acquisition that made it."""

    def __init__(self, acquisitions: Iterable[Acquisition]):
        self.edges: dict[tuple[str, str], Edge] = {}
        for a in acquisitions:
            if a.lock == SRCU and a.mode == READ:
                continue  # srcu_read_lock() never waits: no dependency into the SRCU
            for h in a.held:
                if h.lock == a.lock:
                    continue  # recursion (nested srcu read sections) is not an ordering
                self.edges.setdefault((h.lock, a.lock), Edge(h, a))
        self.succ: dict[str, list[str]] = {}
        for a, b in self.edges:
            self.succ.setdefault(a, []).append(b)

    def path(self, start: str, goal: str) -> list[Edge] | None:
        """Shortest chain of edges from ``start`` to ``goal`` (breadth first), or None."""
        prev: dict[str, str] = {start: start}
        queue = deque([start])
        while queue:
            n = queue.popleft()
            for m in self.succ.get(n, ()):
                if m in prev:
                    continue
                prev[m] = n
                if m == goal:
                    chain, cur = [], m
                    while cur != start:
                        chain.append(self.edges[(prev[cur], cur)])
                        cur = prev[cur]
                    return chain[::-1]
                queue.append(m)
        return None

    def cycle(self) -> list[Edge] | None:
        """A shortest cycle of the graph, or None."""
        best: list[Edge] | None = None
        for (a, b), e in sorted(self.edges.items()):
            back = self.path(b, a)
            if back is not None and (best is None or len(back) + 1 < len(best)):
                best = [e, *back]
        return best


# -- the rules ------------------------------------------------------------------

def _chain(edges: list[Edge]) -> str:
    return "\n".join(f"  {i}. {e.describe()}" for i, e in enumerate(edges, 1))


def find_violations(rules: LockRules, acquisitions: Iterable[Acquisition],
                    accesses: Iterable[Access]) -> list[str]:
    """Every broken rule, as messages naming the acquisition paths (thread, op, label)."""
    acqs = sorted(acquisitions, key=lambda a: a.seq)
    accs = sorted(accesses, key=lambda a: a.seq)
    graph = LockGraph(acqs)
    out: list[str] = []
    for outer, inner in rules.order:
        back = graph.path(inner, outer)
        if back is None:
            continue
        msg = [f"lock order inversion: {outer} must be taken outside {inner}, but",
               _chain(back)]
        fwd = graph.edges.get((outer, inner))
        if fwd is not None:
            msg += ["while the documented order was taken as", _chain([fwd])]
        out.append("\n".join(msg))
    takes = [a for a in acqs if a.mode != SYNC]
    leaves = set(rules.leaves)
    for a in takes:
        for h in a.held:
            if h.lock in leaves and h.lock != a.lock:
                out.append(f"{h.lock} is a leaf lock, but {a.thread} took {a.lock} inside it:\n"
                           f"  {h.lock} taken at {held_where(a.thread, h)}\n"
                           f"  {a.lock} taken at {a.where()}")
    forbidden = set(rules.not_in_srcu)
    for a in takes:
        if a.lock not in forbidden:
            continue
        reader = next((h for h in a.held if h.lock == SRCU and h.mode == READ), None)
        if reader is not None:
            out.append(f"{a.lock} taken inside a {SRCU} read-side critical section "
                       f"(its holders call synchronize_srcu):\n"
                       f"  srcu_read_lock at {held_where(a.thread, reader)}\n"
                       f"  {a.lock} taken at {a.where()}")
    for lock, needed in rules.only_under:
        for a in takes:
            if a.lock == lock and not any(h.lock == needed for h in a.held):
                held = ", ".join(h.lock for h in a.held) or "nothing"
                out.append(f"{lock} taken without {needed} held (held: {held}):\n"
                           f"  {lock} taken at {a.where()}")
    for ops, locks in rules.not_in_ops:
        for a in takes:
            if a.op in ops and a.lock in locks:
                out.append(f"{a.op} must not take {a.lock}, but did:\n  {a.lock} taken at {a.where()}")
    for lock in rules.released_before_sync:
        for a in acqs:
            h = next((h for h in a.held if h.lock == lock), None) if a.mode == SYNC else None
            if h is not None:
                out.append(f"synchronize_srcu({a.lock}) called with {lock} held; it must be "
                           f"released before:\n  {lock} taken at {held_where(a.thread, h)}\n"
                           f"  synchronize_srcu at {a.where()}")
    out.extend(_unprotected(rules, accs))
    if rules.deadlock_free:
        cyc = graph.cycle()
        if cyc is not None:
            locks = " -> ".join([e.outer.lock for e in cyc] + [cyc[0].outer.lock])
            out.append(f"possible deadlock: the lock graph has the cycle {locks}\n{_chain(cyc)}")
    return out


def _unprotected(rules: LockRules, accesses: list[Access]) -> list[str]:
    """An access to protected data needs one of the locks protecting it.

    The SRCU protects readers only: updaters publish a new copy and wait in
    synchronize_srcu(), so a write needs one of the data's other locks.
    """
    guards: dict[str, list[str]] = {}
    for lock, data in rules.protects:
        for d in data:
            guards.setdefault(d, []).append(lock)
    out = []
    for a in accesses:
        locks = [g for g in guards.get(a.data, ()) if not (a.write and g == SRCU)]
        if not locks or any(h.lock in locks for h in a.held):
            continue
        held = ", ".join(h.lock for h in a.held) or "nothing"
        kind = "written" if a.write else "read"
        out.append(f"{a.data} {kind} without {' or '.join(locks)} (held: {held}):\n"
                   f"  at {a.where()}")
    return out


def judge(g: Guarantee, state: Mapping[str, Any] | None) -> Violation | None:
    """The runner's lockdep pass over a finished run: the first broken rule of ``g.locks``."""
    rules = getattr(g, "locks", None)
    if rules is None:
        return None
    if state is None or "lock_events" not in state:
        return Violation("error", "the guarantee has lock rules but the backend's observe() returns no "
                                  "lock_events (record acquisitions with engine.lockdep.LockRecorder)")
    found = find_violations(rules, state["lock_events"], state.get("data_accesses", ()))
    if not found:
        return None
    shown = found[:SHOWN]
    more = f"\n({len(found) - SHOWN} more lock rule violations in this run)" if len(found) > SHOWN else ""
    return Violation("lockdep", "\n".join(shown) + more)
