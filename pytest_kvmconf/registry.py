"""Find a backend by name: registered hooks, entry points, or ``module:attr``."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any

from .backend import Backend
from .engine.guard import clip
from .errors import BackendError
from .hookspecs import ENTRY_POINT_GROUP
from .spec.versions import KNOWN_VERSIONS


def bundled() -> dict[str, Callable[[], Backend]]:
    def reference() -> Backend:
        from .backends.reference import ReferenceBackend

        return ReferenceBackend()

    def threaded() -> Backend:
        from .backends.threaded import ThreadedBackend

        return ThreadedBackend()

    def kvm() -> Backend:
        from .backends.kvm import KvmBackend

        return KvmBackend()

    out: dict[str, Callable[[], Backend]] = {"reference": reference}
    for name, factory, module in (("threaded", threaded, "threaded"), ("kvm", kvm, "kvm")):
        if importlib.util.find_spec(f"pytest_kvmconf.backends.{module}") is not None:
            out[name] = factory
    return out


def entry_point_backends() -> dict[str, Callable[[], Backend]]:
    """Entry points naming a factory (``module:attr``); plugin modules go through hooks."""
    out: dict[str, Callable[[], Backend]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ":" in ep.value:
            out[ep.name] = lambda ep=ep: ep.load()()
    return out


def resolve(name: str, known: Mapping[str, Callable[[], Any]]) -> Backend:
    """Instantiate backend ``name`` (a registered name, or ``module:attr``)."""
    if name in known:
        factory = known[name]
    elif ":" in name:
        module, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except ImportError as exc:
            raise BackendError(f"--kvm-backend={name}: cannot import {module!r}: {exc}") from None
        except AttributeError:
            raise BackendError(f"--kvm-backend={name}: module {module!r} has no {attr!r}") from None
    else:
        raise BackendError(
            f"unknown backend {name!r}; known backends: {', '.join(sorted(known))} "
            "(or give module:factory)")
    try:
        backend = factory()
    except Exception as exc:
        raise BackendError(f"backend {name!r}: its factory raised {type(exc).__name__}: {exc}") from None
    try:  # a declaration is foreign code too: a property may raise
        missing = [a for a in ("name", "capabilities", "archs", "doc_versions", "new_machine")
                   if not hasattr(backend, a)]
        wrong = [] if missing else _wrong_types(backend)
    except Exception as exc:
        raise BackendError(f"backend {name!r}: reading its declarations raised {type(exc).__name__}: "
                           f"{exc}") from None
    if missing:
        raise BackendError(
            f"backend {name!r}: its factory returned {type(backend).__name__}, which lacks "
            f"{', '.join(missing)} (see pytest_kvmconf.backend.Backend)")
    if wrong:
        raise BackendError(f"backend {name!r}: {'; '.join(wrong)} (see pytest_kvmconf.backend.Backend)")
    return backend


def _wrong_types(backend: Any) -> list[str]:
    """What a backend declares with the wrong type: caught here, once, rather than as a confusing
    failure of every guarantee later."""
    out = []
    if not isinstance(backend.name, str):
        out.append(f"name is {type(backend.name).__name__}, not a string")
    for attr in ("capabilities", "archs"):
        value = getattr(backend, attr)
        if isinstance(value, (str, bytes)) or not isinstance(value, (set, frozenset, tuple, list)) \
                or not all(isinstance(x, str) for x in value):
            out.append(f"{attr} is {type(value).__name__} {clip(value)}, not a frozenset of strings")
    versions = backend.doc_versions
    if not callable(getattr(versions, "contains", None)):
        out.append(f"doc_versions is {type(versions).__name__} {clip(versions)}, not a VersionRange")
    else:
        try:
            versions.contains(KNOWN_VERSIONS[-1])
        except Exception as exc:
            out.append(f"doc_versions.contains() raised {type(exc).__name__}: {exc} (not a VersionRange?)")
    if not callable(backend.new_machine):
        out.append("new_machine is not callable")
    return out

