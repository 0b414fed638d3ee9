"""Every spec cites its document: the quote is the document's own words, in every text it claims.

The texts are in docs/kvm-texts/<document>/<release>.rst, one per release at
which the document's statements changed (pytest_kvmconf.spec.versions lists
them with the kernel commit of each change). A spec's range claims every
release from ``since`` to ``until``; its quote (or the older wording given in
``quote_until``) must be in the text of each of them. A quote may join several
passages with "..."; each passage must appear in the text, compared word by
word (reStructuredText markup, punctuation and line breaks aside).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pytest_kvmconf.spec.versions import COMMIT_RE, DOCUMENT_TEXTS, KNOWN_VERSIONS, parse_version

from .bite import guarantees

TEXTS = Path(__file__).resolve().parent.parent / "docs" / "kvm-texts"


def words(text: str) -> str:
    found = (w.strip("_") for w in re.findall(r"[A-Za-z0-9_@>()-]+", text.replace("``", "")))
    return " ".join(w for w in found if w)


def text_file(document: str, since: str) -> Path:
    return TEXTS / Path(document).stem / f"{since}.rst"


def missing_passages(quote: str, text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\.\.\.|…", quote) if words(p) and words(p) not in text]


@pytest.mark.parametrize("gid", sorted(guarantees()))
def test_quote_is_in_every_text_it_claims(gid: str) -> None:
    g = guarantees()[gid]
    assert g.document in DOCUMENT_TEXTS, f"{gid} names document {g.document}, which has no texts in {TEXTS}"
    oldest = DOCUMENT_TEXTS[g.document][0].since
    assert parse_version(g.versions.since) >= parse_version(oldest), (
        f"{gid} claims releases from {g.versions.since}, but the oldest text of {g.document} in the tree "
        f"is {oldest}: add the older text or narrow the range")
    texts = g.versions.texts(g.document)
    assert texts, f"{gid}: no text of {g.document} in the tree covers {g.versions}"
    for t in texts:
        release = max(t.since, g.versions.since, key=parse_version)
        quote = g.quote_for(release)
        body = words(text_file(g.document, t.since).read_text(encoding="utf-8"))
        missing = missing_passages(quote, body)
        assert not missing, f"{gid}: not in the {t.since} text of {g.document}: {missing[0]!r}"


@pytest.mark.parametrize("gid", sorted(guarantees()))
def test_every_boundary_cites_its_commit(gid: str) -> None:
    """A range that starts after the document's oldest text, or ends, says which commit did it."""
    g = guarantees()[gid]
    oldest = DOCUMENT_TEXTS[g.document][0].since
    if g.versions.since != oldest:
        assert g.versions.since_commit, f"{gid}: versions.since {g.versions.since} needs since_commit"
    if g.versions.until is not None:
        assert g.versions.until_commit, f"{gid}: versions.until {g.versions.until} needs until_commit"


def test_every_registered_text_is_in_the_tree_and_every_file_is_registered() -> None:
    registered = {text_file(doc, t.since) for doc, texts in DOCUMENT_TEXTS.items() for t in texts}
    on_disk = set(TEXTS.glob("*/*.rst"))
    assert registered - on_disk == set(), f"registered but missing: {sorted(registered - on_disk)}"
    assert on_disk - registered == set(), f"in the tree but not registered: {sorted(on_disk - registered)}"
    for texts in DOCUMENT_TEXTS.values():
        assert [t.since for t in texts] == sorted((t.since for t in texts), key=parse_version)
        for t in texts:
            assert t.commit is None or COMMIT_RE.match(t.commit), t
            assert t.since in KNOWN_VERSIONS


def test_the_quote_check_fails_for_words_a_text_lacks() -> None:
    """The check itself can fail: REQ-26's KVM_REQ_UNHALT sentence is not in the 6.1 text."""
    g = guarantees()["REQ-26"]
    body = words(text_file(g.document, "6.1").read_text(encoding="utf-8"))
    assert missing_passages(g.quote, body)


def test_doc_version_accepts_every_text_and_names_the_texts_for_an_unknown_one() -> None:
    from pytest_kvmconf.spec.versions import check_doc_version

    for v in KNOWN_VERSIONS:
        assert check_doc_version(v) == v
    with pytest.raises(ValueError, match="older than every KVM document text.*4.13"):
        check_doc_version("3.10")
    with pytest.raises(ValueError, match="not a kernel version"):
        check_doc_version("six")
