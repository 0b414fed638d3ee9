"""The /dev/kvm ioctl layer: ioctl numbers and ctypes layouts, nothing else.

Every number and structure here is a fact copied from the Linux uapi headers
(include/uapi/linux/kvm.h, arch/x86/include/uapi/asm/kvm.h and
include/uapi/asm-generic/ioctl.h); each carries a comment naming the header
and the struct or macro it comes from. The backend logic lives in
:mod:`.vm` and :mod:`.machine`; this module only says how to talk to the
kernel.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
from typing import Any

# Values of include/uapi/linux/kvm.h that specs also name: defined once, in the MP facet.
from ...facets.mp import (  # noqa: F401 - re-exported as part of the uapi layer
    KVM_CAP_ARM_SYSTEM_SUSPEND,
    KVM_CAP_IMMEDIATE_EXIT,
    KVM_CAP_IRQCHIP,
    KVM_CAP_MP_STATE,
    KVM_CAP_SIGNAL_MSI,
    KVM_CAP_SYSTEM_EVENT_DATA,
    KVM_EXIT_HLT,
    KVM_EXIT_INTR,
    KVM_EXIT_IO,
    KVM_EXIT_MMIO,
    KVM_EXIT_SHUTDOWN,
    KVM_EXIT_SYSTEM_EVENT,
    KVM_EXIT_UNKNOWN,
    KVM_MP_STATE_AP_RESET_HOLD,
    KVM_MP_STATE_CHECK_STOP,
    KVM_MP_STATE_HALTED,
    KVM_MP_STATE_INIT_RECEIVED,
    KVM_MP_STATE_LOAD,
    KVM_MP_STATE_OPERATING,
    KVM_MP_STATE_RUNNABLE,
    KVM_MP_STATE_SIPI_RECEIVED,
    KVM_MP_STATE_STOPPED,
    KVM_MP_STATE_SUSPENDED,
    KVM_MP_STATE_UNINITIALIZED,
    KVM_SYSTEM_EVENT_CRASH,
    KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SEV_TERM,
    KVM_SYSTEM_EVENT_SHUTDOWN,
    KVM_SYSTEM_EVENT_SUSPEND,
    KVM_SYSTEM_EVENT_WAKEUP,
)

# -- include/uapi/asm-generic/ioctl.h: the _IOC encoding (x86_64, arm64, riscv) --
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = 8
_IOC_SIZESHIFT = 16
_IOC_DIRSHIFT = 30
_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:
    return (direction << _IOC_DIRSHIFT) | (type_ << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT) \
        | (size << _IOC_SIZESHIFT)


def _IO(type_: int, nr: int) -> int:
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOR(type_: int, nr: int, struct: type) -> int:
    return _IOC(_IOC_READ, type_, nr, ctypes.sizeof(struct))


def _IOW(type_: int, nr: int, struct: type) -> int:
    return _IOC(_IOC_WRITE, type_, nr, ctypes.sizeof(struct))


# -- include/uapi/linux/kvm.h --------------------------------------------------
KVMIO = 0xAE  # #define KVMIO 0xAE
KVM_API_VERSION = 12  # #define KVM_API_VERSION 12


class kvm_userspace_memory_region(ctypes.Structure):  # noqa: N801 - kernel name
    """include/uapi/linux/kvm.h: struct kvm_userspace_memory_region."""

    _fields_ = [
        ("slot", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("guest_phys_addr", ctypes.c_uint64),
        ("memory_size", ctypes.c_uint64),
        ("userspace_addr", ctypes.c_uint64),
    ]


class kvm_mp_state(ctypes.Structure):  # noqa: N801
    """include/uapi/linux/kvm.h: struct kvm_mp_state."""

    _fields_ = [("mp_state", ctypes.c_uint32)]


class kvm_msi(ctypes.Structure):  # noqa: N801
    """include/uapi/linux/kvm.h: struct kvm_msi (for KVM_SIGNAL_MSI)."""

    _fields_ = [
        ("address_lo", ctypes.c_uint32),
        ("address_hi", ctypes.c_uint32),
        ("data", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("devid", ctypes.c_uint32),
        ("pad", ctypes.c_uint8 * 12),
    ]


class kvm_irq_level(ctypes.Structure):  # noqa: N801
    """include/uapi/linux/kvm.h: struct kvm_irq_level (irq/status union, level)."""

    _fields_ = [("irq", ctypes.c_uint32), ("level", ctypes.c_uint32)]


class kvm_interrupt(ctypes.Structure):  # noqa: N801
    """include/uapi/linux/kvm.h: struct kvm_interrupt (for KVM_INTERRUPT: a vector, not a pin)."""

    _fields_ = [("irq", ctypes.c_uint32)]


class kvm_enable_cap(ctypes.Structure):  # noqa: N801
    """include/uapi/linux/kvm.h: struct kvm_enable_cap."""

    _fields_ = [
        ("cap", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("args", ctypes.c_uint64 * 4),
        ("pad", ctypes.c_uint8 * 64),
    ]


class kvm_run_io(ctypes.Structure):  # noqa: N801
    """include/uapi/linux/kvm.h: struct kvm_run, the KVM_EXIT_IO member of its exit union."""

    _fields_ = [
        ("direction", ctypes.c_uint8),
        ("size", ctypes.c_uint8),
        ("port", ctypes.c_uint16),
        ("count", ctypes.c_uint32),
        ("data_offset", ctypes.c_uint64),
    ]


class kvm_run_system_event(ctypes.Structure):  # noqa: N801
    """include/uapi/linux/kvm.h: struct kvm_run, the KVM_EXIT_SYSTEM_EVENT member."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("ndata", ctypes.c_uint32),
        ("data", ctypes.c_uint64 * 16),
    ]


class kvm_run_exit(ctypes.Union):  # noqa: N801
    """include/uapi/linux/kvm.h: the anonymous exit union of struct kvm_run ("Fix the size of the union": 256 bytes)."""

    _fields_ = [
        ("io", kvm_run_io),
        ("system_event", kvm_run_system_event),
        ("padding", ctypes.c_char * 256),
    ]


class kvm_run(ctypes.Structure):  # noqa: N801
    """include/uapi/linux/kvm.h: struct kvm_run, up to the exit union (the shared
    register area after it is not used here). ``immediate_exit`` is spelled
    HINT_UNSAFE_IN_KVM(immediate_exit) in the header; userspace sees this name."""

    _fields_ = [
        ("request_interrupt_window", ctypes.c_uint8),
        ("immediate_exit", ctypes.c_uint8),
        ("padding1", ctypes.c_uint8 * 6),
        ("exit_reason", ctypes.c_uint32),
        ("ready_for_interrupt_injection", ctypes.c_uint8),
        ("if_flag", ctypes.c_uint8),
        ("flags", ctypes.c_uint16),
        ("cr8", ctypes.c_uint64),
        ("apic_base", ctypes.c_uint64),
        ("exit", kvm_run_exit),
    ]


# System ioctls (on the /dev/kvm fd).
KVM_GET_API_VERSION = _IO(KVMIO, 0x00)
KVM_CREATE_VM = _IO(KVMIO, 0x01)
KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03)  # also a VM ioctl with KVM_CAP_CHECK_EXTENSION_VM
KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04)
# VM ioctls.
KVM_CREATE_VCPU = _IO(KVMIO, 0x41)
KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = _IO(KVMIO, 0x47)
KVM_CREATE_IRQCHIP = _IO(KVMIO, 0x60)
KVM_IRQ_LINE = _IOW(KVMIO, 0x61, kvm_irq_level)
KVM_ENABLE_CAP = _IOW(KVMIO, 0xA3, kvm_enable_cap)  # vCPU and (with KVM_CAP_ENABLE_CAP_VM) VM ioctl
KVM_SIGNAL_MSI = _IOW(KVMIO, 0xA5, kvm_msi)
# vCPU ioctls.
KVM_RUN = _IO(KVMIO, 0x80)
KVM_INTERRUPT = _IOW(KVMIO, 0x86, kvm_interrupt)
KVM_GET_MP_STATE = _IOR(KVMIO, 0x98, kvm_mp_state)
KVM_SET_MP_STATE = _IOW(KVMIO, 0x99, kvm_mp_state)

# include/uapi/linux/kvm.h: #define KVM_EXIT_*
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTERNAL_ERROR = 17

# include/uapi/linux/kvm.h: #define KVM_CAP_*
KVM_CAP_HLT = 1
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_ENABLE_CAP_VM = 98
KVM_CAP_CHECK_EXTENSION_VM = 105

# -- arch/x86/include/uapi/asm/kvm.h ---------------------------------------------


class kvm_regs(ctypes.Structure):  # noqa: N801
    """arch/x86/include/uapi/asm/kvm.h: struct kvm_regs."""

    _fields_ = [(n, ctypes.c_uint64) for n in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")]


class kvm_segment(ctypes.Structure):  # noqa: N801
    """arch/x86/include/uapi/asm/kvm.h: struct kvm_segment."""

    _fields_ = [
        ("base", ctypes.c_uint64),
        ("limit", ctypes.c_uint32),
        ("selector", ctypes.c_uint16),
        ("type", ctypes.c_uint8),
        ("present", ctypes.c_uint8),
        ("dpl", ctypes.c_uint8),
        ("db", ctypes.c_uint8),
        ("s", ctypes.c_uint8),
        ("l", ctypes.c_uint8),
        ("g", ctypes.c_uint8),
        ("avl", ctypes.c_uint8),
        ("unusable", ctypes.c_uint8),
        ("padding", ctypes.c_uint8),
    ]


class kvm_dtable(ctypes.Structure):  # noqa: N801
    """arch/x86/include/uapi/asm/kvm.h: struct kvm_dtable."""

    _fields_ = [("base", ctypes.c_uint64), ("limit", ctypes.c_uint16), ("padding", ctypes.c_uint16 * 3)]


KVM_NR_INTERRUPTS = 256  # arch/x86/include/uapi/asm/kvm.h: #define KVM_NR_INTERRUPTS 256


class kvm_sregs(ctypes.Structure):  # noqa: N801
    """arch/x86/include/uapi/asm/kvm.h: struct kvm_sregs."""

    _fields_ = [
        *((n, kvm_segment) for n in ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")),
        ("gdt", kvm_dtable),
        ("idt", kvm_dtable),
        *((n, ctypes.c_uint64) for n in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")),
        ("interrupt_bitmap", ctypes.c_uint64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]


KVM_GET_REGS = _IOR(KVMIO, 0x81, kvm_regs)  # include/uapi/linux/kvm.h
KVM_SET_REGS = _IOW(KVMIO, 0x82, kvm_regs)
KVM_GET_SREGS = _IOR(KVMIO, 0x83, kvm_sregs)
KVM_SET_SREGS = _IOW(KVMIO, 0x84, kvm_sregs)

# x86 MSI addressing and delivery modes (the MSI format the in-kernel LAPIC decodes;
# arch/x86/include/asm/msidef.h / apicdef.h): address 0xFEE00000 | dest APIC id << 12,
# data = delivery mode << 8 | vector; delivery mode 4 is NMI.
X86_MSI_BASE = 0xFEE00000
X86_MSI_DEST_SHIFT = 12
X86_DELIVERY_NMI = 4 << 8


# -- calling the kernel ---------------------------------------------------------
class KvmError(OSError):
    """An ioctl failed; ``errno`` says why, ``request`` names the ioctl."""

    def __init__(self, request: str, err: int):
        super().__init__(err, f"{request}: {os.strerror(err)}")
        self.request = request


def ioctl(fd: int, request: int, arg: Any = 0, name: str = "ioctl") -> int:
    """One ioctl; ``arg`` is an int or a ctypes structure the kernel reads/writes in place.

    fcntl.ioctl does not retry EINTR (unlike os.read and friends since PEP 475),
    which KVM_RUN relies on: a signal must make it return.
    """
    try:
        if isinstance(arg, int):
            return fcntl.ioctl(fd, request, arg)
        return fcntl.ioctl(fd, request, arg, True)
    except OSError as exc:
        raise KvmError(name, exc.errno or errno.EIO) from None


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
MAP_FAILED = ctypes.c_void_p(-1).value


def map_memory(size: int, fd: int = -1) -> int:
    """mmap: anonymous private memory (guest RAM) or a shared mapping of ``fd`` (kvm_run)."""
    if fd < 0:
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    else:
        flags = mmap.MAP_SHARED
    addr = _libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, flags, fd, 0)
    if addr is None or addr == MAP_FAILED:
        raise KvmError("mmap", ctypes.get_errno())
    return addr


def unmap_memory(addr: int, size: int) -> None:
    if _libc.munmap(addr, size) != 0:
        raise KvmError("munmap", ctypes.get_errno())


# -- arch/x86/include/uapi/asm/kvm.h: the in-kernel LAPIC's register page ---------
KVM_APIC_REG_SIZE = 0x400  # #define KVM_APIC_REG_SIZE 0x400


class kvm_lapic_state(ctypes.Structure):  # noqa: N801
    """arch/x86/include/uapi/asm/kvm.h: struct kvm_lapic_state."""

    _fields_ = [("regs", ctypes.c_uint8 * KVM_APIC_REG_SIZE)]


KVM_GET_LAPIC = _IOR(KVMIO, 0x8E, kvm_lapic_state)  # include/uapi/linux/kvm.h
KVM_SET_LAPIC = _IOW(KVMIO, 0x8F, kvm_lapic_state)
# The spurious-interrupt vector register and its APIC software enable bit (the x86 APIC
# architecture; arch/x86/include/asm/apicdef.h APIC_SPIV, APIC_SPIV_APIC_ENABLED).
APIC_SPIV = 0xF0
APIC_SPIV_APIC_ENABLED = 1 << 8


# -- include/uapi/linux/kvm.h: binary statistics (KVM_CAP_BINARY_STATS_FD) ---------
KVM_CAP_BINARY_STATS_FD = 203
KVM_GET_STATS_FD = _IO(KVMIO, 0xCE)


class kvm_stats_header(ctypes.Structure):  # noqa: N801
    """include/uapi/linux/kvm.h: struct kvm_stats_header."""

    _fields_ = [(n, ctypes.c_uint32) for n in
                ("flags", "name_size", "num_desc", "id_offset", "desc_offset", "data_offset")]


class kvm_stats_desc(ctypes.Structure):  # noqa: N801
    """include/uapi/linux/kvm.h: struct kvm_stats_desc, without its trailing name[name_size]."""

    _fields_ = [
        ("flags", ctypes.c_uint32),
        ("exponent", ctypes.c_int16),
        ("size", ctypes.c_uint16),
        ("offset", ctypes.c_uint32),
        ("bucket_size", ctypes.c_uint32),
    ]
