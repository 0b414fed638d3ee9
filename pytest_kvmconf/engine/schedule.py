"""A schedule: everything that decides one run, as plain data.

It is what hypothesis generates and shrinks, and what a replay command
carries: the parameters, the generated steps of sequence threads, and the
*choice tape*, one number per scheduling decision (0: the current thread
goes on; k > 0: switch to the k-th other runnable thread), written as
run lengths (see :class:`Chooser`). An exhausted tape means "go on", so
shrinking the tape means fewer context switches.
"""

from __future__ import annotations

import base64
import json
import zlib
from dataclasses import dataclass
from typing import Any

from ..errors import ReplayError
from . import replay_guard

GeneratedStep = tuple[int, tuple[tuple[str, Any], ...]]  # (choice index, its drawn params)


@dataclass(frozen=True)
class Schedule:
    guarantee: str
    params: tuple[tuple[str, Any], ...]
    sequences: tuple[tuple[str, tuple[GeneratedStep, ...]], ...]
    tape: tuple[int, ...]

    def encode(self) -> str:
        """``ID:blob``, the argument of ``--kvm-replay``."""
        data = [self.params, self.sequences, self.tape]
        raw = json.dumps(data, separators=(",", ":")).encode()
        return f"{self.guarantee}:{base64.urlsafe_b64encode(zlib.compress(raw, 9)).decode().rstrip('=')}"

    @classmethod
    def decode(cls, text: str) -> Schedule:
        # Untrusted input: inflated and parsed within limits (replay_guard), checked against
        # the guarantee before it runs (replay_guard.check).
        gid, sep, blob = replay_guard.check_text(text).partition(":")
        if not sep or not blob:
            raise ReplayError("a replay string looks like REQ-15:eNq... (the guarantee id, ':', the schedule)")
        try:
            raw = replay_guard.inflate(base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4)))
            params, seqs, tape = replay_guard.load_json(raw)
            return cls(
                gid,
                tuple((k, v) for k, v in params),
                tuple((t, tuple((c, tuple((k, v) for k, v in ps)) for c, ps in steps)) for t, steps in seqs),
                tuple(tape),
            )
        except ReplayError as exc:
            raise ReplayError(f"replay string for {gid} is damaged: {exc}") from None
        except (ValueError, TypeError, zlib.error) as exc:
            raise ReplayError(f"replay string for {gid} is damaged: {exc}") from None


class Chooser:
    """Reads the choice tape. A *decision* is a pick among two or more runnable
    entities (threads, or whatever else the runner offers to pick from); its
    *default* is the current entity when it can go on, else the first runnable.

    The first number picks the starting entity (modulo the number runnable).
    Then pairs (k, t) mean "the next k decisions take the default, the one after
    takes the t-th of the other runnable entities" (modulo their number). An
    exhausted tape takes the default, so a shorter tape is a schedule with fewer
    context switches, and shrinking towards short lists and small numbers
    shrinks towards the simplest interleaving. Every interleaving has a tape:
    :class:`TapeWriter` writes the one of a run whose picks came from elsewhere.
    """

    __slots__ = ("tape", "next", "left", "target", "started")

    def __init__(self, tape: tuple[int, ...]):
        self.tape = tape
        self.next = 1
        self.left: int | None = None
        self.target = 0
        self.started = False
        self._load()

    def _load(self) -> None:
        if self.next < len(self.tape):
            self.left = self.tape[self.next]
            self.target = self.tape[self.next + 1] if self.next + 1 < len(self.tape) else 0
            self.next += 2
        else:
            self.left = None

    def pick(self, runnable: list, current: Any) -> Any:
        if not self.started:
            self.started = True
            if len(runnable) > 1 and self.tape:
                return runnable[self.tape[0] % len(runnable)]
            return runnable[0]
        if len(runnable) == 1:
            return runnable[0]
        default = current if current in runnable else runnable[0]
        if self.left is None:
            return default
        if self.left > 0:
            self.left -= 1
            return default
        others = [x for x in runnable if x is not default]
        chosen = others[self.target % len(others)]
        self._load()
        return chosen


class TapeWriter:
    """Writes the canonical tape of the picks another chooser makes: fed every
    pick through :meth:`note`, :meth:`tape` is the shortest tape whose
    :class:`Chooser` makes the same picks (each number in its exact range, no
    trailing defaults)."""

    __slots__ = ("out", "run", "started")

    def __init__(self) -> None:
        self.out: list[int] = [0]
        self.run = 0
        self.started = False

    def note(self, runnable: list, current: Any, chosen: Any) -> None:
        if not self.started:
            self.started = True
            self.out[0] = runnable.index(chosen) if len(runnable) > 1 else 0
            return
        if len(runnable) == 1:
            return
        default = current if current in runnable else runnable[0]
        if chosen is default:
            self.run += 1
            return
        others = [x for x in runnable if x is not default]
        self.out += [self.run, others.index(chosen)]
        self.run = 0

    def tape(self) -> tuple[int, ...]:
        return () if self.out == [0] else tuple(self.out)


class Recording:
    """A chooser that makes its inner chooser's picks and writes their canonical tape."""

    __slots__ = ("inner", "writer")

    def __init__(self, inner: Any):
        self.inner, self.writer = inner, TapeWriter()

    def pick(self, runnable: list, current: Any) -> Any:
        chosen = self.inner.pick(runnable, current)
        self.writer.note(runnable, current, chosen)
        return chosen
