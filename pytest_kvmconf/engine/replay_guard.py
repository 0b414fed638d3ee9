"""Limits around decoding a ``--kvm-replay`` string, and its check against the guarantee.

A replay string comes from the command line, so it is untrusted: a 78 KB argument once
inflated to a 30-million-entry tape. :meth:`Schedule.decode` inflates and parses through
:func:`inflate` and :func:`load_json` (bounded before and during decompression, no deep
nesting, no NaN or Infinity), and :func:`check` holds the decoded schedule against the
guarantee it names before anything runs: its parameters must be the spec's and inside
their domains, its generated steps must be the spec's choices, its tape plain small numbers.
Every failure is a :class:`~pytest_kvmconf.errors.ReplayError` (a usage error).
"""

from __future__ import annotations

import json
import zlib
from typing import Any

from .. import facets
from ..errors import ReplayError
from ..spec.model import Guarantee, Param

#: Longest replay string accepted (the ones the engine prints are well under 1 KB).
MAX_TEXT = 16_384
#: Largest decompressed schedule, in bytes.
MAX_RAW = 262_144
#: Deepest JSON nesting a schedule has (params: list of pairs of values).
MAX_JSON_DEPTH = 8
#: Longest choice tape, and largest number on it.
MAX_TAPE = 10_000
MAX_TAPE_VALUE = 1 << 16


def check_text(text: str) -> str:
    text = text.strip()
    if not text:
        raise ReplayError("an empty replay string; a replay string looks like REQ-15:eNq... "
                          "(the guarantee id, ':', the schedule), as printed with a failure")
    if len(text) > MAX_TEXT:
        raise ReplayError(f"a replay string may be at most {MAX_TEXT} characters (this one has {len(text)})")
    return text


def inflate(data: bytes) -> bytes:
    """zlib-decompress at most MAX_RAW bytes, refusing more without inflating it."""
    d = zlib.decompressobj()
    try:
        raw = d.decompress(data, MAX_RAW)
    except zlib.error as exc:
        raise ReplayError(f"not zlib data ({exc})") from None
    if d.unconsumed_tail or not d.eof and len(raw) >= MAX_RAW:
        raise ReplayError(f"the schedule inflates to more than {MAX_RAW} bytes; no printed replay is that large")
    if not d.eof:
        raise ReplayError("truncated zlib data")
    return raw


def _no_constant(name: str) -> Any:
    raise ReplayError(f"the schedule contains {name}, which no schedule has")


def load_json(raw: bytes) -> Any:
    depth = deepest = 0
    in_string = escaped = False
    for b in raw:  # bounded: raw is at most MAX_RAW bytes
        if in_string:
            if escaped:
                escaped = False
            elif b == 0x5C:
                escaped = True
            elif b == 0x22:
                in_string = False
        elif b == 0x22:
            in_string = True
        elif b in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_JSON_DEPTH:
                raise ReplayError(f"the schedule nests deeper than {MAX_JSON_DEPTH} levels; no schedule does")
        elif b in (0x5D, 0x7D):
            depth -= 1
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except ValueError as exc:
        if isinstance(exc, ReplayError):
            raise
        raise ReplayError(f"not JSON ({exc})") from None


def _in_domain(p: Param, value: Any, doc_version: str) -> bool:
    if p.kind == "range":
        return type(value) is int and p.low <= value <= p.high
    if p.kind == "bool":
        return type(value) is bool
    if p.kind == "set":
        return value in facets.all_named_sets()[p.set_name](doc_version)
    return any(type(value) is type(v) and value == v for v in p.values)


def _params(where: str, params: tuple[Param, ...], given: Any, doc_version: str) -> None:
    if not isinstance(given, tuple) or not all(isinstance(kv, tuple) and len(kv) == 2 for kv in given):
        raise ReplayError(f"{where}: parameters must be (name, value) pairs")
    names = [k for k, _ in given]
    wanted = [p.name for p in params]
    if sorted(map(str, names)) != sorted(wanted) or len(set(names)) != len(names):
        raise ReplayError(f"{where}: the replay gives parameters {', '.join(map(str, names)) or 'none'}, but the "
                          f"spec has {', '.join(wanted) or 'none'} (a replay string of another spec version?)")
    values = dict(given)
    for p in params:
        if not _in_domain(p, values[p.name], doc_version):
            raise ReplayError(f"{where}: parameter {p.name} = {values[p.name]!r} is outside its domain in the "
                              "spec; the replay cannot be of this spec")


def check(schedule: Any, g: Guarantee, doc_version: str) -> None:
    """Reject a schedule that cannot be one of ``g``'s, before anything runs."""
    if schedule.guarantee != g.id:
        raise ReplayError(f"the replay string is for {schedule.guarantee}, not {g.id}")
    tape = schedule.tape
    if len(tape) > MAX_TAPE or not all(type(x) is int and 0 <= x <= MAX_TAPE_VALUE for x in tape):
        raise ReplayError(f"{g.id}: the choice tape must be at most {MAX_TAPE} integers from 0 to {MAX_TAPE_VALUE}")
    _params(g.id, g.params, schedule.params, doc_version)
    seqs = {t.name: t.sequence for t in g.threads if t.sequence is not None}
    given = schedule.sequences
    if not isinstance(given, tuple) or sorted(str(t) for t, _ in given) != sorted(seqs):
        raise ReplayError(f"{g.id}: the replay has generated steps for threads "
                          f"{', '.join(str(t) for t, _ in given) or 'none'}, but the spec's sequence threads are "
                          f"{', '.join(sorted(seqs)) or 'none'}")
    for name, steps in given:
        seq = seqs[name]
        if not seq.min_length <= len(steps) <= seq.max_length:
            raise ReplayError(f"{g.id}: thread {name} has {len(steps)} generated steps; the spec allows "
                              f"{seq.min_length} to {seq.max_length}")
        for i, (choice, drawn) in enumerate(steps):
            if type(choice) is not int or not 0 <= choice < len(seq.choose):
                raise ReplayError(f"{g.id}: thread {name} step {i} picks choice {choice!r}; the spec has "
                                  f"{len(seq.choose)}")
            _params(f"{g.id}: thread {name} step {i}", seq.choice_params[choice], drawn, doc_version)
