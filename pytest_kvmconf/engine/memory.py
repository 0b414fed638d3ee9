"""Weak memory: the shared-memory accesses and barriers of a model, under sc, tso or lkmm.

A backend that models the documents' barrier pairings routes each shared
access through a :class:`Memory` with the kernel's names (``write_once``,
``read_once``, ``set_bit``, ``smp_mb``...). Under ``sc`` every access acts at
once, as the plain Python code did. Under ``tso`` and ``lkmm`` stores wait in a
per-thread *store buffer*; under ``lkmm`` a store that reaches memory may also
leave the other CPUs reading the location's older value (a *stale copy*: the
invalidate queue of memory-barriers.txt's hardware view) until their next
barrier. When a buffered store reaches memory, and whether the others see it at
once, is not decided here: each possibility is a :class:`MemoryEvent`, a
runnable entity the runner offers its chooser beside the threads. So
reorderings are ordinary scheduling decisions on the same choice tape: they
shrink and replay like thread switches.

What the models produce (and what they cannot) is documented in
docs/memory-models.md; in short:

* ``tso`` (x86): stores drain in program order; a load reads its own
  thread's newest buffered store to its location, else memory, so it may pass
  the thread's earlier stores to other locations. Every atomic
  read-modify-write and ``smp_mb`` drains the buffer first; ``smp_wmb``,
  ``smp_rmb`` and ``smp_mb__{before,after}_atomic`` are compiler barriers.
* ``lkmm`` (the subset): stores and non-value-returning atomics (``set_bit``,
  ``clear_bit``) are buffered and may drain out of order, except that stores
  to one location keep their order, ``smp_wmb``/``smp_mb`` order the stores
  around them and ``smp_store_release`` follows everything before it. Loads may
  return a stale copy until ``smp_rmb``, ``smp_mb``, an acquire load, a fully
  ordered atomic, the thread's own store to the location or an address
  dependency (``read_once(..., dep=True)``) refreshes the thread's view. Value-returning atomics are fully ordered;
  ``smp_mb__{before,after}_atomic`` act as ``smp_mb``. Loads are never
  delayed, so load->store reordering (LB) is not produced, and all writes reach
  one memory, so non-multicopy-atomic outcomes (IRIW with smp_rmb) are not
  either.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ..spec.model import MEMORY_MODELS as MODELS
from .executor import Handle

_NO_LOCK = threading.Lock()  # stands in where a location has no lock of its own


def _get(obj: Any, field: Any) -> Any:
    return obj.get(field, getattr(obj, "default", None)) if isinstance(obj, dict) else getattr(obj, field)


def _set(obj: Any, field: Any, value: Any) -> None:
    if isinstance(obj, dict):
        obj[field] = value
    else:
        setattr(obj, field, value)


def location(obj: Any, field: Any) -> str:
    """How the timeline names a location: ``vcpu0->mode``, ``state[3]``, ``x``."""
    owner = getattr(obj, "mem_name", None)
    if not owner:
        return str(field)
    return f"{owner}[{field}]" if isinstance(obj, dict) else f"{owner}->{field}"


def show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int) and value > 9:
        return hex(value)
    if isinstance(value, set | frozenset):
        return "{" + ", ".join(map(str, sorted(value))) + "}"
    return str(value)


class SharedMap(dict):
    """A dict whose items are memory locations named ``<mem_name>[key]`` in timelines (just
    ``key`` without a name); a location never written reads as ``default``."""

    __slots__ = ("mem_name", "default")

    def __init__(self, mem_name: str, default: Any = None):
        super().__init__()
        self.mem_name, self.default = mem_name, default


class _Store:
    """A store (or a non-value-returning atomic) waiting in a store buffer."""

    __slots__ = ("thread", "obj", "field", "key", "value", "op", "name", "epoch", "release")

    def __init__(self, thread: str, obj: Any, field: Any, value: Any, op: Callable[[Any], Any] | None,
                 name: str, epoch: int, release: bool):
        self.thread, self.obj, self.field = thread, obj, field
        self.key = (id(obj), field)
        self.value, self.op, self.name = value, op, name
        self.epoch, self.release = epoch, release

    def after(self, earlier: _Store) -> bool:
        """lkmm: must this store reach memory after ``earlier`` (same buffer, earlier in it)?"""
        return earlier.key == self.key or earlier.epoch < self.epoch or self.release


class Memory:
    """The shared memory of one machine, under one model.

    ``cpu`` is the spec thread running now: the runner sets it before each
    advance, so a model's helpers need not pass their thread along.
    """

    def __init__(self, model: str = "sc"):
        if model not in MODELS:
            raise ValueError(f"unknown memory model {model!r}; known: {', '.join(MODELS)}")
        self.model = model
        self.weak = model != "sc"
        self.lkmm = model == "lkmm"
        self.cpu = ""
        self.buffers: dict[str, list[_Store]] = {}
        #: lkmm: thread -> location key -> (obj, field, value the thread still sees)
        self.stale: dict[str, dict[tuple[int, Any], tuple[Any, Any, Any]]] = {}
        self.epochs: dict[str, int] = {}
        self.vcpu_of: dict[str, int | None] = {}
        #: what the accesses of the current advance did, for the timeline.
        self.notes: list[str] = []

    def start(self, threads: dict[str, int | None]) -> None:
        """The run's spec threads, with the vCPU each is the thread of."""
        self.vcpu_of = dict(threads)
        for t in threads:
            self.buffers[t] = []
            self.stale[t] = {}
            self.epochs[t] = 0

    # -- the runner's side ------------------------------------------------------
    def events(self) -> list[MemoryEvent]:
        """What may happen next besides a thread's step: a buffered store reaching memory (under
        lkmm each one nothing orders after another, and either seen by every CPU at once or with
        the other CPUs keeping their old copy until their next barrier)."""
        out: list[MemoryEvent] = []
        for t, buf in self.buffers.items():
            for i, s in enumerate(buf):
                if i == 0 or (self.lkmm and not any(s.after(e) for e in buf[:i])):
                    out.append(MemoryEvent(self, t, s, True))
        if self.lkmm:
            out += [MemoryEvent(self, e.name, e.store, False) for e in out]
        return out

    def take_notes(self) -> list[str]:
        notes, self.notes = self.notes, []
        return notes

    def pending(self) -> bool:
        return any(self.buffers.values())

    # -- plain and ONCE accesses --------------------------------------------------
    def read_once(self, obj: Any, field: Any, dep: bool = False) -> Any:
        """READ_ONCE(). ``dep``: the address comes from an earlier load (an address
        dependency orders the two loads)."""
        if not self.weak:
            return _get(obj, field)
        if dep and self.lkmm:
            self._refresh(self.cpu)
        return self._load(obj, field, "READ_ONCE")

    def write_once(self, obj: Any, field: Any, value: Any) -> None:
        """WRITE_ONCE()."""
        if not self.weak:
            _set(obj, field, value)
            return
        self._buffer(obj, field, value, None, "WRITE_ONCE", release=False)

    def load_acquire(self, obj: Any, field: Any) -> Any:
        """smp_load_acquire(): later accesses come after it."""
        if not self.weak:
            return _get(obj, field)
        value = self._load(obj, field, "smp_load_acquire")
        if self.lkmm:
            self._refresh(self.cpu)
        return value

    def store_release(self, obj: Any, field: Any, value: Any) -> None:
        """smp_store_release(): earlier accesses come before it."""
        if not self.weak:
            _set(obj, field, value)
            return
        self._buffer(obj, field, value, None, "smp_store_release", release=True)

    def store_mb(self, obj: Any, field: Any, value: Any) -> None:
        """smp_store_mb(): WRITE_ONCE() then smp_mb() (set_current_state())."""
        self.write_once(obj, field, value)
        self.smp_mb()

    # -- atomics -------------------------------------------------------------------
    def atomic(self, obj: Any, field: Any, fn: Callable[[Any], Any], name: str) -> None:
        """Any other non-value-returning atomic (pi_clear_on()...)."""
        self._atomic(obj, field, fn, name)

    def set_bit(self, obj: Any, field: Any, nr: int) -> None:
        self._atomic(obj, field, lambda v: v | 1 << nr, f"set_bit({nr})")

    def clear_bit(self, obj: Any, field: Any, nr: int) -> None:
        self._atomic(obj, field, lambda v: v & ~(1 << nr), f"clear_bit({nr})")

    def test_and_set_bit(self, obj: Any, field: Any, nr: int) -> bool:
        return bool(self._rmw(obj, field, lambda v: v | 1 << nr, f"test_and_set_bit({nr})") >> nr & 1)

    def test_and_clear_bit(self, obj: Any, field: Any, nr: int) -> bool:
        return bool(self._rmw(obj, field, lambda v: v & ~(1 << nr), f"test_and_clear_bit({nr})") >> nr & 1)

    def xchg(self, obj: Any, field: Any, new: Any) -> Any:
        return self._rmw(obj, field, lambda v: new, f"xchg({show(new)})")

    def cmpxchg(self, obj: Any, field: Any, old: Any, new: Any, relaxed: bool = False) -> Any:
        """cmpxchg() (fully ordered), or cmpxchg_relaxed() with ``relaxed``."""
        name = f"cmpxchg{'_relaxed' if relaxed else ''}({show(old)}, {show(new)})"
        return self._rmw(obj, field, lambda v: new if v == old else v, name, relaxed)

    def rmw(self, obj: Any, field: Any, fn: Callable[[Any], Any], name: str) -> Any:
        """Any other fully ordered value-returning atomic (pi_test_and_set_pir()...)."""
        return self._rmw(obj, field, fn, name)

    # -- barriers --------------------------------------------------------------------
    def smp_mb(self) -> None:
        if self.weak:
            self._fence("smp_mb")

    def interrupt(self, vcpu: int) -> None:
        """The CPU that vCPU ``vcpu``'s thread runs on takes an interrupt (an IPI's handler runs and
        acknowledges it): taking an interrupt serializes that CPU, so its buffered stores reach
        memory before the acknowledgement does."""
        if not self.weak:
            return
        for t, v in self.vcpu_of.items():
            if v == vcpu:
                cpu, self.cpu = self.cpu, t
                self._fence("interrupt")
                self.cpu = cpu

    def smp_wmb(self) -> None:
        if self.lkmm:
            self.epochs[self.cpu] = self.epochs.get(self.cpu, 0) + 1

    def smp_rmb(self) -> None:
        if self.lkmm:
            self._refresh(self.cpu)

    def smp_mb__before_atomic(self) -> None:
        # x86: the atomic is a locked instruction, a full barrier already. lkmm: as smp_mb(),
        # which is stronger than the kernel's only for plain accesses between it and the atomic.
        if self.lkmm:
            self._fence("smp_mb__before_atomic")

    def smp_mb__after_atomic(self) -> None:
        if self.lkmm:
            self._fence("smp_mb__after_atomic")

    # -- the mechanics -----------------------------------------------------------------
    def _load(self, obj: Any, field: Any, name: str) -> Any:
        key = (id(obj), field)
        buf = self.buffers.setdefault(self.cpu, [])
        for i in range(len(buf) - 1, -1, -1):
            s = buf[i]
            if s.key == key:
                if s.op is None:
                    self.notes.append(f"{name}({location(obj, field)}) = {show(s.value)} from its store buffer")
                    return s.value
                # Its own atomic on the location is still buffered: it reaches memory first.
                self._drain_through(self.cpu, key)
                break
        seen = self.stale.get(self.cpu, {}).get(key)
        if seen is not None:
            self.notes.append(f"{name}({location(obj, field)}) = {show(seen[2])}, a stale copy "
                              f"(memory has {show(_get(obj, field))})")
            return seen[2]
        return _get(obj, field)

    def _buffer(self, obj: Any, field: Any, value: Any, op: Callable[[Any], Any] | None,
                name: str, release: bool) -> None:
        s = _Store(self.cpu, obj, field, value, op, name, self.epochs.get(self.cpu, 0), release)
        self.buffers.setdefault(self.cpu, []).append(s)
        shown = f"{name}({location(obj, field)}, {show(value)})" if op is None else \
            f"{name} on {location(obj, field)}"
        self.notes.append(f"{shown} waits in the store buffer")

    def _atomic(self, obj: Any, field: Any, op: Callable[[Any], Any], name: str) -> None:
        """A non-value-returning atomic: unordered under lkmm, a locked instruction under tso."""
        if self.lkmm:
            self._buffer(obj, field, None, op, name, release=False)
            return
        if self.weak:
            self._drain_all(self.cpu)
        with getattr(obj, "_lock", _NO_LOCK) if not isinstance(obj, dict) else _NO_LOCK:
            old = _get(obj, field)
            _set(obj, field, op(old))
        if self.weak:
            self._published(self.cpu, obj, field, old)

    def _rmw(self, obj: Any, field: Any, fn: Callable[[Any], Any], name: str, relaxed: bool = False) -> Any:
        if not self.weak:
            with getattr(obj, "_lock", _NO_LOCK) if not isinstance(obj, dict) else _NO_LOCK:
                old = _get(obj, field)
                _set(obj, field, fn(old))
            return old
        if relaxed and self.lkmm:
            # Atomic with respect to its location only: its own earlier stores there go first.
            self._drain_through(self.cpu, (id(obj), field))
        else:
            self._fence(name)
        old = _get(obj, field)
        new = fn(old)
        _set(obj, field, new)
        self._published(self.cpu, obj, field, old)
        if self.lkmm:
            self.stale[self.cpu].pop((id(obj), field), None)
        self.notes.append(f"{name} on {location(obj, field)}: {show(old)} -> {show(new)} in memory")
        return old

    def _fence(self, name: str) -> None:
        drained = self._drain_all(self.cpu)
        refreshed = self._refresh(self.cpu)
        if drained or refreshed:
            what = [f"drains {drained} store{'s' if drained > 1 else ''}"] if drained else []
            what += [f"refreshes {refreshed} stale cop{'ies' if refreshed > 1 else 'y'}"] if refreshed else []
            self.notes.append(f"{name}: {' and '.join(what)}")

    def _drain_all(self, thread: str) -> int:
        buf = self.buffers.get(thread, [])
        n = len(buf)
        while buf:
            self._drain(thread, buf[0])
        return n

    def _drain_through(self, thread: str, key: tuple[int, Any]) -> None:
        """Drain, in program order (always allowed), up to the thread's last store to ``key``."""
        buf = self.buffers.get(thread, [])
        last = max((i for i, s in enumerate(buf) if s.key == key), default=-1)
        for _ in range(last + 1):
            self._drain(thread, buf[0])

    def _drain(self, thread: str, s: _Store, everywhere: bool = True) -> str:
        self.buffers[thread].remove(s)
        old = _get(s.obj, s.field)
        new = s.value if s.op is None else s.op(old)
        _set(s.obj, s.field, new)
        self._published(thread, s.obj, s.field, old, everywhere)
        where = "" if everywhere or new == old else ", the other CPUs keep their old copy"
        return f"{location(s.obj, s.field)} = {show(new)} reaches memory ({s.name}{where})"

    def _published(self, writer: str, obj: Any, field: Any, old: Any, everywhere: bool = True) -> None:
        """A write reached memory. Under lkmm the other threads either see it at once, or keep
        reading ``old`` until their next barrier (their invalidate queue holds it back)."""
        if not self.lkmm:
            return
        key = (id(obj), field)
        for t, copies in self.stale.items():
            if t == writer or everywhere:
                copies.pop(key, None)
            elif key not in copies and old != _get(obj, field):
                copies[key] = (obj, field, old)

    def _refresh(self, thread: str) -> int:
        copies = self.stale.get(thread)
        if not copies:
            return 0
        n = len(copies)
        copies.clear()
        return n


class MemoryEvent(Handle):
    """A store buffer draining one store: a runnable entity of the scheduler. It draws in its
    thread's column of the timeline (the store is still that thread's write)."""

    current_op = ""
    returned = None
    position = "store buffer"

    def __init__(self, memory: Memory, thread: str, store: _Store, everywhere: bool):
        self.memory, self.name, self.store, self.everywhere = memory, thread, store, everywhere
        self.vcpu = memory.vcpu_of.get(thread)
        self.texts = []

    def runnable(self) -> bool:
        return True

    def idle(self) -> bool:
        return False

    def advance(self) -> None:
        self.texts = [self.memory._drain(self.name, self.store, self.everywhere)]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MemoryEvent) and self.store is other.store and self.everywhere == other.everywhere

    def __hash__(self) -> int:
        return hash((id(self.store), self.everywhere))
