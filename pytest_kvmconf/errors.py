"""Every error pytest-kvmconf raises on purpose, under one root.

``except KvmconfError`` catches whatever the plugin reports about its input
(spec files, conditions, replay strings, expectation files, backends) or finds
about a backend (violations, hangs). Anything else escaping the plugin is a
bug of the plugin itself. The classes stay importable from the modules that
raise them (``spec.loader.SpecError``, ``engine.explore.ViolationFound``, ...).

    KvmconfError
    ├── UsageError                 what the user gave cannot be used
    │   ├── SpecError              a spec file (names file, guarantee, key)
    │   ├── ExprError              a condition that does not parse or is not allowed
    │   ├── ReplayError            a --kvm-replay string
    │   ├── ExpectationError       an expectation file (names file and key)
    │   └── BackendError           the chosen backend cannot be had
    ├── EvalError                  a condition failed while being evaluated
    │   └── BudgetExceeded         ... because it ran past its time/size budget
    ├── BackendFault               a backend method broke its contract (raised, wrong type, leaked)
    │   └── BackendHang            a backend thread hung, deadlocked outside the scheduler or spun
    ├── Finding                    a verdict against the backend (pytest shows it as a failure)
    │   ├── ViolationFound
    │   └── NothingReached
    └── Undecided                  no verdict: a live backend's evidence did not come in time
        ├── UndecidedUnderLoad     one example (raised by the backend; the example is discarded)
        └── CouldNotDecide         too many examples undecided (pytest shows a skip with the figures)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine.records import Outcome
    from .spec.model import Guarantee


class KvmconfError(Exception):
    """The root of every error pytest-kvmconf raises on purpose."""


class UsageError(KvmconfError):
    """Something the user supplied cannot be used; ``str()`` is the whole message."""


class SpecError(UsageError):
    """A spec file that cannot be used; the message names the file, the guarantee id and the key."""

    def __init__(self, file: Path | str, gid: str | None, key: str | None, message: str):
        self.file, self.gid, self.key, self.message = str(file), gid, key, message
        where = [self.file]
        if gid:
            where.append(f"guarantee {gid}")
        if key:
            where.append(f"key {key}")
        super().__init__(f"{': '.join(where)}: {message}")


class ExprError(UsageError, ValueError):
    """A condition that cannot be parsed or uses something not allowed."""


class ReplayError(UsageError, ValueError):
    """A ``--kvm-replay`` string that is damaged or does not fit the guarantee it names."""


class ExpectationError(UsageError):
    """An expectation file that cannot be used; ``str()`` names the file and the key."""

    def __init__(self, file: Path | str, key: str | None, message: str):
        self.file, self.key, self.message = str(file), key, message
        super().__init__(f"{file}: key {key}: {message}" if key else f"{file}: {message}")


class BackendError(UsageError):
    """The chosen backend cannot be had; the message says why and what exists."""


class EvalError(KvmconfError, ValueError):
    """A condition that failed while being evaluated (bad index, type...)."""


class BudgetExceeded(EvalError):
    """A condition or parameter expression ran past its budget (steps, integer or sequence size)."""


class BackendFault(KvmconfError):
    """A backend broke its contract: a method raised outside an operation, returned the wrong
    type, or left threads or fds behind. The message names the backend and the method."""


class BackendHang(BackendFault):
    """A thread executor's report that a backend thread hung, deadlocked outside the scheduler
    or spun; the message lists every thread's last scheduling point (and stack)."""


class Finding(KvmconfError, AssertionError):
    """A verdict against the backend; pytest reports it as the guarantee's failure."""


class ViolationFound(Finding):
    """A schedule broke the guarantee; carries the (shrunk) outcome."""

    def __init__(self, outcome: Outcome, note: str = ""):
        self.outcome = outcome
        self.stats: Any = None
        #: a sentence about how it was found (e.g. that a replay did not reproduce it).
        self.note = note
        v = outcome.violation
        super().__init__(f"{outcome.guarantee.id}: {v.kind if v else '?'}: {v.message if v else ''}")


class NothingReached(Finding):
    """An `exists` check that no schedule satisfied."""

    def __init__(self, g: Guarantee, examples: int, last: Outcome | None):
        self.guarantee, self.examples, self.last = g, examples, last
        self.stats: Any = None
        checks = [str(c.expr) for c in g.checks if c.kind == "exists"]
        super().__init__(f"{g.id}: none of {examples} schedules reached: {'; '.join(checks)}")


class Undecided(KvmconfError):
    """Neither a pass nor a violation: a live backend could not get the kernel's evidence."""


class UndecidedUnderLoad(Undecided):
    """A live backend waited for the kernel's evidence longer than its generous bound (a
    loaded host, a vCPU thread not scheduled): the example decides nothing, for or against
    the guarantee. Raised from an operation (or set as ``machine.undecided``); the engine
    discards the example and counts it."""


class CouldNotDecide(Undecided):
    """Too many examples of a live backend were undecided under load: the plugin skips the
    guarantee with this message and the figures (``stats.undecided`` of ``stats.examples``)."""

    def __init__(self, g: Guarantee, stats: Any):
        self.guarantee, self.stats = g, stats
        super().__init__(
            f"{g.id}: could not decide under load: {stats.undecided} of {stats.examples} examples "
            f"waited longer than the backend's bound for the kernel's evidence "
            f"(first: {stats.undecided_why}); rerun on a less loaded machine")


__all__ = ["CouldNotDecide", "Undecided", "UndecidedUnderLoad",
           "BackendError", "BackendFault", "BackendHang", "BudgetExceeded", "EvalError", "ExpectationError",
           "ExprError", "Finding", "KvmconfError", "NothingReached", "ReplayError", "SpecError",
           "UsageError", "ViolationFound"]
