"""Weak memory: the shared-memory accesses and barriers of a model, under sc, tso or lkmm.

A backend that models the documents' barrier pairings routes each shared
access through a :class:`Memory` with the kernel's names (``write_once``,
``read_once``, ``set_bit``, ``smp_mb``...). Under ``sc`` every access acts at
once, as the plain Python code did. Under ``tso`` and ``lkmm`` stores wait in a
per-thread *store buffer*; under ``lkmm`` a store that reaches memory may also
leave the other CPUs reading the location's older value (a *stale copy*: the
invalidate queue of memory-barriers.txt's hardware view) until a barrier obliges
them to see newer. When a buffered store reaches memory, and whether the others see it at
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
  around them and ``smp_store_release`` follows everything before it. A store
  reaching memory may leave the other CPUs with their old copy, and a plain
  store may be ordered before a newer write its CPU has not seen. Each thread
  has a *view* (the newest write per location it must see): acquire loads,
  ``smp_rmb`` and address dependencies after loads of writes that had seen
  more, strong fences (which share one view) and its own writes move it, and
  old copies older than the view are gone. A ``lazy`` load is a
  :class:`Pending` that later independent stores may pass (load buffering)
  until it is picked or its value used. Value-returning atomics are fully
  ordered; ``smp_mb__{before,after}_atomic`` act as ``smp_mb``.
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
    if isinstance(value, Pending):
        return repr(value)
    return str(value)


class SharedMap(dict):
    """A dict whose items are memory locations named ``<mem_name>[key]`` in timelines (just
    ``key`` without a name); a location never written reads as ``default``."""

    __slots__ = ("mem_name", "default")

    def __init__(self, mem_name: str, default: Any = None):
        super().__init__()
        self.mem_name, self.default = mem_name, default


def _lock_of(obj: Any) -> Any:
    return _NO_LOCK if isinstance(obj, dict) else getattr(obj, "_lock", _NO_LOCK)


def _sc_read(obj: Any, field: Any, dep: bool = False, lazy: bool = False) -> Any:
    return obj.get(field, getattr(obj, "default", None)) if isinstance(obj, dict) else getattr(obj, field)


def _sc_update(obj: Any, field: Any, fn: Callable[[Any], Any], name: str = "") -> Any:
    with _lock_of(obj):
        old = _get(obj, field)
        _set(obj, field, fn(old))
    return old


def _sc_set_bit(obj: Any, field: Any, nr: int) -> None:
    with _lock_of(obj):
        _set(obj, field, _get(obj, field) | 1 << nr)


def _sc_clear_bit(obj: Any, field: Any, nr: int) -> None:
    with _lock_of(obj):
        _set(obj, field, _get(obj, field) & ~(1 << nr))


def _sc_test_and_set_bit(obj: Any, field: Any, nr: int) -> bool:
    return bool(_sc_update(obj, field, lambda v: v | 1 << nr) >> nr & 1)


def _sc_test_and_clear_bit(obj: Any, field: Any, nr: int) -> bool:
    return bool(_sc_update(obj, field, lambda v: v & ~(1 << nr)) >> nr & 1)


def _sc_xchg(obj: Any, field: Any, new: Any) -> Any:
    with _lock_of(obj):
        old = _get(obj, field)
        _set(obj, field, new)
    return old


def _sc_cmpxchg(obj: Any, field: Any, old: Any, new: Any, relaxed: bool = False) -> Any:
    with _lock_of(obj):
        seen = _get(obj, field)
        if seen == old:
            _set(obj, field, new)
    return seen


def _sc_store_mb(obj: Any, field: Any, value: Any) -> None:
    _set(obj, field, value)


def _no_barrier(*_: Any) -> None:
    pass


#: Memory's accesses and barriers under sc (see Memory.__init__).
_SC: dict[str, Callable[..., Any]] = {
    "read_once": _sc_read, "load_acquire": _sc_read,
    "write_once": _set, "store_release": _set, "store_mb": _sc_store_mb,
    "spin_unlock": lambda obj, field: _set(obj, field, 0),
    "atomic": _sc_update, "rmw": _sc_update, "set_bit": _sc_set_bit, "clear_bit": _sc_clear_bit,
    "test_and_set_bit": _sc_test_and_set_bit, "test_and_clear_bit": _sc_test_and_clear_bit,
    "xchg": _sc_xchg, "cmpxchg": _sc_cmpxchg,
    "smp_mb": _no_barrier, "smp_wmb": _no_barrier, "smp_rmb": _no_barrier, "interrupt": _no_barrier,
    "smp_mb__before_atomic": _no_barrier, "smp_mb__after_atomic": _no_barrier,
    "smp_mb__after_spinlock": _no_barrier,
    "spin_lock": lambda obj, field: _set(obj, field, 1),
    "lock_free": lambda obj, field, thread: _get(obj, field) == 0,
}


class Pending:
    """lkmm: a READ_ONCE() whose value is not fixed yet (``read_once(..., lazy=True)``).

    Load buffering: a load may be satisfied after its thread's later independent stores reach
    memory. The thread goes on past the load; the value is read when the scheduler picks the
    load's :class:`MemoryEvent`, or when the thread's own later access needs it first (a use of
    the value: ``bool()``, ``==``, arithmetic, a store of it; an access to the same location; a
    barrier, a release, a fully ordered atomic, an address dependency), whichever comes first.
    So a dependency from the load to a store orders them exactly where the code uses the value.
    Compare it with ``==``, never ``is``.
    """

    __slots__ = ("memory", "thread", "obj", "field", "key", "name", "value", "done")

    def __init__(self, memory: Memory, thread: str, obj: Any, field: Any, name: str):
        self.memory, self.thread, self.obj, self.field, self.name = memory, thread, obj, field, name
        self.key = (id(obj), field)
        self.value: Any = None
        self.done = False

    def force(self) -> Any:
        if not self.done:
            self.memory._satisfy(self, "when its value is used")
        return self.value

    def __repr__(self) -> str:
        return repr(self.value) if self.done else "?"  # the timeline says when it is satisfied


def _forcing(name: str) -> Callable[..., Any]:
    def use(self: Pending, *args: Any) -> Any:
        args = tuple(a.force() if isinstance(a, Pending) else a for a in args)
        return getattr(self.force(), name)(*args)
    use.__name__ = name
    return use


for _name in ("__bool__", "__int__", "__index__", "__float__", "__hash__", "__str__", "__format__",
              "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__neg__", "__invert__",
              "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__floordiv__",
              "__rfloordiv__", "__mod__", "__rmod__", "__and__", "__rand__", "__or__", "__ror__",
              "__xor__", "__rxor__", "__lshift__", "__rlshift__", "__rshift__", "__rrshift__",
              "__contains__", "__iter__", "__len__", "__getitem__"):
    setattr(Pending, _name, _forcing(_name))


def value_of(v: Any) -> Any:
    """``v`` itself, or a pending load's value (satisfying it now)."""
    return v.force() if isinstance(v, Pending) else v


class _Store:
    """A store (or a non-value-returning atomic) waiting in a store buffer."""

    __slots__ = ("thread", "obj", "field", "key", "value", "op", "name", "epoch", "release", "view")

    def __init__(self, thread: str, obj: Any, field: Any, value: Any, op: Callable[[Any], Any] | None,
                 name: str, epoch: int, release: bool, view: dict | None = None):
        self.thread, self.obj, self.field = thread, obj, field
        self.key = (id(obj), field)
        self.value, self.op, self.name = value, op, name
        self.epoch, self.release = epoch, release
        #: lkmm, a release: what its thread had seen when it was issued (release cumulativity).
        self.view = view

    def after(self, earlier: _Store) -> bool:
        """lkmm: must this store reach memory after ``earlier`` (same buffer, earlier in it)?"""
        return earlier.key == self.key or earlier.epoch < self.epoch or self.release


#: How a buffered store reaches memory (or a pending load is satisfied): MemoryEvent kinds.
EVERYWHERE, KEEP_OLD, HIDDEN, SATISFY = "everywhere", "keep old", "hidden", "satisfy"


def _join(into: dict, view: dict | None) -> None:
    if view:
        for k, s in view.items():
            if s > into.get(k, 0):
                into[k] = s


class Memory:
    """The shared memory of one machine, under one model.

    ``cpu`` is the spec thread running now: the runner sets it before each
    advance, so a model's helpers need not pass their thread along.

    Under lkmm the memory keeps, besides the values, the order in which writes reached it (a
    *stamp* per location: the newest write's number) and what each thread has *seen*: a view
    (location -> stamp) that a thread's reads, its own writes, acquire loads, barriers and the
    strong fences' shared view advance. A stale copy is readable only while it is not older than
    the thread's view; a plain store may be ordered before a write its thread has not seen.
    """

    def __init__(self, model: str = "sc"):
        if model not in MODELS:
            raise ValueError(f"unknown memory model {model!r}; known: {', '.join(MODELS)}")
        self.model = model
        self.weak = model != "sc"
        self.lkmm = model == "lkmm"
        self.cpu = ""
        #: what the accesses of the current advance did, for the timeline.
        self.notes: list[str] = []
        if not self.weak:
            # sc, the default and the fastest: each access is the plain one (an atomic under the
            # location's lock). Plain functions in the instance shadow the methods, so a model
            # pays one call per access, and no store buffers or views are made.
            for name, fn in _SC.items():
                setattr(self, name, fn)
            return
        self.buffers: dict[str, list[_Store]] = {}
        #: lkmm: thread -> location key -> (obj, field, value, stamp, view) the thread still sees
        self.stale: dict[str, dict[tuple[int, Any], tuple[Any, Any, Any, int, dict | None]]] = {}
        self.epochs: dict[str, int] = {}
        self.vcpu_of: dict[str, int | None] = {}
        #: lkmm: the stamps and views (above); loads not yet satisfied, per thread.
        self.clock = 0
        self.stamps: dict[tuple[int, Any], int] = {}
        self.msg_views: dict[tuple[int, Any], dict] = {}
        self.atomic_top: set[tuple[int, Any]] = set()
        self.known: dict[str, dict] = {}
        self.carried: dict[str, dict] = {}
        self.fence_view: dict = {}
        self.loads: dict[str, list[Pending]] = {}

    def start(self, threads: dict[str, int | None]) -> None:
        """The run's spec threads, with the vCPU each is the thread of."""
        self.vcpu_of = dict(threads)
        for t in threads:
            self.buffers[t] = []
            self.stale[t] = {}
            self.epochs[t] = 0
            self.known[t] = {}
            self.carried[t] = {}
            self.loads[t] = []

    # -- the runner's side ------------------------------------------------------
    def events(self) -> list[MemoryEvent]:
        """What may happen next besides a thread's step: a buffered store reaching memory; under
        lkmm each one nothing orders after another, either seen by every CPU at once or with the
        other CPUs keeping their old copy, or ordered before a write its thread has not seen; and
        a pending load being satisfied."""
        out: list[MemoryEvent] = []
        for t, buf in self.buffers.items():
            for i, s in enumerate(buf):
                if i == 0 or (self.lkmm and not any(s.after(e) for e in buf[:i])):
                    out.append(MemoryEvent(self, t, s, EVERYWHERE))
        if self.lkmm:
            drains = list(out)
            out += [MemoryEvent(self, e.name, e.store, KEEP_OLD) for e in drains]
            out += [MemoryEvent(self, e.name, e.store, HIDDEN) for e in drains if self._hideable(e.store)]
            # Last: with no choice left on the tape, a pending load waits until the stores drain
            # (so at the end of a run the buffered stores reach memory first).
            out += [MemoryEvent(self, t, p, SATISFY) for t, loads in self.loads.items() for p in loads]
        return out

    def take_notes(self) -> list[str]:
        notes, self.notes = self.notes, []
        return notes

    def pending(self) -> bool:
        return any(self.buffers.values()) or any(self.loads.values())

    # -- plain and ONCE accesses --------------------------------------------------
    def read_once(self, obj: Any, field: Any, dep: bool = False, lazy: bool = False) -> Any:
        """READ_ONCE(). ``dep``: the address comes from an earlier load (an address
        dependency orders the two loads). ``lazy`` (lkmm): the caller only binds the value, so
        the load may be satisfied after later accesses (a :class:`Pending`)."""
        if self.lkmm:
            if dep:
                self._order_loads(self.cpu)
            elif lazy:
                return self._defer(obj, field, "READ_ONCE")
        return self._load(obj, field, "READ_ONCE")

    def write_once(self, obj: Any, field: Any, value: Any) -> None:
        """WRITE_ONCE()."""
        self._buffer(obj, field, value, None, "WRITE_ONCE", release=False)

    def load_acquire(self, obj: Any, field: Any) -> Any:
        """smp_load_acquire(): later accesses come after it."""
        return self._load(obj, field, "smp_load_acquire", acquire=True)

    def store_release(self, obj: Any, field: Any, value: Any) -> None:
        """smp_store_release(): earlier accesses come before it."""
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

    # -- spinlocks (the litmus tests' spin_lock(); KVM's models keep their locks plain) ----
    def lock_free(self, obj: Any, field: Any, thread: str) -> bool:
        """May ``thread`` take the lock now (a waiter's condition)? The lock word is 0 in memory,
        or the thread's own last buffered store to it (its spin_unlock()) is."""
        mine = [s for s in self.buffers.get(thread, ()) if s.key == (id(obj), field)]
        return (mine[-1].value if mine and mine[-1].op is None else _get(obj, field)) == 0

    def spin_lock(self, obj: Any, field: Any) -> None:
        """spin_lock() of a free lock: an acquire read-modify-write of the lock word (x86: a
        locked instruction, a full barrier). Under lkmm the taker sees what the thread that
        released it had seen (spin_unlock() is smp_store_release())."""
        if not self.lkmm:
            self._rmw(obj, field, lambda v: 1, "spin_lock")
            return
        t, key = self.cpu, (id(obj), field)
        self._force(t, key)
        # Its own spin_unlock() of this lock comes first; and after a spin_unlock() of any lock,
        # the stores of that critical section (and before) reach memory before anything of this
        # one does (LKMM's unlock-lock ordering on one CPU).
        buf = self.buffers[t]
        last = max((i for i, s in enumerate(buf) if s.key == key or s.name == "spin_unlock"), default=-1)
        for _ in range(last + 1):
            self._drain(t, buf[0])
        released = self.msg_views.get(key)
        self.stale[t].pop(key, None)
        _set(obj, field, 1)
        self._stamp(t, key, atomic=True)
        self._published(t, obj, field, 0)
        refreshed = self._see(t, released)
        self.notes.append(f"spin_lock({location(obj, field)}) takes it" +
                          (f": {_copies(refreshed)} out of date" if refreshed else ""))

    def spin_unlock(self, obj: Any, field: Any) -> None:
        """spin_unlock(): smp_store_release() of the lock word."""
        self._buffer(obj, field, 0, None, "spin_unlock", release=True)

    def smp_mb__after_spinlock(self) -> None:
        # x86: the lock was a locked instruction already.
        if self.lkmm:
            self._fence("smp_mb__after_spinlock")

    # -- barriers --------------------------------------------------------------------
    def smp_mb(self) -> None:
        self._fence("smp_mb")

    def interrupt(self, vcpu: int) -> None:
        """The CPU that vCPU ``vcpu``'s thread runs on takes an interrupt (an IPI's handler runs and
        acknowledges it): taking an interrupt serializes that CPU, so its buffered stores reach
        memory before the acknowledgement does."""
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
            refreshed = self._order_loads(self.cpu)
            if refreshed:
                self.notes.append(f"smp_rmb: {_copies(refreshed)} out of date")

    def smp_mb__before_atomic(self) -> None:
        # x86: the atomic is a locked instruction, a full barrier already. lkmm: as smp_mb(),
        # which is stronger than the kernel's only for plain accesses between it and the atomic.
        if self.lkmm:
            self._fence("smp_mb__before_atomic")

    def smp_mb__after_atomic(self) -> None:
        if self.lkmm:
            self._fence("smp_mb__after_atomic")

    # -- the mechanics -----------------------------------------------------------------
    def _load(self, obj: Any, field: Any, name: str, acquire: bool = False) -> Any:
        key = (id(obj), field)
        t = self.cpu
        buf = self.buffers.setdefault(t, [])
        if self.lkmm and self.loads.get(t):
            self._force(t, key)  # read-read coherence: an earlier load of the location comes first
        for i in range(len(buf) - 1, -1, -1):
            s = buf[i]
            if s.key == key:
                if s.op is None:
                    self.notes.append(f"{name}({location(obj, field)}) = {show(s.value)} from its store buffer")
                    return s.value
                # Its own atomic on the location is still buffered: it reaches memory first.
                self._drain_through(t, key)
                break
        if not self.lkmm:
            return _get(obj, field)
        known = self.known.setdefault(t, {})
        seen = self.stale.setdefault(t, {}).get(key)
        if seen is not None:
            value, stamp, view = seen[2:]
            self.notes.append(f"{name}({location(obj, field)}) = {show(value)}, a stale copy "
                              f"(memory has {show(_get(obj, field))})")
        else:
            value, stamp, view = _get(obj, field), self.stamps.get(key, 0), self.msg_views.get(key)
        if stamp > known.get(key, 0):
            known[key] = stamp
        if acquire:
            refreshed = self._see(t, view)
            if refreshed:
                self.notes.append(f"{name}: {_copies(refreshed)} out of date")
        else:
            _join(self.carried.setdefault(t, {}), view)
        return value

    def _defer(self, obj: Any, field: Any, name: str) -> Any:
        t, key = self.cpu, (id(obj), field)
        self._force(t, key)
        if any(s.key == key for s in self.buffers.setdefault(t, [])):
            return self._load(obj, field, name)  # its own buffered store: forwarded now
        p = Pending(self, t, obj, field, name)
        self.loads.setdefault(t, []).append(p)
        self.notes.append(f"{name}({location(obj, field)}) is not satisfied yet (later accesses may go first)")
        return p

    def _satisfy(self, p: Pending, how: str) -> None:
        loads = self.loads[p.thread]
        del loads[next(i for i, q in enumerate(loads) if q is p)]  # == would satisfy the others
        cpu, self.cpu = self.cpu, p.thread
        try:
            p.value = self._load(p.obj, p.field, p.name)
        finally:
            self.cpu = cpu
        p.done = True
        self.notes.append(f"{p.name}({location(p.obj, p.field)}) = {show(p.value)}: satisfied {how}")

    def _force(self, thread: str, key: tuple[int, Any] | None = None) -> None:
        """Satisfy the thread's pending loads (of ``key`` only, if given): an access or barrier
        that orders them before itself is about to happen."""
        for p in list(self.loads.get(thread, ())):
            if key is None or p.key == key:
                self._satisfy(p, "before a later access that depends on it" if key is None
                              else "before a later access to the location")

    def _order_loads(self, thread: str) -> int:
        """smp_rmb() (and an address dependency): earlier loads come before later ones, and what
        those loads' writes had seen is seen from now on."""
        self._force(thread)
        carried, self.carried[thread] = self.carried.get(thread), {}
        return self._see(thread, carried)

    def _see(self, thread: str, view: dict | None) -> int:
        """The thread has now seen ``view``: its stale copies older than that are gone."""
        if not view:
            return 0
        known, stale, dropped = self.known.setdefault(thread, {}), self.stale.setdefault(thread, {}), 0
        for k, s in view.items():
            if s > known.get(k, 0):
                known[k] = s
                copy = stale.get(k)
                if copy is not None and copy[3] < s:
                    del stale[k]
                    dropped += 1
        return dropped

    def _hideable(self, s: _Store) -> bool:
        """lkmm: may this plain store go before the location's newest write in the order of writes
        to it (overwritten at once)? Only if its thread has not seen that write (not read it,
        nor anything that had seen it) and that write is no atomic (nothing may come between an
        atomic and the write it read)."""
        if s.op is not None or s.key in self.atomic_top:
            return False
        top = self.stamps.get(s.key, 0)
        return top > self.known[s.thread].get(s.key, 0) and top > self.carried[s.thread].get(s.key, 0)

    def _buffer(self, obj: Any, field: Any, value: Any, op: Callable[[Any], Any] | None,
                name: str, release: bool) -> None:
        t, view = self.cpu, None
        if self.lkmm:
            value = value_of(value)  # a data dependency: the load comes first
            if release:
                self._force(t)
                view = dict(self.known.setdefault(t, {}))
                _join(view, self.carried.get(t))
            elif self.loads.get(t):
                self._force(t, (id(obj), field))  # read-write coherence
        s = _Store(t, obj, field, value, op, name, self.epochs.get(t, 0), release, view)
        self.buffers.setdefault(t, []).append(s)
        shown = f"{name}({location(obj, field)}, {show(value)})" if op is None else \
            f"{name} on {location(obj, field)}"
        self.notes.append(f"{shown} waits in the store buffer")

    def _atomic(self, obj: Any, field: Any, op: Callable[[Any], Any], name: str) -> None:
        """A non-value-returning atomic: unordered under lkmm, a locked instruction under tso."""
        if self.lkmm:
            self._buffer(obj, field, None, op, name, release=False)
            return
        self._drain_all(self.cpu)  # tso: a locked instruction
        old = _get(obj, field)
        _set(obj, field, op(old))

    def _rmw(self, obj: Any, field: Any, fn: Callable[[Any], Any], name: str, relaxed: bool = False) -> Any:
        t, key = self.cpu, (id(obj), field)
        if relaxed and self.lkmm:
            # Atomic with respect to its location only: its own earlier accesses there go first.
            self._force(t, key)
            self._drain_through(t, key)
        else:
            self._fence(name)
        old = _get(obj, field)
        new = fn(old)
        _set(obj, field, new)
        if self.lkmm:
            self.stale[t].pop(key, None)
            if new != old:  # a failed cmpxchg writes nothing
                self._stamp(t, key, atomic=True)
            elif self.stamps.get(key, 0) > self.known[t].get(key, 0):
                self.known[t][key] = self.stamps[key]
            if not relaxed:
                _join(self.fence_view, self.known[t])
        self._published(t, obj, field, old)
        self.notes.append(f"{name} on {location(obj, field)}: {show(old)} -> {show(new)} in memory")
        return old

    def _stamp(self, thread: str, key: tuple[int, Any], atomic: bool, extra: dict | None = None
               ) -> tuple[int, dict | None]:
        """lkmm: a write of ``thread`` became the location's newest. Its message carries what the
        thread has seen (read by an acquire or after smp_rmb, that is seen too). Returns the stamp
        and view of the write it replaced."""
        old = self.stamps.get(key, 0), self.msg_views.get(key)
        self.clock += 1
        known = self.known[thread]
        known[key] = self.clock
        view = dict(known)
        _join(view, extra)
        self.stamps[key] = self.clock
        self.msg_views[key] = view
        if atomic:
            self.atomic_top.add(key)
        else:
            self.atomic_top.discard(key)
        return old

    def _fence(self, name: str) -> None:
        t = self.cpu
        if self.lkmm:
            self._force(t)
        drained = self._drain_all(t)
        refreshed = 0
        if self.lkmm:
            # Strong fences are totally ordered: each sees what every earlier one had seen.
            carried, self.carried[t] = self.carried.get(t), {}
            refreshed = self._see(t, carried) + self._see(t, self.fence_view)
            _join(self.fence_view, self.known[t])
        if drained or refreshed:
            what = [f"drains {drained} store{'s' if drained > 1 else ''}"] if drained else []
            what += [_copies(refreshed) + " out of date"] if refreshed else []
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

    def _drain(self, thread: str, s: _Store, how: str = EVERYWHERE) -> str:
        self.buffers[thread].remove(s)
        if how == HIDDEN:
            # Ordered just before the location's newest write, which its thread had not seen:
            # nobody reads it, and the thread itself reads the newer value from now on.
            self.stale[thread].pop(s.key, None)
            return (f"{location(s.obj, s.field)} = {show(s.value)} ({s.name}) is overwritten at once: it "
                    f"comes before the newer {show(_get(s.obj, s.field))}, which this CPU had not seen")
        old = _get(s.obj, s.field)
        new = s.value if s.op is None else s.op(old)
        _set(s.obj, s.field, new)
        stamp, view = self._stamp(thread, s.key, s.op is not None, s.view) if self.lkmm else (0, None)
        everywhere = how == EVERYWHERE
        self._published(thread, s.obj, s.field, old, everywhere, stamp, view)
        where = "" if everywhere or new == old else ", the other CPUs keep their old copy"
        return f"{location(s.obj, s.field)} = {show(new)} reaches memory ({s.name}{where})"

    def _published(self, writer: str, obj: Any, field: Any, old: Any, everywhere: bool = True,
                   stamp: int = 0, view: dict | None = None) -> None:
        """A write reached memory. Under lkmm the other threads either see it at once, or keep
        reading ``old`` (written as ``stamp``, carrying ``view``) until they must see newer."""
        if not self.lkmm:
            return
        key = (id(obj), field)
        for t, copies in self.stale.items():
            if t == writer or everywhere:
                copies.pop(key, None)
            elif key not in copies and old != _get(obj, field):
                copies[key] = (obj, field, old, stamp, view)


def _copies(n: int) -> str:
    return f"{n} stale cop{'ies' if n > 1 else 'y'}"


class MemoryEvent(Handle):
    """A store buffer draining one store, or a pending load being satisfied: a runnable entity of
    the scheduler. It draws in its thread's column of the timeline (the store is still that
    thread's write, the load that thread's read)."""

    current_op = ""
    returned = None
    position = "store buffer"

    def __init__(self, memory: Memory, thread: str, store: _Store | Pending, how: str):
        self.memory, self.name, self.store, self.how = memory, thread, store, how
        self.vcpu = memory.vcpu_of.get(thread)
        self.texts = []

    @property
    def everywhere(self) -> bool:
        return self.how == EVERYWHERE

    def runnable(self) -> bool:
        return True

    def idle(self) -> bool:
        return False

    def advance(self) -> None:
        if self.how == SATISFY:
            self.texts = []
            self.memory._satisfy(self.store, "now, after later accesses of its thread")
        else:
            self.texts = [self.memory._drain(self.name, self.store, self.how)]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MemoryEvent) and self.store is other.store and self.how == other.how

    def __hash__(self) -> int:
        return hash((id(self.store), self.how))
