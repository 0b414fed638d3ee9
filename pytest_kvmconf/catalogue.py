"""The catalogue of guarantees, generated from the specs: ``docs/catalogue.md``.

One row per guarantee: its id and what it guarantees, the sentence it checks
(document, section), the releases whose text states it with the kernel commits
of each boundary, the bundled backends that check it, and whether it is shown
on a live kernel or on a model. Regenerate after changing a spec::

    python -m pytest_kvmconf.catalogue docs/catalogue.md

``tests/test_catalogue.py`` fails when the committed file is not what this
prints. The backend columns are static (capabilities and architecture), so
the file does not depend on the machine: whether /dev/kvm is usable here is
the run's business (``--kvm-list``), not the catalogue's.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from .spec.loader import load_files, spec_files
from .spec.model import Guarantee
from .spec.versions import DOCUMENT_TEXTS, NEWEST

#: The live backend runs x86 real-mode guests whatever the host, so its architecture is fixed here.
KVM_ARCHS = frozenset({"x86_64"})


def _checkers(g: Guarantee) -> list[str]:
    """The bundled backends whose capabilities and architectures cover ``g``."""
    from .backends.kvm import KvmBackend
    from .backends.reference import ReferenceBackend
    from .backends.threaded import ThreadedBackend

    out = []
    for name, caps, archs in (("reference", ReferenceBackend.capabilities, ReferenceBackend.archs),
                              ("threaded", ThreadedBackend.capabilities, ThreadedBackend.archs),
                              ("kvm", KvmBackend.capabilities, KVM_ARCHS)):
        if g.needs <= set(caps) and (g.arch is None or g.arch in archs):
            out.append(name)
    return out


def _versions(g: Guarantee) -> str:
    v = g.versions
    text = f"{v.since}" + (f" ({v.since_commit})" if v.since_commit else "")
    if v.until:
        text += f" .. {v.until} (ended by {v.until_commit})" if v.until_commit else f" .. {v.until}"
    else:
        text += " onwards"
    return text


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def render(guarantees: Iterable[Guarantee]) -> str:
    by_doc: dict[str, list[Guarantee]] = {}
    for g in guarantees:
        by_doc.setdefault(g.document, []).append(g)
    out = [
        "# Catalogue of guarantees",
        "",
        "Generated from `specs/*.toml` by `python -m pytest_kvmconf.catalogue docs/catalogue.md`;",
        "do not edit by hand. Each guarantee quotes its document (the texts are in",
        "`docs/kvm-texts/`); *versions* are the releases whose text states it, with the kernel commit",
        "that made (or ended) the statement; *checked by* lists the bundled backends whose capabilities",
        "and architecture cover it (the `kvm` backend runs x86 guests, and only where /dev/kvm is",
        "usable); *shown on* is `live kernel` when the `kvm` backend can check it, `model` otherwise.",
        f"The quote is the newest text's words ({NEWEST}); older wordings are in the spec's `quote_until`.",
        "",
    ]
    for doc in sorted(by_doc):
        texts = ", ".join(f"{t.since}" + (f" ({t.commit})" if t.commit else "") for t in DOCUMENT_TEXTS.get(doc, ()))
        out += [f"## {doc}", "", f"Texts in the tree: {texts}.", "",
                "| id | guarantee | sentence (section) | versions | checked by | shown on |",
                "|---|---|---|---|---|---|"]
        for g in sorted(by_doc[doc], key=lambda g: _sort_key(g.id)):
            checkers = _checkers(g)
            shown = "live kernel" if "kvm" in checkers else "model"
            arch = f" ({g.arch} only)" if g.arch else ""
            out.append(f"| {g.id} | {_cell(g.title)}{arch} | “{_cell(g.quote)}” ({_cell(g.section)}) | "
                       f"{_versions(g)} | {', '.join(checkers) or 'none of the bundled'} | {shown} |")
        out.append("")
    return "\n".join(out)


def _sort_key(gid: str) -> tuple[str, int, str]:
    area, _, rest = gid.partition("-")
    number, _, sub = rest.partition(".")
    return area, int(number), sub


def bundled_guarantees() -> list[Guarantee]:
    here = Path(__file__).resolve().parent
    folder = next(p for p in (here / "_specs", here.parent / "specs") if p.is_dir())
    return load_files(spec_files([folder]))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    text = render(bundled_guarantees())
    if not args:
        sys.stdout.write(text)
        return 0
    Path(args[0]).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
