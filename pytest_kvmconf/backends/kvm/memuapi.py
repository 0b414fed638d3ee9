"""The memory side of the /dev/kvm ioctl layer: memslot flags, dirty logging, the dirty
ring, and the host mappings guest memory lives in (memfd, mmap, madvise).

Like :mod:`.uapi`, only facts copied from the uapi headers (include/uapi/linux/kvm.h,
arch/x86/include/uapi/asm/kvm.h, include/uapi/asm-generic/mman-common.h), each naming
where it comes from. Kept apart from :mod:`.uapi` so the memory specs' layer has one
module of its own.
"""

from __future__ import annotations

import ctypes
import mmap
import os

from .uapi import _IO, _IOC, _IOC_READ, _IOC_WRITE, _IOW, KVMIO, KvmError, _libc

# include/uapi/linux/kvm.h: struct kvm_userspace_memory_region.flags
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1

# include/uapi/linux/kvm.h: capabilities
KVM_CAP_SYNC_MMU = 16
KVM_CAP_READONLY_MEM = 81
KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 = 168
KVM_CAP_DIRTY_LOG_RING = 192
KVM_CAP_DIRTY_LOG_RING_ACQ_REL = 223
# include/uapi/linux/kvm.h: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2's enable flags
KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE = 1 << 0

# include/uapi/linux/kvm.h: exit reasons met by the memory specs
KVM_EXIT_MMIO = 6
KVM_EXIT_DIRTY_RING_FULL = 31


class kvm_dirty_log(ctypes.Structure):  # noqa: N801
    """include/uapi/linux/kvm.h: struct kvm_dirty_log (the bitmap pointer as a u64)."""

    _fields_ = [("slot", ctypes.c_uint32), ("padding1", ctypes.c_uint32), ("dirty_bitmap", ctypes.c_uint64)]


class kvm_clear_dirty_log(ctypes.Structure):  # noqa: N801
    """include/uapi/linux/kvm.h: struct kvm_clear_dirty_log."""

    _fields_ = [("slot", ctypes.c_uint32), ("num_pages", ctypes.c_uint32),
                ("first_page", ctypes.c_uint64), ("dirty_bitmap", ctypes.c_uint64)]


class kvm_dirty_gfn(ctypes.Structure):  # noqa: N801
    """include/uapi/linux/kvm.h: struct kvm_dirty_gfn, one entry of a vCPU's dirty ring."""

    _fields_ = [("flags", ctypes.c_uint32), ("slot", ctypes.c_uint32), ("offset", ctypes.c_uint64)]


class kvm_run_mmio(ctypes.Structure):  # noqa: N801
    """include/uapi/linux/kvm.h: the KVM_EXIT_MMIO member of kvm_run's exit union."""

    _fields_ = [("phys_addr", ctypes.c_uint64), ("data", ctypes.c_uint8 * 8),
                ("len", ctypes.c_uint32), ("is_write", ctypes.c_uint8)]


# include/uapi/linux/kvm.h: struct kvm_dirty_gfn.flags
KVM_DIRTY_GFN_F_DIRTY = 1 << 0
KVM_DIRTY_GFN_F_RESET = 1 << 1
# arch/x86/include/uapi/asm/kvm.h: the dirty ring's page offset in the vCPU fd's mmap space
KVM_DIRTY_LOG_PAGE_OFFSET = 64

KVM_GET_DIRTY_LOG = _IOW(KVMIO, 0x42, kvm_dirty_log)
KVM_CLEAR_DIRTY_LOG = _IOC(_IOC_READ | _IOC_WRITE, KVMIO, 0xC0, ctypes.sizeof(kvm_clear_dirty_log))
KVM_RESET_DIRTY_RINGS = _IO(KVMIO, 0xC7)

# include/uapi/asm-generic/mman-common.h
MADV_DONTNEED = 4
MAP_FIXED = 0x10
PAGE_SIZE = mmap.PAGESIZE

_libc.madvise.restype = ctypes.c_int
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
MAP_FAILED = ctypes.c_void_p(-1).value


def map_shared(fd: int, size: int, at: int = 0, offset: int = 0, prot: int | None = None) -> int:
    """mmap(MAP_SHARED) of ``fd``; with ``at``, MAP_FIXED over whatever is mapped there (the
    kernel unmaps the old pages first, which is what fires the MMU notifier)."""
    flags = mmap.MAP_SHARED | (MAP_FIXED if at else 0)
    prot = mmap.PROT_READ | mmap.PROT_WRITE if prot is None else prot
    addr = _libc.mmap(at or None, size, prot, flags, fd, offset)
    if addr is None or addr == MAP_FAILED:
        raise KvmError("mmap", ctypes.get_errno())
    return addr


def madvise(addr: int, size: int, advice: int) -> None:
    if _libc.madvise(addr, size, advice) != 0:
        raise KvmError("madvise", ctypes.get_errno())


def memfd(size: int, name: str) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd
