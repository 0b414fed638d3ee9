"""The replay string and the replay command: one schedule, and everything a run needs to redo it.

A replay string is ``ID@FINGERPRINT:SCHEDULE``. The schedule (engine/schedule.py) is the
parameters, generated steps and choice tape; the fingerprint is a hash of what that tape steers
in the guarantee (its threads, steps, parameters, vCPUs, machine options), so a replay string made
from another guarantee, or from an older version of this one, is refused with a message instead
of silently steering different code. The checks are not in the fingerprint: replaying a
violation against a corrected condition is how a spec author confirms the fix.

The replay command carries what the failing run depended on besides the string: the folder it
ran in, the environment variables that decide imports and plugins (``PYTHONPATH``, ...), the
backend as it was named, the document text, the spec folders, the schedule mode and the memory model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from .engine import replay_guard
from .engine.schedule import Schedule
from .errors import ReplayError
from .spec.expr import Expr
from .spec.model import Guarantee

#: Environment variables that change what a pytest run imports or loads.
CARRIED_ENV = ("PYTHONPATH", "PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD")
#: The guarantee fields a schedule steers (everything else may change without staling a replay).
STEERED = ("id", "vcpus", "machine", "params", "threads", "max_steps", "needs", "arch")


@dataclass(frozen=True)
class Replay:
    schedule: Schedule
    fingerprint: str

    @property
    def guarantee(self) -> str:
        return self.schedule.guarantee


def _plain(value: Any) -> Any:
    """A JSON-able, address-free picture of spec data (Expr by its source, Op by its name)."""
    if isinstance(value, Expr):
        return ["expr", value.source]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if type(value).__name__ == "Op":
            return ["op", value.name]
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if f.name not in ("where", "doc")}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, frozenset | set):
        return sorted((_plain(v) for v in value), key=repr)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return value.name
    return value


def fingerprint(g: Guarantee) -> str:
    picture = {name: _plain(getattr(g, name)) for name in STEERED}
    raw = json.dumps(picture, sort_keys=True, separators=(",", ":"), default=repr).encode()
    return hashlib.sha256(raw).hexdigest()[:10]


def encode(g: Guarantee, schedule: Schedule) -> str:
    gid, _, blob = schedule.encode().partition(":")
    return f"{gid}@{fingerprint(g)}:{blob}"


def decode(text: str) -> Replay:
    head, sep, blob = replay_guard.check_text(text).partition(":")  # not empty, not huge
    gid, at, fp = head.partition("@")
    if not sep or not at or not fp:
        raise ReplayError("a replay string looks like REQ-15@3f2a9c01d4:eNq... (the guarantee id, '@', the "
                          "spec's fingerprint, ':', the schedule), as a failure prints it")
    try:
        schedule = Schedule.decode(f"{gid}:{blob}")
    except ValueError as exc:
        raise ReplayError(str(exc)) from None
    return Replay(schedule, fp)


def check(replay: Replay, g: Guarantee) -> None:
    """Refuse a replay string made from something else than this guarantee as it is now."""
    now = fingerprint(g)
    if replay.fingerprint != now:
        raise ReplayError(
            f"this replay string was not made from {g.id} as it is now (its fingerprint is {replay.fingerprint}, "
            f"{g.id} in {g.file} has {now}): it comes from another guarantee, or {g.id}'s threads, steps, "
            "parameters or vCPUs changed since, so its schedule would steer other code. Run the search again "
            "(without --kvm-replay) for a new string.")


def command(g: Guarantee, schedule: Schedule, *, base_args: Sequence[str], backend: str, invocation_dir: str,
            environ: Mapping[str, str], doc_version: str, spec_folders: Sequence[Path], bundled: bool,
            free: bool, point_timeout: float, memory_model: str = "sc") -> str:
    """One shell command that replays ``schedule`` of ``g`` as the failing run would have run it."""
    args = ["pytest", *(a for a in base_args if not a.startswith(("--kvm-backend", "--kvm-doc-version",
                                                                   "--kvm-schedule", "--kvm-point-timeout",
                                                                   "--kvm-memory-model")))]
    args.append(f"--kvm-backend={backend}")
    args.append(f"--kvm-doc-version={doc_version}")
    if not bundled and "--kvm-no-bundled-specs" not in args:
        args.append("--kvm-no-bundled-specs")
    given = {str(Path(invocation_dir, a.split("=", 1)[1]).resolve()) for a in base_args
             if a.startswith("--kvm-specs=")}
    args += [f"--kvm-specs={p}" for p in (str(Path(f).resolve()) for f in spec_folders) if p not in given]
    if free:
        args.append("--kvm-schedule=free")
    if memory_model != "sc":
        args.append(f"--kvm-memory-model={memory_model}")
    if point_timeout != 5.0:
        args.append(f"--kvm-point-timeout={point_timeout:g}")
    args.append(f"--kvm-replay={encode(g, schedule)}")
    env = [f"{k}={shlex.quote(environ[k])}" for k in CARRIED_ENV if environ.get(k)]
    return f"cd {shlex.quote(invocation_dir)} && " + " ".join([*env, *(shlex.quote(a) for a in args)])
