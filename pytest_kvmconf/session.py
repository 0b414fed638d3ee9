"""The per-run state the plugin keeps in the pytest config stash."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .backend import Backend
from .engine import leftover
from .registry import resolve
from .replay import Replay


@dataclass
class RunState:
    backend_name: str
    doc_version: str
    known_backends: dict[str, Callable[[], Any]]
    spec_paths: list[Path]
    replay: Replay | None = None
    free: bool = False
    point_timeout: float = 5.0
    memory_model: str = "sc"
    base_args: list[str] = field(default_factory=list)
    invocation_dir: str = "."
    environ: dict[str, str] = field(default_factory=dict)
    #: the bundled spec folder when it is part of the spec set
    bundled_folder: Path | None = None
    seen_ids: dict[str, Path] = field(default_factory=dict)
    #: the spec files pytest collects as specs (resolved paths)
    collect: set[Path] = field(default_factory=set)
    _backend: Backend | None = None

    def backend(self) -> Backend:
        if self._backend is None:
            # A thread its factory starts and leaves running is the backend's too.
            with leftover.recording("its set-up", repr(self.backend_name)):
                self._backend = resolve(self.backend_name, self.known_backends)
        return self._backend


KEY = pytest.StashKey[RunState]()


def state_of(config: pytest.Config) -> RunState:
    return config.stash[KEY]
