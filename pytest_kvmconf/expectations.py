"""Expectation files: the guarantees a backend is known to violate, as data.

A backend that cannot (yet) keep some promise ships a TOML file listing it::

    [[violation]]
    id = "REQ-15"
    reason = "kicks are not implemented: a request made after the last check waits for the next exit"

and names it with the backend attribute ``expected_failures_file`` (a path,
relative to the backend's module) or the user gives it with ``--kvm-expect``.
Those guarantees still run. A violation found is reported as an expected
failure (pytest xfail with the reason); none found is a failure, "known
violation no longer reproduced", so the file cannot silently go stale.
Only a reported violation (ViolationFound, NothingReached; a backend raising
inside an operation is one, of kind "error") counts as the expected one: any
other exception, e.g. from creating the machine, stays a failure (the
``raises`` of the xfail mark).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .errors import ExpectationError, NothingReached, ViolationFound
from .spec.loader import ID_RE

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

TABLE = "violation"
KEYS = {"id": "the guarantee id, e.g. REQ-15", "reason": "why the backend violates it (shown with the xfail)"}
MAX_FILE_BYTES = 1 << 20
NO_LONGER = "known violation no longer reproduced"
#: Expectation files shipped with the plugin (e.g. known/linux.toml: where Linux differs from the
#: documents); ``--kvm-expect=linux`` names one without a path.
SHIPPED = Path(__file__).resolve().parent / "known"


def resolve(name: Path | str) -> Path:
    """A path as given, or a shipped file's when ``name`` is a bare name such as ``linux``."""
    path = Path(name)
    shipped = SHIPPED / f"{path.name}.toml"
    # (no test of the suffix: a shipped name may hold a dot, e.g. linux-pre-6.4)
    if len(path.parts) == 1 and not path.exists() and shipped.is_file():
        return shipped
    return path


def shipped_names() -> list[str]:
    return sorted(p.stem for p in SHIPPED.glob("*.toml"))


@dataclass(frozen=True)
class Expectation:
    id: str
    reason: str
    file: Path


def load(path: Path | str) -> dict[str, Expectation]:
    """Read one expectation file: guarantee id -> Expectation."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise ExpectationError(path, None, "not a regular file")
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ExpectationError(path, None, f"an expectation file may be at most {MAX_FILE_BYTES} bytes")
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ExpectationError(path, None, f"not valid UTF-8: byte {exc.object[exc.start]:#04x} at offset "
                                           f"{exc.start}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ExpectationError(path, None, f"not valid TOML: {exc}") from None
    except (RecursionError, MemoryError):
        raise ExpectationError(path, None, "not usable TOML: its arrays or tables nest too deeply") from None
    except OSError as exc:
        raise ExpectationError(path, None, f"cannot read: {exc.strerror or exc}") from None
    for key in data:
        if key != TABLE:
            raise ExpectationError(path, key, f"unknown key {key!r}; an expectation file holds only "
                                              f"[[{TABLE}]] tables (keys: {', '.join(KEYS)})")
    raw = data.get(TABLE, [])
    if not isinstance(raw, list):
        raise ExpectationError(path, TABLE, f"write each entry as a [[{TABLE}]] table")
    out: dict[str, Expectation] = {}
    for i, entry in enumerate(raw):
        where = f"{TABLE}[{i}]"
        if not isinstance(entry, dict):
            raise ExpectationError(path, where, f"each entry is a [[{TABLE}]] table with id and reason "
                                                f"(got a {type(entry).__name__})")
        for key in entry:
            if key not in KEYS:
                raise ExpectationError(path, f"{where}.{key}",
                                       f"unknown key {key!r}; allowed: {', '.join(KEYS)}")
        gid = entry.get("id")
        if not isinstance(gid, str) or not ID_RE.fullmatch(gid):
            raise ExpectationError(path, f"{where}.id",
                                   f"required, a guarantee id such as REQ-15 or REQ-15.a (got {gid!r})")
        reason = entry.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            raise ExpectationError(path, f"{where}.reason",
                                   f"required, a non-empty string saying why the backend violates {gid}")
        if gid in out:
            raise ExpectationError(path, f"{where}.id", f"{gid} is listed twice")
        out[gid] = Expectation(gid, " ".join(reason.split()), path)
    return out


def backend_file(backend: Any) -> Path | None:
    """The backend's own ``expected_failures_file``, resolved against its module's folder."""
    value = getattr(backend, "expected_failures_file", None)
    if not value:
        return None
    path = Path(value)
    if not path.is_absolute():
        module = sys.modules.get(type(backend).__module__)
        base = Path(module.__file__).resolve().parent if module and getattr(module, "__file__", None) \
            else Path.cwd()
        path = base / path
    return path


def collect(backend: Any, given: Iterable[Path | str]) -> dict[str, Expectation]:
    """The backend's file first, then the --kvm-expect files (which win for the same id)."""
    out: dict[str, Expectation] = {}
    own = backend_file(backend)
    for path in ([own] if own is not None else []) + [resolve(p) for p in given]:
        out.update(load(path))
    return out


def add_options(group: pytest.OptionGroup) -> None:
    group.addoption("--kvm-expect", dest="kvm_expect", action="append", default=[], metavar="PATH",
                    help=f"TOML file of [[{TABLE}]] entries (id, reason): guarantees the backend is known "
                         "to violate; they run as strict expected failures. Repeatable; adds to the "
                         "backend's own expected_failures_file. A bare name is a file shipped with the "
                         f"plugin: {', '.join(shipped_names())} (Linux's known differences from the documents)")


def configure(config: pytest.Config, backend: Any | None) -> None:
    """Load the files (a malformed one is a usage error) and register the marking plugin."""
    try:
        expected = collect(backend, config.getoption("kvm_expect", []) or []) if backend is not None \
            else {k: v for p in config.getoption("kvm_expect", []) or [] for k, v in load(resolve(p)).items()}
    except ExpectationError as exc:
        raise pytest.UsageError(f"expectation file {exc}") from None
    config.pluginmanager.register(ExpectationsPlugin(expected), "kvmconf-expectations")


class ExpectationsPlugin:
    """Marks the listed guarantees xfail(strict) and words an unexpected pass clearly."""

    def __init__(self, expected: Mapping[str, Expectation]):
        self.expected = dict(expected)
        self.deselected: set[str] = set()

    def mark(self, item: pytest.Item) -> None:
        g = getattr(item, "guarantee", None)
        exp = self.expected.get(g.id) if g is not None else None
        if exp is not None:
            item.add_marker(pytest.mark.xfail(
                reason=f"known violation ({exp.file.name}): {exp.reason}", strict=True,
                raises=(ViolationFound, NothingReached)))

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.deselected.update(i.guarantee.id for i in items if getattr(i, "guarantee", None) is not None)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        ids = set(self.deselected)
        for item in items:
            self.mark(item)
            if getattr(item, "guarantee", None) is not None:
                ids.add(item.guarantee.id)
        # A typo in an id would silently expect nothing; say so (a warning: a file
        # shipped with a backend may list guarantees of spec folders not loaded now).
        for gid in sorted(self.expected.keys() - ids):
            warnings.warn(pytest.PytestWarning(
                f"{self.expected[gid].file}: expected violation {gid} names no collected guarantee"),
                stacklevel=1)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]
                                  ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        rep = yield
        g = getattr(item, "guarantee", None)
        exp = self.expected.get(g.id) if g is not None else None
        if exp is not None and rep.when == "call" and rep.failed and str(rep.longrepr).startswith("[XPASS"):
            stats = getattr(item, "stats", None)
            runs = f"none of {stats.examples} schedules explored" if stats is not None else "no schedule"
            rep.longrepr = (
                f"{NO_LONGER}: {g.id} is listed in {exp.file} as a known violation of this backend "
                f"({exp.reason}), but {runs} violated it.\nIf the backend was fixed, remove {g.id} "
                f"from {exp.file}.")
        return rep

    def lookup(self, gid: str) -> Expectation | None:
        return self.expected.get(gid)


def plugin_of(config: pytest.Config) -> ExpectationsPlugin | None:
    return config.pluginmanager.get_plugin("kvmconf-expectations")  # type: ignore[return-value]
