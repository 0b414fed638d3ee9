"""Document versions: which text of the KVM documents a statement comes from.

The documents changed over time (see "Document history" in GUARANTEES.md), so
every guarantee carries the range of kernel versions whose text states it and
``--kvm-doc-version`` picks the text to check.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The document texts the catalogue was written from, oldest first.
KNOWN_VERSIONS = ("4.13", "5.19", "6.8", "6.12", "6.18")
NEWEST = KNOWN_VERSIONS[-1]


def parse_version(text: str) -> tuple[int, int]:
    parts = str(text).strip().split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"{text!r} is not a kernel version of the form X.Y (e.g. 6.12)")
    return int(parts[0]), int(parts[1])


@dataclass(frozen=True)
class VersionRange:
    since: str
    until: str | None = None

    def contains(self, version: str) -> bool:
        v = parse_version(version)
        if v < parse_version(self.since):
            return False
        return self.until is None or v <= parse_version(self.until)

    def __str__(self) -> str:
        return f"{self.since}..{self.until}" if self.until else f"{self.since}+"
