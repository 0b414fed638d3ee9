"""Every spec cites its document: the quote is the document's own words.

The documents of the current text are in ../shared/docs/kvm. A quote may join
several passages with "..."; each passage must appear in the document, compared
word by word (reStructuredText markup, punctuation and line breaks aside).
Statements of older texts (REQ-26, LOCK-02.a, LOCK-08.a, MP-05.c) quote a text
that is not in that folder; their wording is checked against the catalogue's
document history by review, and this test says so by skipping them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pytest_kvmconf.spec.versions import NEWEST

from .bite import guarantees

DOCS = Path(__file__).resolve().parent.parent.parent / "shared" / "docs" / "kvm"


def words(text: str) -> str:
    found = (w.strip("_") for w in re.findall(r"[A-Za-z0-9_@>()-]+", text.replace("``", "")))
    return " ".join(w for w in found if w)


@pytest.mark.parametrize("gid", sorted(guarantees()))
def test_quote_is_in_the_document(gid: str) -> None:
    g = guarantees()[gid]
    doc = DOCS / g.document
    if not DOCS.is_dir():
        pytest.skip(f"the documents are not beside the repository ({DOCS})")
    if not g.versions.contains(NEWEST):
        pytest.skip(f"{gid} quotes the {g.versions} text, which is not in {DOCS}")
    assert doc.is_file(), f"{gid} names document {g.document}, not in {DOCS}"
    text = words(doc.read_text(encoding="utf-8"))
    for passage in re.split(r"\.\.\.|…", g.quote):
        if words(passage):
            assert words(passage) in text, f"{gid}: not in {g.document}: {passage.strip()!r}"
