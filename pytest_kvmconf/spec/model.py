"""What a loaded, validated spec is: plain frozen data, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..facets import Op
from .expr import Expr
from .locks import LockRules
from .versions import VersionRange

CheckKind = Literal["always", "final", "never", "exists"]
CHECK_KINDS: tuple[CheckKind, ...] = ("always", "final", "never", "exists")
#: Who a check's sentence obliges: "kvm" (KVM enforces it) or "userspace" (userspace must do it;
#: judged only on backends with the userspace_obligations capability, i.e. VMM-side models).
Obligation = Literal["kvm", "userspace"]
OBLIGATIONS: tuple[Obligation, ...] = ("kvm", "userspace")
USERSPACE_CAPABILITY = "userspace_obligations"
#: The memory models a run may simulate (engine.memory), strongest first: what holds under one
#: holds under those before it.
MEMORY_MODELS = ("sc", "tso", "lkmm")


@dataclass(frozen=True)
class Param:
    """A generated parameter: ``kind`` is range, choice, set or bool."""

    name: str
    kind: str
    values: tuple[Any, ...] = ()
    low: int = 0
    high: int = 0
    set_name: str = ""


@dataclass(frozen=True)
class Step:
    op: Op
    #: argument -> literal value or Expr over params, constants and bindings.
    args: tuple[tuple[str, Any], ...]
    bind: str | None
    where: str  # key path in the TOML file, for messages


@dataclass(frozen=True)
class Sequence:
    """A thread whose steps are drawn: ``length`` steps, each one of ``choose``."""

    min_length: int
    max_length: int
    choose: tuple[Step, ...]
    #: per-choice parameters, drawn afresh for each occurrence.
    choice_params: tuple[tuple[Param, ...], ...]


@dataclass(frozen=True)
class Thread:
    name: str
    vcpu: int | None
    per_vcpu: bool
    steps: tuple[Step, ...]
    sequence: Sequence | None


@dataclass(frozen=True)
class Check:
    kind: CheckKind
    expr: Expr
    when: Expr | None = None
    message: str = ""
    obligation: Obligation = "kvm"


@dataclass(frozen=True)
class Guarantee:
    id: str
    title: str
    file: Path
    document: str
    area: str
    section: str
    quote: str
    versions: VersionRange
    needs: frozenset[str]
    arch: str | None
    vcpus: int | Expr
    machine: tuple[tuple[str, Any], ...]
    params: tuple[Param, ...]
    threads: tuple[Thread, ...]
    checks: tuple[Check, ...]
    max_steps: int = 2000
    markers: tuple[str, ...] = field(default=())
    #: the [guarantee.locks] rules, judged by engine.lockdep after the run.
    locks: LockRules | None = None
    #: the memory models (engine.memory.MODELS) under which the document states it.
    memory_models: tuple[str, ...] = MEMORY_MODELS
    #: older wordings of ``quote``: (last release whose text words it so, words), oldest first.
    quote_until: tuple[tuple[str, str], ...] = ()

    def quote_for(self, version: str) -> str:
        """The quote in the words of the document text of release ``version``."""
        from .versions import parse_version

        for until, words in self.quote_until:
            if parse_version(version) <= parse_version(until):
                return words
        return self.quote

    @property
    def has_exists(self) -> bool:
        return any(c.kind == "exists" for c in self.checks)
