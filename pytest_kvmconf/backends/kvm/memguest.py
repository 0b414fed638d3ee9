"""The memory specs' guest: a real-mode writer that stamps a generation into a data region.

It runs in the same 64 KiB slot-0 layout as :mod:`.guest` (code at 0x1000, vCPU i's
16 bytes at DS = i), and writes into a *data region* of :data:`DATA_PAGES` pages at
guest-physical :data:`DATA_GPA`, a memslot of its own that the specs delete, move,
make read-only, remap or dirty-log while the guest runs. One *pass*:

1. ``gen += 1`` (the u32 at DS:0x500, i.e. :func:`.guest.progress` counts passes);
2. for page p = 0 .. DATA_PAGES-1: write ``gen`` (u32) at offset ``16 * i`` of page p.

So every write carries the pass it belongs to, and a page's content says which pass
wrote it last: a copy that missed a write shows an older generation (a lost dirty bit),
and a write that lands where it must not changes memory userspace froze.
Each write is a separate ``mov [es:bx], eax``; if the page has no writable memslot
the kernel hands it to userspace as KVM_EXIT_MMIO and the run loop re-enters.
"""

from __future__ import annotations

import ctypes

from ...facets.memslots import DATA_PAGES
from . import guest

DATA_GPA = 0x10000  # real mode: ES = 0x1000 + i reaches it
PAGE = 0x1000
DATA_SIZE = DATA_PAGES * PAGE
#: Where the data slot goes when a spec moves it: above what real-mode ES can reach here.
MOVED_GPA = 0x40000
STRIDE = 16  # vCPU i writes at offset 16 * i of each page


def _writer() -> bytes:
    start = bytes([
        0xC6, 0x06, 0x04, 0x05, 0x01,  # mov byte [0x504], 1 (started)
        0x8C, 0xD8,                    # mov ax, ds
        0x05, 0x00, 0x10,              # add ax, 0x1000
        0x8E, 0xC0,                    # mov es, ax  (ES base = DATA_GPA + 16 * i)
    ])
    loop = bytes([
        0x66, 0xFF, 0x06, 0x00, 0x05,  # inc dword [0x500]  (gen)
        0x66, 0xA1, 0x00, 0x05,        # mov eax, [0x500]
        0x31, 0xDB,                    # xor bx, bx
        0xB9, DATA_PAGES, 0x00,        # mov cx, DATA_PAGES
        # inner:
        0x26, 0x66, 0x89, 0x07,        # mov [es:bx], eax
        0x81, 0xC3, 0x00, 0x10,        # add bx, 0x1000
        0xE2, 0xF6,                    # loop inner
    ])
    back = -(len(loop) + 2)
    return start + loop + bytes([0xEB, back & 0xFF])  # jmp loop


WRITER = _writer()


def load(ram: int) -> None:
    """Put the writer at the slot-0 code address (over whatever program :mod:`.guest` loaded)."""
    ctypes.memmove(ram + guest.CODE, WRITER, len(WRITER))


def gen(ram: int, vcpu: int) -> int:
    """vCPU ``vcpu``'s pass counter (the generation its writes carry now)."""
    return ctypes.c_uint32.from_address(ram + 16 * guest.data_segment(vcpu) + guest.COUNTER).value


def word(view: int, page: int, vcpu: int) -> int:
    """The generation vCPU ``vcpu`` last wrote into ``page`` of a data-region view."""
    return ctypes.c_uint32.from_address(view + page * PAGE + STRIDE * vcpu).value


def stamp_of(gpa: int) -> tuple[int, int] | None:
    """(page, vcpu) of a guest write at ``gpa``, if it is one of the writer's stamps
    (whatever GPA the data region was reached at)."""
    off = gpa - DATA_GPA
    if not 0 <= off < DATA_SIZE or off % PAGE % STRIDE:
        return None
    return off // PAGE, off % PAGE // STRIDE
