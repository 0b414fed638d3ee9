"""Document versions: which text of the KVM documents a statement comes from.

The documents changed over time, so every guarantee carries the range of
kernel releases whose text states it, and ``--kvm-doc-version`` picks the text
to check. :data:`DOCUMENT_TEXTS` lists, per document, every text the project
ships under ``docs/kvm-texts/`` (the first release that had it and the kernel
commit that made it); a text holds from its release until the next one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

COMMIT_RE = re.compile(r"^[0-9a-f]{12,40}$")


@dataclass(frozen=True)
class DocumentText:
    """One text of a document: it is in every release from ``since`` until the next text."""

    since: str
    #: the kernel commit that made this text (12+ hex digits); None where no id was found
    commit: str | None
    #: what changed against the previous text, in the passages the specs quote
    change: str


#: document (the spec's ``[document] file``) -> its texts in the tree, oldest first.
#: Each text is docs/kvm-texts/<document stem>/<since>.rst; docs/kvm-texts/README.md
#: says where its words come from.
DOCUMENT_TEXTS: dict[str, tuple[DocumentText, ...]] = {
    "vcpu-requests.rst": (
        DocumentText("4.13", "3bb96149f235", "KVM: Add documentation for VCPU requests "
                     "(Documentation/virtual/kvm/vcpu-requests.rst is written)"),
        DocumentText("5.13", "084071d5e922", "KVM: rename KVM_REQ_PENDING_TIMER to KVM_REQ_UNBLOCK"),
        # 5.14 (e437c1a3e713) only fixed the [atomic-ops] reference; 5.19 only added an SPDX tag.
        DocumentText("5.18", "e65a3b46b5b1", "KVM: Drop KVM_REQ_MMU_RELOAD and update vcpu-requests.rst "
                     "documentation (KVM_REQ_VM_DEAD documented); with df06dae3f2a8 (KVM: Don't actually "
                     "set a request when evicting vCPUs for GFN cache invd), which documents "
                     "KVM_REQ_OUTSIDE_GUEST_MODE, in the same release"),
        DocumentText("6.1", "c59fb1275838", "KVM: remove KVM_REQ_UNHALT (merged for 6.1 by ef688f8b8cd3): "
                     "KVM_REQ_UNHALT and the section 'Clearing Requests' are removed"),
        DocumentText("6.5", "95b4d47a4450", "Documentation: KVM: make corrections to vcpu-requests.rst "
                     "(Randy Dunlap): 'awaken' becomes 'awakened'"),
    ),
    "devices-vcpu.rst": (
        DocumentText("4.13", "99a1db7a2c9b", "KVM: arm/arm64: Allow setting the timer IRQ numbers from "
                     "userspace (KVM_ARM_VCPU_TIMER_CTRL documented)"),
        DocumentText("5.10", "51dd2eb98c72", "KVM: arm64: Match PMU error code descriptions with error "
                     "conditions: -ENXIO now also means 'PMUv3 not supported', -ENODEV 'feature missing "
                     "from VCPU'; with af130d0adc8e (-EFAULT, -EEXIST added) in the same release"),
    ),
    "locking.rst": (
        DocumentText("6.1", None, "the oldest locking.rst text in the tree (Debian's 6.1.192): kvm_count_lock "
                     "guards hardware enabling; the SRCU rule is one item of the acquisition orders"),
        DocumentText("6.2", "3a9ae31ac26a", "Documentation: kvm: fix SRCU locking order docs: 'For SRCU', "
                     "synchronize_srcu() is called inside kvm->lock, vcpu->mutex and kvm->slots_lock; with "
                     "310bc39546a4 (KVM: x86/xen: Avoid deadlock by adding kvm->arch.xen.xen_lock leaf node lock), "
                     "both in the KVM fixes pulled after 6.2-rc3"),
        DocumentText("6.3", "0bf50497f03b", "KVM: Drop kvm_count_lock and instead protect kvm_usage_count with "
                     "kvm_lock: 'cpus_read_lock() is taken outside kvm_lock', kvm_lock protects kvm_usage_count; "
                     "vendor_module_lock documented"),
        DocumentText("6.8", "250ce1b4d21a", "KVM: x86/mmu: always take tdp_mmu_pages_lock: critical "
                     "sections of tdp_mmu_pages_lock and mmu_unsync_pages_lock must also take mmu_lock"),
        DocumentText("6.12", "44d174596260", "KVM: Use dedicated mutex to protect kvm_usage_count to avoid "
                     "deadlock: kvm_usage_lock, taken outside cpus_read_lock(), protects kvm_usage_count; "
                     "with 'KVM: Register cpuhp and syscore callbacks when enabling hardware'"),
        DocumentText("6.13", "5f6a3badbb74", "KVM: x86/mmu: Mark page/folio accessed only when zapping leaf SPTEs: "
                     "the 'Dirty bit tracking' example races in mmu_spte_update(), the lost Dirty bit is a missed "
                     "TLB flush"),
        DocumentText("6.15", "61d65f2dc766", "KVM: x86/mmu: Don't force atomic update if only the Accessed bit is "
                     "volatile: spte_has_volatile_bits() becomes spte_needs_atomic_update()"),
    ),
    "api-mp-state-system-event.rst": (
        DocumentText("4.13", None, "the KVM_RUN, KVM_SET_SIGNAL_MASK, KVM_{GET,SET}_MP_STATE, immediate_exit "
                     "and KVM_EXIT_SYSTEM_EVENT passages as in 4.13 (api.txt)"),
        DocumentText("5.19", "7b33a09d036f", "KVM: arm64: Add support for userspace to suspend a vCPU "
                     "(KVM_MP_STATE_SUSPENDED, KVM_SYSTEM_EVENT_WAKEUP/SUSPEND, "
                     "KVM_CAP_ARM_SYSTEM_SUSPEND)"),
    ),
}

#: The releases at which some document text begins, oldest first.
KNOWN_VERSIONS: tuple[str, ...] = ()  # filled below
#: The text the catalogue was written from; the default of --kvm-doc-version.
NEWEST = "6.18"
EARLIEST = "4.13"


def parse_version(text: str) -> tuple[int, int]:
    parts = str(text).strip().split(".")
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() and len(p) <= 3 for p in parts):
        raise ValueError(f"{text!r} is not a kernel version of the form X.Y (e.g. 6.12)")
    return int(parts[0]), int(parts[1])


KNOWN_VERSIONS = tuple(sorted({t.since for texts in DOCUMENT_TEXTS.values() for t in texts} | {NEWEST},
                              key=parse_version))


def check_doc_version(text: str) -> str:
    """The release whose texts to check; a clear ValueError for one no document text covers."""
    v = parse_version(text)
    if v < parse_version(EARLIEST):
        raise ValueError(f"{text!r} is older than every KVM document text in the tree (the oldest is "
                         f"{EARLIEST}); known texts begin at {', '.join(KNOWN_VERSIONS)}")
    return f"{v[0]}.{v[1]}"


def text_in_effect(document: str, version: str) -> DocumentText | None:
    """The text of ``document`` that release ``version`` has (None before its oldest text in the tree)."""
    current = None
    for t in DOCUMENT_TEXTS.get(document, ()):
        if parse_version(t.since) <= parse_version(version):
            current = t
    return current


@dataclass(frozen=True)
class VersionRange:
    """The releases whose document text states a guarantee (``until`` included).

    ``since_commit``/``until_commit`` cite the kernel commit that made the
    statement appear, and the one that removed or changed it (which landed in
    the release after ``until``)."""

    since: str
    until: str | None = None
    since_commit: str | None = None
    until_commit: str | None = None

    def contains(self, version: str) -> bool:
        v = parse_version(version)
        if v < parse_version(self.since):
            return False
        return self.until is None or v <= parse_version(self.until)

    def texts(self, document: str) -> tuple[DocumentText, ...]:
        """The document texts in the tree that some release of this range has."""
        texts = DOCUMENT_TEXTS.get(document, ())
        out = []
        for i, t in enumerate(texts):
            start = parse_version(t.since)
            nxt = parse_version(texts[i + 1].since) if i + 1 < len(texts) else None
            if self.until is not None and start > parse_version(self.until):
                continue
            if nxt is not None and nxt <= parse_version(self.since):
                continue
            out.append(t)
        return tuple(out)

    def __str__(self) -> str:
        return f"{self.since}..{self.until}" if self.until else f"{self.since}+"
