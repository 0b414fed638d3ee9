"""Waiting on the kernel's own evidence instead of a wall-clock window.

A live check often has to know that something the kernel does asynchronously is
over: a kick ended KVM_RUN, or it cannot any more; a vCPU is inside KVM_RUN with
nothing more to do. No fixed delay can tell that on a loaded 2-core host, so the
backend waits until the kernel *shows* one outcome or the other:

* KVM_RUN returned (the vCPU thread's own record);
* the kick signal is no longer pending for the vCPU thread
  (``/proc/self/task/<tid>/status``, ``SigPnd``): it was taken, in userspace or by
  KVM_RUN's return;
* the vCPU sleeps in kvm_vcpu_block: the binary statistic ``blocking`` is 1 and the
  thread's scheduler state is ``S`` (``/proc/self/task/<tid>/stat``), so no wake-up
  is under way;
* the guest runs on: the vCPU's ``exits`` statistic grew by :data:`ENTRIES` since
  the event, and the guest's own progress counter moved after that, i.e. KVM entered
  the guest again several times with the event behind it (an interrupt pending at
  an entry is injected there, or at the next exit once the guest enables
  interrupts) (:class:`RanOn`).

Each wait has a generous bound (:data:`BOUND`); exceeding it raises
:class:`~pytest_kvmconf.backend.UndecidedUnderLoad`: the example decides nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ...errors import UndecidedUnderLoad

#: Longest wait for the kernel's evidence, in seconds. Generous on a loaded host (the usual
#: wait is well under a millisecond) and below the engine's default 5 s point timeout.
BOUND = 3.0
#: Polling step of the waits (the evidence is read, not signalled).
STEP = 0.0002
#: How many guest entries after an event count as "the guest runs on with it behind".
ENTRIES = 4


def signal_pending(tid: int, signo: int) -> bool | None:
    """Is ``signo`` pending for thread ``tid`` of this process (its private set)? None if unknown."""
    try:
        with open(f"/proc/self/task/{tid}/status") as f:
            for line in f:
                if line.startswith("SigPnd:"):
                    return bool(int(line.split()[1], 16) >> (signo - 1) & 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def thread_state(tid: int) -> str | None:
    """The scheduler state letter of thread ``tid`` (R running/runnable, S sleeping, ...)."""
    try:
        with open(f"/proc/self/task/{tid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    # The command is in parentheses and may contain spaces; the state follows the last ')'.
    rest = text[text.rfind(")") + 2:]
    return rest[:1] or None


def await_evidence(decided: Callable[[], bool], what: str, bound: float = BOUND,
                   step: Callable[[float], object] | None = None) -> float:
    """Poll ``decided()`` until it holds; the seconds it took. ``step(seconds)`` sleeps between
    polls (``time.sleep`` by default; pass an Event's ``wait`` to return early)."""
    sleep = step or time.sleep
    start = time.monotonic()
    pause = STEP
    while not decided():
        waited = time.monotonic() - start
        if waited >= bound:
            raise UndecidedUnderLoad(f"{what}: no evidence either way within {bound:g} s")
        sleep(pause)
        pause = min(pause * 2, 0.005)
    return time.monotonic() - start


class RanOn:
    """Has the guest been entered :data:`ENTRIES` more times since this object was made, and run
    after that? Reads the vCPU's ``exits`` statistic and the guest's progress counter."""

    def __init__(self, exits: Callable[[], int | None], progress: Callable[[], int]):
        self.exits, self.progress = exits, progress
        self.start = exits()
        self.after: int | None = None  # progress once the entries were seen

    def __call__(self) -> bool:
        now = self.exits()
        if now is None or self.start is None:
            return False  # no statistics: only KVM_RUN's return or the bound decide
        if self.after is None:
            if now >= self.start + ENTRIES:
                self.after = self.progress()
            return False
        return self.progress() != self.after
