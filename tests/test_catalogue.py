"""docs/catalogue.md is the catalogue the specs make, and it stays current."""

from __future__ import annotations

from pathlib import Path

from pytest_kvmconf.catalogue import bundled_guarantees, main, render

CATALOGUE = Path(__file__).resolve().parent.parent / "docs" / "catalogue.md"
REGENERATE = "python -m pytest_kvmconf.catalogue docs/catalogue.md"


def test_the_committed_catalogue_is_what_the_specs_make() -> None:
    assert CATALOGUE.is_file(), f"docs/catalogue.md is missing; run: {REGENERATE}"
    assert CATALOGUE.read_text(encoding="utf-8") == render(bundled_guarantees()), (
        f"docs/catalogue.md is out of date with specs/; regenerate it with: {REGENERATE}")


def test_every_guarantee_has_one_row_with_its_versions_and_checkers() -> None:
    text = CATALOGUE.read_text(encoding="utf-8")
    for g in bundled_guarantees():
        rows = [r for r in text.splitlines() if r.startswith(f"| {g.id} |")]
        assert len(rows) == 1, g.id
        assert g.versions.since in rows[0]
    row = next(r for r in text.splitlines() if r.startswith("| REQ-26 |"))
    assert "4.13 .. 6.0 (ended by c59fb1275838)" in row and "| model |" in row
    row = next(r for r in text.splitlines() if r.startswith("| MP-01 |"))
    assert "reference, threaded, kvm" in row and "| live kernel |" in row


def test_main_writes_the_file(tmp_path: Path) -> None:
    out = tmp_path / "catalogue.md"
    assert main([str(out)]) == 0
    assert out.read_text(encoding="utf-8") == render(bundled_guarantees())
