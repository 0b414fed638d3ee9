"""Every REQ spec bites: the reference passes, and each broken variant is caught."""

from __future__ import annotations

import pytest

from pytest_kvmconf.backends.reference import ReferenceBackend

from .bite import BUDGET, applicable, guarantees, model_ids, verdict
from .broken.requests import VARIANTS, backend

REQ_IDS = model_ids("REQ-")


def doc_version_for(gid: str) -> str:
    return "4.13" if gid.startswith("REQ-26") else "6.18"


@pytest.mark.parametrize("gid", REQ_IDS)
def test_reference_passes(gid: str) -> None:
    found = verdict(gid, ReferenceBackend(), doc_version_for(gid))
    assert found is None, str(found)


@pytest.mark.parametrize(
    "name,gid",
    [(name, gid) for name, (_, gids, _) in VARIANTS.items() for gid in gids],
)
def test_broken_variant_is_caught(name: str, gid: str) -> None:
    b = backend(name)
    g = guarantees()[gid]
    assert applicable(g, b, doc_version_for(gid))
    found = verdict(gid, b, doc_version_for(gid))
    assert found is not None, f"{name} ({VARIANTS[name][2]}) was not caught by {gid} within {BUDGET} examples"


def test_every_req_guarantee_has_a_broken_variant() -> None:
    covered = {gid for _, gids, _ in VARIANTS.values() for gid in gids}
    assert set(REQ_IDS) <= covered, f"no broken backend for {sorted(set(REQ_IDS) - covered)}"
