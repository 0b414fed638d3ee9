"""Litmus tests of the Linux kernel memory model (tools/memory-model/litmus-tests/).

Not a KVM document: this vocabulary lets a spec be a kernel litmus test, so the
engine's memory models (:mod:`pytest_kvmconf.engine.memory`) can be validated
against the results the kernel's own files state. Each operation is one access
or barrier with the kernel's name, on a shared variable named by a string
(``x``, ``y``...) that starts at 0; its value at the end is ``shared.<name>``.
Run these specs with ``--kvm-memory-model=lkmm`` (or tso); under sc they are
plain interleavings.
"""

from __future__ import annotations

from . import Arg, Facet, register

litmus = register(Facet("litmus", "shared variables with the kernel's accesses and barriers "
                                  "(memory-model litmus tests)"))

VAR = Arg("var", "str", doc="the shared variable")
VALUE = Arg("value", "int", doc="the value to store")

litmus.op("WRITE_ONCE", [VAR, VALUE], "none", "WRITE_ONCE(*var, value); also a plain C store")
litmus.op("READ_ONCE", [VAR, Arg("dep", "bool", optional=True, default=False,
                                  doc="the address depends on an earlier load (an address dependency)")],
          "int", "READ_ONCE(*var); also a plain C load")
litmus.op("smp_store_release", [VAR, VALUE], "none", "smp_store_release(var, value)")
litmus.op("smp_load_acquire", [VAR], "int", "smp_load_acquire(var)")
litmus.op("xchg", [VAR, VALUE], "int", "xchg(var, value): fully ordered, returns the old value")
litmus.op("cmpxchg", [VAR, Arg("old", "int"), Arg("new", "int")], "int",
          "cmpxchg(var, old, new): fully ordered, returns the old value")
LOCK = Arg("lock", "str", doc="the spinlock (a shared variable, 0 when free)")
litmus.op("spin_lock", [LOCK], "none", "spin_lock(lock): waits until the lock is free, then takes it (acquire)")
litmus.op("spin_unlock", [LOCK], "none", "spin_unlock(lock): releases it (release)")
litmus.op("spin_is_locked", [LOCK], "int", "spin_is_locked(lock): 1 if held, else 0")
for name, doc in [("smp_mb", "full barrier"), ("smp_wmb", "orders stores"), ("smp_rmb", "orders loads"),
                  ("smp_mb__before_atomic", "upgrades the following atomic to a full barrier"),
                  ("smp_mb__after_atomic", "upgrades the preceding atomic to a full barrier"),
                  ("smp_mb__after_spinlock", "upgrades the preceding spin_lock() to a full barrier")]:
    litmus.op(name, [], "none", f"{name}(): {doc}")

litmus.observables.update({
    "shared": "the litmus facet's shared variables: shared.x, shared.y ... (those written so far)",
})
