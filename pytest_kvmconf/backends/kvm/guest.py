"""The tiny x86 real-mode guests the kvm backend runs (a few hand-assembled bytes).

Guest RAM is 64 KiB at guest physical address 0, code at 0x1000, CS = SS = 0.
Every program first sets a "started" byte, then loops counting a 32-bit word in
memory, so the host can tell whether (and roughly how much) guest code ran. The
counter is DS:0x500 and vCPU i runs with DS = i (base 16 * i), so each vCPU
counts in its own 16 bytes:

* ``busy``: count forever; KVM_RUN only returns when something interrupts it.
* ``hlt``:  count, HLT, repeat.
* ``pio``:  count, ``out 0x10, al`` (KVM_EXIT_IO), repeat.

The NMI vector (real-mode IVT entry 2) points to a handler doing ``out 0x11, al``
then HLT forever (no IRET, so further NMIs stay blocked): an injected NMI is seen
by userspace as a KVM_EXIT_IO on port 0x11, whatever the program was doing.
"""

from __future__ import annotations

import ctypes

RAM_SIZE = 0x10000
CODE = 0x1000
NMI_HANDLER = 0x1100
STACK_TOP = 0x8000
COUNTER = 0x500  # u32, counted by the loop
STARTED = 0x504  # u8, set once the program starts
IVT_NMI = 2 * 4  # IVT entry 2: offset (u16), segment (u16)
PIO_PORT = 0x10
NMI_PORT = 0x11

_START = bytes([0xC6, 0x06, 0x04, 0x05, 0x01])  # mov byte [0x504], 1
_COUNT = bytes([0x66, 0x83, 0x06, 0x00, 0x05, 0x01])  # add dword [0x500], 1
_LOOP = CODE + len(_START)  # the loop starts at the count


def _jmp_back(at: int) -> bytes:
    """``jmp short _LOOP`` placed at ``at``."""
    return bytes([0xEB, (_LOOP - (at + 2)) & 0xFF])


def _program(body: bytes) -> bytes:
    head = _START + _COUNT + body
    return head + _jmp_back(CODE + len(head))


PROGRAMS: dict[str, bytes] = {
    "busy": _program(b""),
    "hlt": _program(bytes([0xF4])),  # hlt
    "pio": _program(bytes([0xE6, PIO_PORT])),  # out 0x10, al
}
# out 0x11, al; hlt; jmp back to the hlt
NMI_CODE = bytes([0xE6, NMI_PORT, 0xF4, 0xEB, 0xFD])


def load(ram: int, program: str) -> None:
    """Write ``program``, the NMI handler and the IVT entry into guest RAM at address ``ram``."""
    code = PROGRAMS[program]
    ctypes.memmove(ram + CODE, code, len(code))
    ctypes.memmove(ram + NMI_HANDLER, NMI_CODE, len(NMI_CODE))
    ctypes.c_uint16.from_address(ram + IVT_NMI).value = NMI_HANDLER
    ctypes.c_uint16.from_address(ram + IVT_NMI + 2).value = 0


def data_segment(vcpu: int) -> int:
    """The real-mode DS selector of vCPU ``vcpu``: its counters live at 16 * vcpu + 0x500."""
    return vcpu


def progress(ram: int, vcpu: int) -> int:
    """How much guest code vCPU ``vcpu`` ran: its loop counter, at least 1 once its program
    started (the 32-bit counter of a busy guest may wrap)."""
    base = ram + 16 * data_segment(vcpu)
    count = ctypes.c_uint32.from_address(base + COUNTER).value
    started = ctypes.c_uint8.from_address(base + STARTED).value
    return count or started
