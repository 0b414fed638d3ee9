"""The kernel's atomic primitives, for state shared between real OS threads.

Each object owns a small lock that stands for the CPU's atomic instruction
(``lock bts``, ``lock cmpxchg``): every operation is one indivisible
read-modify-write, whatever other threads do at the same time. No method ever
reaches a scheduling point while holding the lock, so under the engine these
locks are never contended across a parked thread.
"""

from __future__ import annotations

import threading
from typing import Any


class AtomicBitmap:
    """An ``unsigned long`` bitmap with set_bit / clear_bit / test_and_clear_bit."""

    __slots__ = ("_lock", "_bits")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bits = 0

    def read(self) -> int:
        """READ_ONCE(): a Python int read is a single load."""
        return self._bits

    def set_bit(self, nr: int) -> None:
        with self._lock:
            self._bits |= 1 << nr

    def clear_bit(self, nr: int) -> None:
        with self._lock:
            self._bits &= ~(1 << nr)

    def test_bit(self, nr: int) -> bool:
        return bool(self._bits >> nr & 1)

    def test_and_clear_bit(self, nr: int) -> bool:
        with self._lock:
            was = bool(self._bits >> nr & 1)
            self._bits &= ~(1 << nr)
            return was

    def take_lowest(self) -> int | None:
        """Find the lowest set bit and clear it, atomically (the run loop's next request)."""
        with self._lock:
            bits = self._bits
            if not bits:
                return None
            nr = (bits & -bits).bit_length() - 1
            self._bits = bits & ~(1 << nr)
            return nr


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
