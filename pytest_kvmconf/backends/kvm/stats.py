"""KVM's binary statistics (KVM_GET_STATS_FD): the kernel's own counters of a VM or a vCPU.

One :class:`BinaryStats` reads one stats fd: its descriptors once (names, sizes,
offsets), then any value with one ``pread``. The names are the kernel's
(``halt_wakeup``, ``exits``, ``signal_exits``, ``nmi_injections``, ``blocking``,
``remote_tlb_flush``, ...: virt/kvm/kvm_main.c and arch/x86/kvm/x86.c, the
``KVM_GENERIC_VCPU_STATS``/``kvm_vcpu_stats_desc`` tables); a name the running
kernel lacks reads as None, so a spec can be skipped with "the kernel has no
binary statistic X" instead of failing.

Live checks use them as evidence, never as a verdict on their own: ``blocking``
is 1 exactly while the vCPU thread sleeps in kvm_vcpu_block (a HLT with an
in-kernel LAPIC, an AP waiting for INIT/SIPI), ``halt_wakeup`` counts the wake-ups
of such sleeps, ``signal_exits`` the KVM_RUNs a signal ended.

Layout (include/uapi/linux/kvm.h, "struct kvm_stats_header", "struct kvm_stats_desc"):
a header, then ``num_desc`` descriptors of ``sizeof(kvm_stats_desc) + name_size``
bytes at ``desc_offset``, the values (u64 each, ``size`` of them) at
``data_offset + desc.offset``.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from . import uapi


@dataclass(frozen=True)
class StatDesc:
    name: str
    #: number of u64 values (1 for counters, more for histograms)
    size: int
    #: KVM_STATS_TYPE_* | KVM_STATS_UNIT_* | KVM_STATS_BASE_* bits
    flags: int
    #: byte offset of the first value in the fd
    at: int


class BinaryStats:
    """The statistics behind one stats fd (a VM's or a vCPU's). Owns ``fd`` if ``own``."""

    def __init__(self, fd: int, own: bool = True):
        self.fd = fd
        self.own = own
        raw = os.pread(fd, ctypes.sizeof(uapi.kvm_stats_header), 0)
        header = uapi.kvm_stats_header.from_buffer_copy(raw)
        head = ctypes.sizeof(uapi.kvm_stats_desc)
        size = head + header.name_size
        table = os.pread(fd, size * header.num_desc, header.desc_offset)
        self.descs: dict[str, StatDesc] = {}
        for i in range(header.num_desc):
            entry = table[i * size:(i + 1) * size]
            desc = uapi.kvm_stats_desc.from_buffer_copy(entry)
            name = entry[head:].split(b"\0")[0].decode("ascii", "replace")
            self.descs[name] = StatDesc(name, desc.size, desc.flags, header.data_offset + desc.offset)

    @classmethod
    def of(cls, owner_fd: int) -> BinaryStats | None:
        """The statistics of a VM or vCPU fd, or None if the kernel has no KVM_GET_STATS_FD."""
        try:
            fd = uapi.ioctl(owner_fd, uapi.KVM_GET_STATS_FD, 0, "KVM_GET_STATS_FD")
        except uapi.KvmError:
            return None
        try:
            return cls(fd)
        except BaseException:
            os.close(fd)
            raise

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.descs)

    def read(self, name: str) -> int | None:
        """The (first) value of statistic ``name`` now; None if this kernel does not have it."""
        d = self.descs.get(name)
        if d is None or self.fd < 0:
            return None
        return int.from_bytes(os.pread(self.fd, 8, d.at), "little")

    def snapshot(self, names: Iterable[str]) -> dict[str, int | None]:
        return {n: self.read(n) for n in names}

    def delta(self, before: Mapping[str, int | None]) -> dict[str, int | None]:
        """How much each statistic of ``before`` grew since (None where unknown)."""
        out: dict[str, int | None] = {}
        for n, old in before.items():
            now = self.read(n)
            out[n] = None if now is None or old is None else now - old
        return out

    def close(self) -> None:
        if self.own and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1
