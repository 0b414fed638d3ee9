"""The litmus facet: each access or barrier is one step on ``self.memory``, nothing more."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from ...backend import MachineConfig, ThreadContext
from ...engine.memory import SharedMap, show
from ...scheduling import Point, Wait

Steps = Generator[Point, None, Any]


class LitmusModel:
    """Facet mixin: shared variables and the kernel's accesses to them."""

    def init_litmus(self, config: MachineConfig) -> None:
        self.shared = SharedMap("", default=0)  # litmus variables start at 0

    def observe_litmus(self) -> dict[str, Any]:
        return {"shared": dict(self.shared)}

    def WRITE_ONCE(self, ctx: ThreadContext, var: str, value: int) -> Steps:
        self.memory.write_once(self.shared, var, value)
        yield Point(f"WRITE_ONCE({var}, {value})")

    def READ_ONCE(self, ctx: ThreadContext, var: str, dep: bool = False) -> Steps:
        # lazy: the spec only binds the value, so the load may be satisfied after later accesses
        # (load buffering); a use of the value (a dependency) satisfies it then.
        value = self.memory.read_once(self.shared, var, dep=dep, lazy=True)
        yield Point(f"READ_ONCE({var}) = {show(value)}")
        return value

    def smp_store_release(self, ctx: ThreadContext, var: str, value: int) -> Steps:
        self.memory.store_release(self.shared, var, value)
        yield Point(f"smp_store_release({var}, {value})")

    def smp_load_acquire(self, ctx: ThreadContext, var: str) -> Steps:
        value = self.memory.load_acquire(self.shared, var)
        yield Point(f"smp_load_acquire({var}) = {value}")
        return value

    def xchg(self, ctx: ThreadContext, var: str, value: int) -> Steps:
        old = self.memory.xchg(self.shared, var, value)
        yield Point(f"xchg({var}, {value}) = {old}")
        return old

    def cmpxchg(self, ctx: ThreadContext, var: str, old: int, new: int) -> Steps:
        seen = self.memory.cmpxchg(self.shared, var, old, new)
        yield Point(f"cmpxchg({var}, {old}, {new}) = {seen}")
        return seen

    def smp_mb(self, ctx: ThreadContext) -> Steps:
        self.memory.smp_mb()
        yield Point("smp_mb()")

    def smp_wmb(self, ctx: ThreadContext) -> Steps:
        self.memory.smp_wmb()
        yield Point("smp_wmb()")

    def smp_rmb(self, ctx: ThreadContext) -> Steps:
        self.memory.smp_rmb()
        yield Point("smp_rmb()")

    def smp_mb__before_atomic(self, ctx: ThreadContext) -> Steps:
        self.memory.smp_mb__before_atomic()
        yield Point("smp_mb__before_atomic()")

    def smp_mb__after_atomic(self, ctx: ThreadContext) -> Steps:
        self.memory.smp_mb__after_atomic()
        yield Point("smp_mb__after_atomic()")

    def smp_mb__after_spinlock(self, ctx: ThreadContext) -> Steps:
        self.memory.smp_mb__after_spinlock()
        yield Point("smp_mb__after_spinlock()")

    def spin_lock(self, ctx: ThreadContext, lock: str) -> Steps:
        yield Wait(f"spin_lock({lock}): wait until it is free",
                   lambda: self.memory.lock_free(self.shared, lock, ctx.name))
        self.memory.spin_lock(self.shared, lock)
        yield Point(f"spin_lock({lock})")

    def spin_unlock(self, ctx: ThreadContext, lock: str) -> Steps:
        self.memory.spin_unlock(self.shared, lock)
        yield Point(f"spin_unlock({lock})")

    def spin_is_locked(self, ctx: ThreadContext, lock: str) -> Steps:
        held = int(self.memory.read_once(self.shared, lock) != 0)
        yield Point(f"spin_is_locked({lock}) = {held}")
        return held
