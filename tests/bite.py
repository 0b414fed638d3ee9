"""Run one guarantee against one backend the way the plugin does, with a fixed seed.

``verdict(gid, backend)`` returns the exception the run raised (a
ViolationFound or NothingReached) or None when the guarantee held; tests use
it to prove that each broken backend is caught within the default budget and
that the correct backends pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from hypothesis import Phase, settings

from pytest_kvmconf.backend import Backend, skip_reason
from pytest_kvmconf.engine.explore import CouldNotDecide, NothingReached, Stats, ViolationFound, explore
from pytest_kvmconf.engine.runner import RunOptions
from pytest_kvmconf.engine.search import DEFAULT_SEARCH
from pytest_kvmconf.spec.loader import load_files, spec_files
from pytest_kvmconf.spec.model import Guarantee
from pytest_kvmconf.spec.versions import NEWEST

SPECS = Path(__file__).resolve().parent.parent / "specs"
#: hypothesis' default budget; a broken backend must be caught within it.
BUDGET = 100


@cache
def guarantees() -> dict[str, Guarantee]:
    return {g.id: g for g in load_files(spec_files([SPECS]))}


#: Facets only a backend running real guests has: the models skip their specs by capability.
LIVE_ONLY = frozenset({"memslots", "irq"})


def model_ids(prefix: str) -> list[str]:
    """The ids starting with ``prefix`` that the models run (the live-only projections aside)."""
    return sorted(gid for gid, g in guarantees().items() if gid.startswith(prefix) and not g.needs & LIVE_ONLY)


def newest_text(gid: str) -> str:
    """The newest document text that claims the guarantee (e.g. ATTR-03 ends with 5.9, SPTE-03 with 6.12)."""
    g = guarantees()[gid]
    return NEWEST if g.versions.contains(NEWEST) else str(g.versions.until)


def applicable(g: Guarantee, backend: Backend, doc_version: str = NEWEST) -> bool:
    return g.versions.contains(doc_version) and skip_reason(backend, g.needs, g.arch, doc_version) is None


def verdict(gid: str, backend: Backend, doc_version: str = NEWEST, seed: int = 0,
            max_examples: int = BUDGET, shrink: bool = False, search: str = DEFAULT_SEARCH,
            **run_options) -> ViolationFound | NothingReached | CouldNotDecide | None:
    g = guarantees()[gid]
    # Being caught is the usual question, not the minimal example: shrinking only when a test
    # looks at the shrunk schedule.
    phases = [Phase.explicit, Phase.generate, *([Phase.shrink] if shrink else [])]
    base = settings(max_examples=max_examples, database=None, deadline=None, phases=phases)
    try:
        explore(g, backend, RunOptions(doc_version, **run_options), base, seed=seed, search=search)
    except (ViolationFound, NothingReached, CouldNotDecide) as exc:
        return exc
    return None


def stats(gid: str, backend: Backend, doc_version: str = NEWEST, seed: int = 0,
          max_examples: int = BUDGET) -> Stats:
    g = guarantees()[gid]
    return explore(g, backend, RunOptions(doc_version),
                   settings(max_examples=max_examples, database=None, deadline=None), seed=seed)


@dataclass(frozen=True)
class BrokenCase:
    """One broken variant of tests/broken and one guarantee that must catch it (controlled)."""

    family: str
    variant: str
    gid: str
    doc_version: str
    backend: Callable[[], Backend]
    #: the memory model the hunt runs under (a missing barrier shows only where it is weak).
    memory_model: str = "sc"


def broken_cases() -> list[BrokenCase]:
    """Every (broken variant, guarantee, document text) the bite tests check under the
    engine's control, reference and threaded, for benchmarks/bench_search.py."""
    from .broken import attr, barriers, locking, mp, requests, spte, threaded, threaded_mp

    def req_text(gid: str) -> str:
        return "4.13" if gid.startswith("REQ-26") else NEWEST

    out = []
    for name, (_, gids, _) in requests.VARIANTS.items():
        out += [BrokenCase("requests", name, gid, req_text(gid), lambda n=name: requests.backend(n))
                for gid in gids]
    for name, (_, gids, version, _) in locking.VARIANTS.items():
        for gid in gids:
            g = guarantees()[gid]
            text = version if g.versions.contains(version) else \
                next(v for v in ("6.1", "6.2", "6.3", "6.8", "6.12", "6.18") if g.versions.contains(v))
            out.append(BrokenCase("locking", name, gid, text, lambda n=name: locking.backend(n)))
    for family, module in (("attr", attr), ("spte", spte)):
        out += [BrokenCase(family, m.__name__, gid, newest_text(gid), lambda m=m, b=module.backend: b(m))
                for m, gid in module.BROKEN.items()]
    out += [BrokenCase("mp", m.__name__, gid, text, lambda m=m: mp.backend(m))
            for m, (gid, text) in mp.BROKEN.items()]
    for name, (_, gids, _) in threaded.VARIANTS.items():
        out += [BrokenCase("threaded", name, gid, req_text(gid), lambda n=name: threaded.backend(n))
                for gid in gids]
    for name, (_, by, _) in threaded_mp.VARIANTS.items():
        out += [BrokenCase("threaded_mp", name, gid, text, lambda n=name: threaded_mp.backend(n))
                for gid, text in by]
    # Each missing barrier under every model that lets its reordering happen.
    for name, (_, gids, models, _) in barriers.VARIANTS.items():
        out += [BrokenCase("barriers", f"{name}@{model}", gid, req_text(gid),
                           lambda n=name: barriers.backend(n), model)
                for gid in gids for model in models]
    return out
