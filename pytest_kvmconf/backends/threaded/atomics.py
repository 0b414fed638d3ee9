"""The kernel's atomic primitives, for state shared between real OS threads.

The words the documents' barrier pairings order (``vcpu->requests``, ``vcpu->mode``, the
posted-interrupt descriptor) are not here: they go through ``self.memory``
(:mod:`pytest_kvmconf.engine.memory`), which simulates tso and lkmm. These are for state no
pairing orders (counters, SPTEs), where the atomicity alone matters.

Each object owns a small lock that stands for the CPU's atomic instruction
(``lock bts``, ``lock cmpxchg``): every operation is one indivisible
read-modify-write, whatever other threads do at the same time. No method ever
reaches a scheduling point while holding the lock, so under the engine these
locks are never contended across a parked thread.
"""

from __future__ import annotations

import threading
from typing import Any


class AtomicWord:
    """A machine word (an ``int``, or an immutable value such as an SPTE) with
    READ_ONCE / WRITE_ONCE / cmpxchg / xchg."""

    __slots__ = ("_lock", "_value")

    def __init__(self, value: Any = 0) -> None:
        self._lock = threading.Lock()
        self._value = value

    def read(self) -> Any:
        return self._value

    def write(self, value: Any) -> None:
        with self._lock:
            self._value = value

    def cmpxchg(self, old: Any, new: Any) -> Any:
        """Store ``new`` if the word holds ``old``; return what it held."""
        with self._lock:
            seen = self._value
            if seen == old:
                self._value = new
            return seen

    def xchg(self, new: Any) -> Any:
        with self._lock:
            old, self._value = self._value, new
            return old


class AtomicInt(AtomicWord):
    """An ``int`` word, with atomic add as well."""

    __slots__ = ()

    def add(self, n: int = 1) -> int:
        with self._lock:
            self._value += n
            return self._value
