"""Scheduling points: how a backend lets the engine choose interleavings.

A *scheduling point* is a place in a backend operation where another thread
may run before this one continues. Everything a thread does between two
points is atomic as far as the engine is concerned, so a backend puts a point
after every action the documents order against another thread (setting
``vcpu->mode``, the last ``kvm_request_pending()`` check, reading the mode in a
kick...). The engine picks, at every point, which runnable thread moves next:
that choice is what hypothesis generates, shrinks and replays.

Two styles, one meaning:

* Generator backends (the ``reference`` model) write operations as
  generators and ``yield Point("label")`` after an action, or
  ``yield Wait("label", predicate)`` to block until ``predicate()`` is true.
* Thread backends (``threaded``, ``kvm`` and your own) run every spec thread
  on a real OS thread and call :func:`point` / :func:`wait_until` from it; the
  engine lets exactly one such thread run between two points.

A wait marked ``idle=True`` is one a thread may legitimately stay in forever
(a guest running with no exit coming, a vCPU sleeping in kvm_vcpu_block): a
schedule whose threads are all done or idle has ended. A thread stuck in a
non-idle wait when nothing can run is a deadlock, reported as one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Point:
    """The thread just did ``label``; others may run before it continues."""

    label: str


@dataclass(frozen=True)
class Wait:
    """The thread did ``label`` and now waits until ``until()`` is true."""

    label: str
    until: Callable[[], bool]
    idle: bool = False


class Controller:
    """What :func:`point` talks to; implemented by the engine's thread executor."""

    def point(self, label: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def wait_until(self, label: str, until: Callable[[], bool], idle: bool) -> None:  # pragma: no cover
        raise NotImplementedError


_current = threading.local()


def bind_controller(controller: Controller | None) -> None:
    """Called by the engine on each spec thread it starts (and with None at its end)."""
    _current.controller = controller


def point(label: str) -> None:
    """From a backend's OS thread: a scheduling point after the action ``label``.

    Outside an engine-controlled thread (free mode, plain use) this does nothing,
    so a backend can leave its points in place in production-like runs.
    """
    c = getattr(_current, "controller", None)
    if c is not None:
        c.point(label)


def wait_until(label: str, until: Callable[[], bool], idle: bool = False) -> bool:
    """From a backend's OS thread: block until ``until()`` holds.

    Under the engine the thread parks and is only resumed once ``until()`` is
    true; the return value is True then. Outside the engine it returns False at
    once and the backend must do its own real wait (its condition variable).
    """
    c = getattr(_current, "controller", None)
    if c is None:
        return False
    c.wait_until(label, until, idle)
    return True
