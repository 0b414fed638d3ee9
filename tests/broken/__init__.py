"""Deliberately broken backends: each breaks one documented rule, and some spec must catch it."""

from __future__ import annotations

from typing import Any

from pytest_kvmconf.backends.reference import ReferenceBackend
from pytest_kvmconf.backends.threaded import ThreadedBackend, ThreadedMachine


def running(machine: type, name: str, base: Any = None) -> Any:
    """A backend named ``name`` whose machines are ``machine``: the threaded backend for a
    threaded machine, the reference one otherwise (or ``base`` when given)."""
    if base is None:
        base = ThreadedBackend() if issubclass(machine, ThreadedMachine) else ReferenceBackend()
    base.name = name
    base.machine_class = machine
    return base
