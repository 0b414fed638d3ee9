"""The ``[guarantee.locks]`` table: documented locking rules, stated declaratively.

locking.rst states its rules as lists (orders, leaves, what each lock
protects), so a spec states them as tables, not as conditions::

    [guarantee.locks]
    order = [["kvm->lock", "vcpu->mutex"]]          # outer, inner
    leaves = ["kvm->mn_invalidate_lock"]             # nothing taken inside
    not_in_srcu = ["kvm->slots_lock"]                # never inside a kvm->srcu read side
    only_under = [["kvm->arch.tdp_mmu_pages_lock", "kvm->mmu_lock"]]
    not_in_ops = [{ ops = ["kvm_mmu_notifier_invalidate_range_start"], locks = ["kvm->slots_lock"] }]
    released_before_sync = ["kvm->slots_arch_lock"]  # not held across synchronize_srcu
    protects = { "kvm_lock" = ["vm_list"] }          # an access needs one of its locks
    deadlock_free = true                             # no cycle in the lock graph

:mod:`pytest_kvmconf.engine.lockdep` evaluates them over the acquisitions a run
recorded. Lock and data names are checked against the locking facet, so a typo
is a spec error, not a rule that silently never fires.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

LOCK_KEYS = {
    "order": "[[outer, inner], ...]: outer is always taken outside inner",
    "leaves": "[lock, ...]: no lock is taken inside these",
    "not_in_srcu": "[lock, ...]: never taken inside a kvm->srcu read-side critical section",
    "only_under": "[[lock, needed], ...]: lock is only taken with needed held",
    "not_in_ops": "[{ ops = [...], locks = [...] }, ...]: these operations never take these locks",
    "released_before_sync": "[lock, ...]: never held across synchronize_srcu(&kvm->srcu)",
    "protects": "{ lock = [data, ...] }: an access to data holds one of the locks protecting it",
    "deadlock_free": "true: the run's lock graph has no cycle",
}


@dataclass(frozen=True)
class LockRules:
    order: tuple[tuple[str, str], ...] = ()
    leaves: tuple[str, ...] = ()
    not_in_srcu: tuple[str, ...] = ()
    only_under: tuple[tuple[str, str], ...] = ()
    not_in_ops: tuple[tuple[frozenset[str], frozenset[str]], ...] = ()
    released_before_sync: tuple[str, ...] = ()
    protects: tuple[tuple[str, tuple[str, ...]], ...] = ()
    deadlock_free: bool = False


class _Builder(Protocol):
    def err(self, key: str | None, message: str) -> Exception: ...


def parse_lock_rules(builder: _Builder, raw: Any) -> LockRules | None:
    """Validate ``[guarantee.locks]`` (None when absent); errors name the key path. Every
    rule is checked, and all the errors are raised together (the loader's ``raise_all``)."""
    if raw is None:
        return None
    from .. import facets
    from ..facets.locking import DATA, LOCKS
    from .loader import raise_all

    if not isinstance(raw, dict) or not raw:
        raise builder.err("locks", f"a table with some of: {', '.join(LOCK_KEYS)}")
    errors: list[Any] = []
    for k in raw:
        if k not in LOCK_KEYS:
            errors.append(builder.err(f"locks.{k}", f"unknown key {k!r}; allowed: {', '.join(LOCK_KEYS)}"))

    def lock(key: str, v: Any) -> str:
        if not isinstance(v, str) or v not in LOCKS:
            errors.append(builder.err(key, f"unknown lock {v!r}; known: {', '.join(LOCKS)}"))
        return v

    def locks(key: str) -> tuple[str, ...]:
        v = raw.get(key, [])
        if not isinstance(v, list):
            errors.append(builder.err(f"locks.{key}", LOCK_KEYS[key]))
            return ()
        return tuple(lock(f"locks.{key}[{i}]", x) for i, x in enumerate(v))

    def pairs(key: str) -> tuple[tuple[str, str], ...]:
        v = raw.get(key, [])
        if not isinstance(v, list) or not all(isinstance(p, list) and len(p) == 2 for p in v):
            errors.append(builder.err(f"locks.{key}", LOCK_KEYS[key]))
            return ()
        return tuple((lock(f"locks.{key}[{i}][0]", a), lock(f"locks.{key}[{i}][1]", b))
                     for i, (a, b) in enumerate(v))

    ops = facets.all_ops()
    scoped = []
    in_ops = raw.get("not_in_ops", [])
    if not isinstance(in_ops, list):
        errors.append(builder.err("locks.not_in_ops", LOCK_KEYS["not_in_ops"]))
        in_ops = []
    for i, t in enumerate(in_ops):
        key = f"locks.not_in_ops[{i}]"
        if not isinstance(t, dict) or set(t) != {"ops", "locks"} or not all(
                isinstance(t[k], list) for k in t):
            errors.append(builder.err(key, LOCK_KEYS["not_in_ops"]))
            continue
        for o in t["ops"]:
            if not isinstance(o, str) or o not in ops:
                errors.append(builder.err(f"{key}.ops", f"unknown operation {o!r}"))
        named = [lock(f"{key}.locks", x) for x in t["locks"]]
        scoped.append((frozenset(o for o in t["ops"] if isinstance(o, str)),
                       frozenset(x for x in named if isinstance(x, str))))
    protects = raw.get("protects", {})
    if not isinstance(protects, dict):
        errors.append(builder.err("locks.protects", LOCK_KEYS["protects"]))
        protects = {}
    prot = []
    for name, data in protects.items():
        key = f"locks.protects.{name}"
        lock(key, name)
        if not isinstance(data, list) or not data:
            errors.append(builder.err(key, "a non-empty list of data names"))
            continue
        for d in data:
            if not isinstance(d, str) or d not in DATA:
                errors.append(builder.err(key, f"unknown data {d!r}; known: {', '.join(DATA)}"))
        prot.append((name, tuple(data)))
    free = raw.get("deadlock_free", False)
    if not isinstance(free, bool):
        errors.append(builder.err("locks.deadlock_free", "true or false"))
    rules = LockRules(order=pairs("order"), leaves=locks("leaves"), not_in_srcu=locks("not_in_srcu"),
                      only_under=pairs("only_under"), not_in_ops=tuple(scoped),
                      released_before_sync=locks("released_before_sync"), protects=tuple(prot),
                      deadlock_free=free is True)
    raise_all(errors)
    return rules
