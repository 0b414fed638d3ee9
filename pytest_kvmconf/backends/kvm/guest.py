"""The tiny x86 real-mode guests the kvm backend runs (a few hand-assembled bytes).

Guest RAM is 64 KiB at guest physical address 0, code at 0x1000, CS = SS = 0.
Every program first sets a "started" byte, then loops counting a 32-bit word in
memory, so the host can tell whether (and roughly how much) guest code ran. The
counters are at DS:0x500 and vCPU i runs with DS = i (base 16 * i), so each vCPU
counts in its own 16 bytes (:func:`slot`):

* ``busy``: count forever; KVM_RUN only returns when something interrupts it.
* ``hlt``:  count, HLT, repeat (interrupts disabled: only an NMI ends the HLT).
* ``pio``:  count, ``out 0x10, al`` (KVM_EXIT_IO), repeat.
* ``busy_irq``: ``sti``, then count forever: external interrupts are taken.
* ``hlt_irq``: ``sti``, then count, HLT, repeat: an interrupt ends each HLT.

The ``_irq`` programs on a VM with an in-kernel irqchip first program the
in-kernel 8259 PIC (vector base 8, auto-EOI, only IRQ0 unmasked), so that
KVM_IRQ_LINE on IRQ 0 reaches the guest through the LAPIC's ExtINT LINT0 (the
reset state of the boot vCPU's LVT0); without an irqchip those ``out``s would
exit to userspace, so they are left out there.

Handlers (real-mode IVT):

* NMI (vector 2): count in the vCPU's slot, ``out 0x11, al``, then HLT forever
  with no IRET, so further NMIs stay blocked: an NMI is seen by userspace as a
  KVM_EXIT_IO on port 0x11, whatever the program was doing.
* external interrupts (vectors 8 = PIC IRQ0, and :data:`IRQ_VECTOR`): count in
  the vCPU's slot, ``out 0x12, al`` (KVM_EXIT_IO on port 0x12), a LAPIC EOI
  (``mov [fs:0xFEE000B0], eax``; the VMM gives FS a flat 4 GiB limit, "unreal
  mode"), IRET back to the program.

Application processors started by INIT + SIPI (vector ``sipi_vector(i)``) run a
trampoline at ``vector * 0x1000`` that sets DS = i and jumps to the program.
"""

from __future__ import annotations

import ctypes

RAM_SIZE = 0x10000
CODE = 0x1000
NMI_HANDLER = 0x1100
IRQ_HANDLER = 0x1200
STACK_TOP = 0x8000
COUNTER = 0x500  # u32, counted by the loop
STARTED = 0x504  # u8, set once the program starts
IRQS = 0x506  # u16, external interrupts the guest took
NMIS = 0x508  # u16, NMIs the guest took
PIO_PORT = 0x10
NMI_PORT = 0x11
IRQ_PORT = 0x12
#: The vector userspace injects fixed interrupts with (KVM_SIGNAL_MSI, KVM_INTERRUPT).
IRQ_VECTOR = 0x20
#: The vector the guest programs the PIC's IRQ0 to.
PIC_VECTOR = 0x08
#: The LAPIC's EOI register (x86 APIC architecture: base 0xFEE00000 + 0xB0).
LAPIC_EOI = 0xFEE000B0
#: The first page an application processor's SIPI vector points to (vCPU i: this + i).
SIPI_BASE = 0x9
MAX_SIPI_VCPUS = 0x10 - SIPI_BASE

_START = bytes([0xC6, 0x06, 0x04, 0x05, 0x01])  # mov byte [0x504], 1
_COUNT = bytes([0x66, 0x83, 0x06, 0x00, 0x05, 0x01])  # add dword [0x500], 1
_STI = bytes([0xFB])
_HLT = bytes([0xF4])
# The 8259 PIC: ICW1 (edge, cascade, ICW4), ICW2 (vector base 8), ICW3, ICW4 (8086, auto-EOI),
# OCW1 (mask all but IRQ0). Each is "mov al, imm8; out imm8, al".
_PIC_INIT = b"".join(bytes([0xB0, value, 0xE6, port]) for port, value in
                     ((0x20, 0x11), (0x21, PIC_VECTOR), (0x21, 0x04), (0x21, 0x03), (0x21, 0xFE)))


def _program(prologue: bytes, body: bytes) -> bytes:
    """``prologue``, then: count; ``body``; jmp back to the count."""
    head = _START + prologue
    loop = head + _COUNT + body
    back = len(head) - (len(loop) + 2)
    return loop + bytes([0xEB, back & 0xFF])


#: The programs and the prologue each needs on a VM with an in-kernel irqchip.
_BODIES: dict[str, tuple[bytes, bytes, bool]] = {
    # name: (prologue, loop body, takes external interrupts)
    "busy": (b"", b"", False),
    "hlt": (b"", _HLT, False),
    "pio": (b"", bytes([0xE6, PIO_PORT]), False),  # out 0x10, al
    "busy_irq": (_STI, b"", True),
    "hlt_irq": (_STI, _HLT, True),
}
PROGRAMS: dict[str, bytes] = {name: _program(pro, body) for name, (pro, body, _) in _BODIES.items()}
#: Programs whose KVM_RUN never halts or exits by itself once the guest runs.
NEVER_HALTS = frozenset({"busy", "busy_irq"})
#: Programs that take external interrupts (IF=1).
INTERRUPTIBLE = frozenset(n for n, (_, _, irq) in _BODIES.items() if irq)

# inc word [0x508]; out 0x11, al; hlt; jmp back to the hlt
NMI_CODE = bytes([0xFF, 0x06, NMIS & 0xFF, NMIS >> 8, 0xE6, NMI_PORT, 0xF4, 0xEB, 0xFD])
# inc word [0x506]; out 0x12, al; mov [fs:0xFEE000B0], eax (a32, o32); iret
IRQ_CODE = (bytes([0xFF, 0x06, IRQS & 0xFF, IRQS >> 8, 0xE6, IRQ_PORT, 0x64, 0x66, 0x67, 0xA3])
            + LAPIC_EOI.to_bytes(4, "little") + bytes([0xCF]))


def code_of(program: str, irqchip: bool) -> bytes:
    """The bytes at CODE for ``program`` on a VM with or without an in-kernel irqchip."""
    prologue, body, takes_irqs = _BODIES[program]
    if takes_irqs and irqchip:
        prologue = _PIC_INIT + prologue
    return _program(prologue, body)


def _ivt(ram: int, vector: int, handler: int) -> None:
    ctypes.c_uint16.from_address(ram + 4 * vector).value = handler
    ctypes.c_uint16.from_address(ram + 4 * vector + 2).value = 0


def load(ram: int, program: str, irqchip: bool = False) -> None:
    """Write ``program``, the handlers, the IVT entries and the AP trampolines into guest RAM."""
    code = code_of(program, irqchip)
    ctypes.memmove(ram + CODE, code, len(code))
    ctypes.memmove(ram + NMI_HANDLER, NMI_CODE, len(NMI_CODE))
    ctypes.memmove(ram + IRQ_HANDLER, IRQ_CODE, len(IRQ_CODE))
    _ivt(ram, 2, NMI_HANDLER)
    _ivt(ram, PIC_VECTOR, IRQ_HANDLER)
    _ivt(ram, IRQ_VECTOR, IRQ_HANDLER)
    for i in range(MAX_SIPI_VCPUS):
        # mov ax, i; mov ds, ax; jmp far 0:CODE
        tramp = bytes([0xB8, data_segment(i), 0x00, 0x8E, 0xD8, 0xEA]) + CODE.to_bytes(2, "little") + b"\0\0"
        ctypes.memmove(ram + (SIPI_BASE + i) * 0x1000, tramp, len(tramp))


def sipi_vector(vcpu: int) -> int:
    """The SIPI vector that starts vCPU ``vcpu`` as an AP in its own trampoline."""
    if vcpu >= MAX_SIPI_VCPUS:
        raise ValueError(f"the x86 guests have AP trampolines for {MAX_SIPI_VCPUS} vCPUs")
    return SIPI_BASE + vcpu


def data_segment(vcpu: int) -> int:
    """The real-mode DS selector of vCPU ``vcpu``: its counters live at 16 * vcpu + 0x500."""
    return vcpu


def slot(ram: int, vcpu: int) -> int:
    return ram + 16 * data_segment(vcpu)


def progress(ram: int, vcpu: int) -> int:
    """How much guest code vCPU ``vcpu`` ran: its loop counter, at least 1 once its program
    started (the 32-bit counter of a busy guest may wrap)."""
    base = slot(ram, vcpu)
    count = ctypes.c_uint32.from_address(base + COUNTER).value
    started = ctypes.c_uint8.from_address(base + STARTED).value
    return count or started


def taken(ram: int, vcpu: int) -> tuple[int, int]:
    """(external interrupts, NMIs) the guest's handlers counted on vCPU ``vcpu``."""
    base = slot(ram, vcpu)
    return (ctypes.c_uint16.from_address(base + IRQS).value, ctypes.c_uint16.from_address(base + NMIS).value)
