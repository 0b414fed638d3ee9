"""api.rst 4.38/4.39 and 5 (KVM_EXIT_SYSTEM_EVENT): MP states, KVM_RUN and its
interruption (signals, ``kvm_run.immediate_exit``), wake-ups and system events.

The vocabulary is the userspace face of KVM: the ioctls a VMM makes
(KVM_GET/SET_MP_STATE, KVM_RUN, KVM_CHECK_EXTENSION, KVM_ENABLE_CAP,
KVM_SIGNAL_MSI) and what it does to a vCPU thread (a signal, a write of
``immediate_exit``). A backend runs it against a model or against /dev/kvm.

Machine options (``machine = { ... }`` in a spec):

* ``irqchip`` (bool, default false): KVM_CREATE_IRQCHIP before the vCPUs are
  created (on x86 the in-kernel LAPIC; arm64/riscv models always have one).
* ``program`` (str, default ``"busy"``): the guest code every vCPU runs, one of
  :data:`GUEST_PROGRAMS`.

Values are the kernel's (include/uapi/linux/kvm.h); errors are negative errno
values (``-EINVAL``), as the ioctl's ``-1`` plus ``errno`` reads in C.
"""

from __future__ import annotations

from . import Arg, Facet, register

# include/uapi/linux/kvm.h: KVM_MP_STATE_*
KVM_MP_STATE_RUNNABLE = 0
KVM_MP_STATE_UNINITIALIZED = 1
KVM_MP_STATE_INIT_RECEIVED = 2
KVM_MP_STATE_HALTED = 3
KVM_MP_STATE_SIPI_RECEIVED = 4
KVM_MP_STATE_STOPPED = 5
KVM_MP_STATE_CHECK_STOP = 6
KVM_MP_STATE_OPERATING = 7
KVM_MP_STATE_LOAD = 8
KVM_MP_STATE_AP_RESET_HOLD = 9
KVM_MP_STATE_SUSPENDED = 10

MP_STATE_NAMES = {
    0: "KVM_MP_STATE_RUNNABLE", 1: "KVM_MP_STATE_UNINITIALIZED", 2: "KVM_MP_STATE_INIT_RECEIVED",
    3: "KVM_MP_STATE_HALTED", 4: "KVM_MP_STATE_SIPI_RECEIVED", 5: "KVM_MP_STATE_STOPPED",
    6: "KVM_MP_STATE_CHECK_STOP", 7: "KVM_MP_STATE_OPERATING", 8: "KVM_MP_STATE_LOAD",
    9: "KVM_MP_STATE_AP_RESET_HOLD", 10: "KVM_MP_STATE_SUSPENDED",
}

# include/uapi/linux/kvm.h: KVM_EXIT_* (the ones these specs meet)
KVM_EXIT_UNKNOWN = 0
KVM_EXIT_IO = 2
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_INTR = 10
KVM_EXIT_SYSTEM_EVENT = 24

# include/uapi/linux/kvm.h: KVM_SYSTEM_EVENT_*
KVM_SYSTEM_EVENT_SHUTDOWN = 1
KVM_SYSTEM_EVENT_RESET = 2
KVM_SYSTEM_EVENT_CRASH = 3
KVM_SYSTEM_EVENT_WAKEUP = 4
KVM_SYSTEM_EVENT_SUSPEND = 5
KVM_SYSTEM_EVENT_SEV_TERM = 6

# include/uapi/linux/kvm.h: KVM_CAP_*
KVM_CAP_IRQCHIP = 0
KVM_CAP_MP_STATE = 14
KVM_CAP_SIGNAL_MSI = 77
KVM_CAP_IMMEDIATE_EXIT = 136
KVM_CAP_SYSTEM_EVENT_DATA = 215
KVM_CAP_ARM_SYSTEM_SUSPEND = 216

# PSCI (ARM DEN0022D): SYSTEM_SUSPEND's SMC64 function id, and what a model guest passes.
PSCI_0_2_FN64_SYSTEM_SUSPEND = 0xC400000E
PSCI_RET_NOT_SUPPORTED = (1 << 64) - 1  # -1 in x0
PSCI_SUSPEND_ENTRY = 0x40001000
PSCI_SUSPEND_CONTEXT = 0x5EED

EINTR, ENXIO, EAGAIN, EINVAL = 4, 6, 11, 22


def run_result(ret: int, exit_reason: int, system_event: int | None = None, port: int | None = None) -> dict:
    """What kvm_run returns: the ioctl's value and the kvm_run fields a VMM reads."""
    return {"ret": ret, "exit_reason": exit_reason, "system_event": system_event, "port": port}


class Block:
    """A step's answer that KVM_RUN has nothing to do until a signal or (``wakes``) a wake-up
    event is pending: the bundled backends sleep on it (``mp_sleep_ends`` says when to stop)."""

    __slots__ = ("label", "wakes")

    def __init__(self, label: str, wakes: bool):
        self.label, self.wakes = label, wakes

#: Guest programs (machine option ``program``). x86 backends run them as real-mode
#: code; an injected NMI makes an x86 guest do port I/O to port 0x11 (KVM_EXIT_IO).
GUEST_PROGRAMS = {
    "busy": "count in memory forever (guest_progress grows while it runs); no exit of its own",
    "hlt": "count once, then HLT (x86) / WFI (arm64, riscv), in a loop",
    "pio": "count once, then an I/O exit (x86 port 0x10, KVM_EXIT_IO; MMIO on arm64/riscv), in a loop",
    "psci_suspend": "arm64: PSCI SYSTEM_SUSPEND by HVC with entry PSCI_SUSPEND_ENTRY and context "
                    "PSCI_SUSPEND_CONTEXT in x1/x2, then busy",
    "system_off": "arm64/riscv: a guest request to shut the VM down (PSCI SYSTEM_OFF, SBI SRST "
                  "shutdown), then busy",
    "system_reset": "arm64/riscv: a guest request to reset the VM (PSCI SYSTEM_RESET, SBI SRST "
                    "reboot), then busy",
    "crash": "x86: a Hyper-V guest crash report (a write of HV_X64_MSR_CRASH_CTL with "
             "CRASH_NOTIFY), then busy",
}

#: Which system event each architecture's KVM reports for a guest program, from the code that
#: makes the exit (a program an architecture has no such source for is refused by the models):
#: arm64 arch/arm64/kvm/psci.c: kvm_psci_system_off() SHUTDOWN, kvm_psci_system_reset() RESET
#: (kvm_psci_system_reset2(): RESET with KVM_SYSTEM_EVENT_RESET_FLAG_PSCI_RESET2),
#: kvm_psci_system_suspend() SUSPEND, and never CRASH; riscv arch/riscv/kvm/vcpu_sbi_system.c /
#: vcpu_sbi_replace.c kvm_sbi_ext_srst_handler(): SHUTDOWN or RESET; x86 CRASH only from Hyper-V:
#: kvm_hv_set_msr() HV_X64_MSR_CRASH_CTL makes KVM_REQ_HV_CRASH, which vcpu_enter_guest() in
#: arch/x86/kvm/x86.c turns into KVM_SYSTEM_EVENT_CRASH.
SYSTEM_EVENT_PROGRAMS: dict[str, dict[str, int]] = {
    "arm64": {"system_off": KVM_SYSTEM_EVENT_SHUTDOWN, "system_reset": KVM_SYSTEM_EVENT_RESET},
    "riscv": {"system_off": KVM_SYSTEM_EVENT_SHUTDOWN, "system_reset": KVM_SYSTEM_EVENT_RESET},
    "x86_64": {"crash": KVM_SYSTEM_EVENT_CRASH},
}


def system_event_program_error(arch: str, program: str) -> str | None:
    """Why ``program`` cannot run on ``arch`` (a system event that architecture never makes)."""
    known = SYSTEM_EVENT_PROGRAMS.get(arch, {})
    if program in GUEST_PROGRAMS and program not in known and \
            any(program in m for m in SYSTEM_EVENT_PROGRAMS.values()):
        return (f"guest program {program!r} has no {arch} form: KVM on {arch} makes system events "
                f"only for {', '.join(sorted(known)) or 'none of them'} (see SYSTEM_EVENT_PROGRAMS)")
    if program == "psci_suspend" and arch != "arm64":
        return f"guest program 'psci_suspend' is arm64 only (PSCI), not {arch}"
    return None


def _at_least(doc_version: str, version: str) -> bool:
    from ..spec.versions import parse_version

    return parse_version(doc_version) >= parse_version(version)


def mp_states(doc_version: str) -> tuple[int, ...]:
    """Every KVM_MP_STATE_* the document text defines (AP_RESET_HOLD and SUSPENDED
    are not in the 4.13 text)."""
    return tuple(range(0, 11)) if _at_least(doc_version, "5.19") else tuple(range(0, 9))


def x86_mp_states(doc_version: str) -> tuple[int, ...]:
    """The states the text marks [x86]."""
    base = (KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED, KVM_MP_STATE_INIT_RECEIVED,
            KVM_MP_STATE_HALTED, KVM_MP_STATE_SIPI_RECEIVED)
    return base + ((KVM_MP_STATE_AP_RESET_HOLD,) if _at_least(doc_version, "5.19") else ())


def arm64_mp_states(doc_version: str) -> tuple[int, ...]:
    """The states KVM_SET_MP_STATE accepts on arm64: RUNNABLE, STOPPED (and SUSPENDED since 5.19)."""
    base = (KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_STOPPED)
    return base + ((KVM_MP_STATE_SUSPENDED,) if _at_least(doc_version, "5.19") else ())


def riscv_mp_states(doc_version: str) -> tuple[int, ...]:
    return (KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_STOPPED)


#: Documented KVM_GET_MP_STATE values per architecture, as of the current text
#: (x86 gained AP_RESET_HOLD, arm64 SUSPENDED in 5.19). Specs index it with mp_vm.arch.
DOCUMENTED_MP_STATES = {
    "x86_64": x86_mp_states("6.18"),
    "arm64": arm64_mp_states("6.18"),
    "riscv": riscv_mp_states("6.18"),
}

mp = register(Facet(
    "mp",
    "KVM_GET/SET_MP_STATE, KVM_RUN with its exits, signals and kvm_run.immediate_exit, "
    "wake-ups and system events (api.rst 4.38, 4.39, 5)",
))
mp.constants.update({name: value for value, name in MP_STATE_NAMES.items()})
mp.constants.update({
    "KVM_EXIT_UNKNOWN": KVM_EXIT_UNKNOWN, "KVM_EXIT_IO": KVM_EXIT_IO, "KVM_EXIT_HLT": KVM_EXIT_HLT,
    "KVM_EXIT_MMIO": KVM_EXIT_MMIO, "KVM_EXIT_SHUTDOWN": KVM_EXIT_SHUTDOWN,
    "KVM_EXIT_INTR": KVM_EXIT_INTR, "KVM_EXIT_SYSTEM_EVENT": KVM_EXIT_SYSTEM_EVENT,
    "KVM_SYSTEM_EVENT_SHUTDOWN": KVM_SYSTEM_EVENT_SHUTDOWN, "KVM_SYSTEM_EVENT_RESET": KVM_SYSTEM_EVENT_RESET,
    "KVM_SYSTEM_EVENT_CRASH": KVM_SYSTEM_EVENT_CRASH, "KVM_SYSTEM_EVENT_WAKEUP": KVM_SYSTEM_EVENT_WAKEUP,
    "KVM_SYSTEM_EVENT_SUSPEND": KVM_SYSTEM_EVENT_SUSPEND, "KVM_SYSTEM_EVENT_SEV_TERM": KVM_SYSTEM_EVENT_SEV_TERM,
    "KVM_CAP_IRQCHIP": KVM_CAP_IRQCHIP, "KVM_CAP_MP_STATE": KVM_CAP_MP_STATE,
    "KVM_CAP_SIGNAL_MSI": KVM_CAP_SIGNAL_MSI, "KVM_CAP_IMMEDIATE_EXIT": KVM_CAP_IMMEDIATE_EXIT,
    "KVM_CAP_SYSTEM_EVENT_DATA": KVM_CAP_SYSTEM_EVENT_DATA,
    "KVM_CAP_ARM_SYSTEM_SUSPEND": KVM_CAP_ARM_SYSTEM_SUSPEND,
    "PSCI_0_2_FN64_SYSTEM_SUSPEND": PSCI_0_2_FN64_SYSTEM_SUSPEND,
    "PSCI_SUSPEND_ENTRY": PSCI_SUSPEND_ENTRY, "PSCI_SUSPEND_CONTEXT": PSCI_SUSPEND_CONTEXT,
    "PSCI_RET_NOT_SUPPORTED": PSCI_RET_NOT_SUPPORTED,
    "EINTR": EINTR, "ENXIO": ENXIO, "EAGAIN": EAGAIN, "EINVAL": EINVAL,
    "DOCUMENTED_MP_STATES": DOCUMENTED_MP_STATES,
})
mp.named_sets.update({
    "mp_states": mp_states,
    # Every value any text defines, plus undefined ones (the next number and ~0u).
    "mp_state_values": lambda v: tuple(range(0, 12)) + (0xFFFFFFFF,),
    "x86_mp_states": x86_mp_states,
    "arm64_mp_states": arm64_mp_states,
    "riscv_mp_states": riscv_mp_states,
    "guest_programs": lambda v: ("busy", "hlt", "pio"),
    # Programs whose KVM_RUN does not return by itself once the guest runs (x86 needs an irqchip for hlt).
    "blocking_programs": lambda v: ("busy", "hlt"),
    "system_event_programs": lambda v: ("system_off", "system_reset", "crash"),
    "psci_system_event_programs": lambda v: tuple(SYSTEM_EVENT_PROGRAMS["arm64"]),
})

V = Arg("vcpu", "vcpu", doc="index of the vCPU")
mp.op("kvm_get_mp_state", [V], "int",
      "KVM_GET_MP_STATE: the vCPU's MP state, or -errno.", vcpu_thread=True)
mp.op("kvm_set_mp_state", [V, Arg("state", "int", doc="the new mp_state (any u32)")], "int",
      "KVM_SET_MP_STATE: 0, or -errno (-EINVAL for a state the architecture does not accept).",
      vcpu_thread=True)
mp.op("kvm_run", [V], "run",
      "KVM_RUN on the vCPU's thread. Returns {ret, exit_reason, system_event, port}: ret is 0 or "
      "-errno, exit_reason the kvm_run field after the call, system_event the event type for "
      "KVM_EXIT_SYSTEM_EVENT (else None), port the I/O port for KVM_EXIT_IO. The point before the "
      "ioctl is the last userspace point; in the kernel it may block for good (an idle wait).",
      vcpu_thread=True)
mp.op("kvm_get_regs", [V], "regs",
      "The vCPU's registers as a dict (arm64 models: x0, x1, x2, pc; x86: rax, rip, ...).",
      vcpu_thread=True)
mp.op("set_immediate_exit", [V, Arg("value", "int", optional=True, default=1)], "none",
      "Write kvm_run.immediate_exit of the vCPU (from any thread): KVM_RUN polls it once when it starts.")
mp.op("signal_vcpu", [V], "none",
      "Send the kick signal to the vCPU's thread (pthread_kill; a no-op handler is installed). "
      "If the thread is not inside KVM_RUN the handler runs and the signal is gone.")
mp.op("inject_wakeup", [V], "int",
      "Make a wake-up event pending for the vCPU: x86 an NMI by KVM_SIGNAL_MSI (needs the irqchip), "
      "arm64/riscv an interrupt. Returns the ioctl's result (>0 delivered, 0 blocked) or -errno "
      "(Linux: -EINVAL without an in-kernel irqchip).")
mp.op("suppress_wakeup", [V], "none",
      "Take the pending wake-up event away again (userspace masks the interrupt).")
mp.op("wait_in_kvm_run", [V, Arg("nth", "int", optional=True, default=1,
      doc="which KVM_RUN call of the vCPU, counting from 1")], "none",
      "Wait until the vCPU's nth KVM_RUN is inside the kernel with nothing more to do (the guest "
      "runs, or the vCPU halts or waits) or has returned. Orders a kicker after the vCPU's entry.")
mp.op("kvm_check_extension", [Arg("cap", "int")], "int",
      "KVM_CHECK_EXTENSION on the VM fd: 0 when the capability is not offered, >0 when it is.")
mp.op("kvm_enable_cap", [Arg("cap", "int")], "int",
      "KVM_ENABLE_CAP on the VM (no arguments): 0, or -errno (-EINVAL for an unknown capability).")

# The overridable steps of the bundled backends (a step's ``v`` is the backend's per-vCPU MP state).
# A KVM_RUN step returns (result, None) to return from KVM_RUN, (None, Block) to sleep, or
# (None, None) to decide again at once.
mp.step("initial_mp_state", ("vcpu",), "int", "kvm_arch_vcpu_create() (x86: kvm_vcpu_is_reset_bsp())",
        "The MP state a new vCPU starts in: x86 APs of a VM with the in-kernel LAPIC wait for "
        "INIT/SIPI (UNINITIALIZED), every other vCPU is RUNNABLE.")
mp.step("mp_state_valid", ("state",), "bool", "the checks of kvm_arch_vcpu_ioctl_set_mpstate()",
        "Whether KVM_SET_MP_STATE takes @state on this architecture (x86: the [x86] states need the "
        "in-kernel LAPIC).")
mp.step("store_mp_state", ("v", "state"), "none", "kvm_arch_vcpu_ioctl_set_mpstate()",
        "Store an accepted state (x86: SIPI_RECEIVED is INIT_RECEIVED plus a pending SIPI).")
mp.step("read_mp_state", ("v",), "int",
        "kvm_arch_vcpu_ioctl_get_mpstate() (x86: kvm_apic_accept_events() first)",
        "The state KVM_GET_MP_STATE reports, after processing a pending SIPI.")
mp.step("kvm_vm_ioctl_check_extension", ("cap",), "int", "kvm_vm_ioctl_check_extension()",
        "What KVM_CHECK_EXTENSION returns for @cap (KVM_ENABLE_CAP also asks it).")
mp.step("enter_kvm_run", ("v",), "(int, bool)", "kvm_vcpu_ioctl(KVM_RUN) entering kvm_arch_vcpu_ioctl_run()",
        "The thread is inside KVM_RUN and polls immediate_exit, as one step. Returns (which KVM_RUN "
        "call this is, whether immediate_exit makes it return at once).")
mp.step("kvm_run_immediate_exit", ("v",), "bool", "kvm_run->immediate_exit in kvm_arch_vcpu_ioctl_run()",
        "The one poll of immediate_exit when KVM_RUN starts.")
mp.step("signal_pending", ("v",), "bool", "signal_pending(current) in the run loop",
        "A pending signal makes KVM_RUN return -EINTR (KVM_EXIT_INTR).")
mp.step("signal_wake_up", ("v",), "none", "signal_wake_up() of the vCPU thread",
        "The kick signal stays pending only while the thread is in KVM_RUN; in userspace its "
        "handler runs at once.")
mp.step("mp_sleep_ends", ("v", "wakes"), "bool", "kvm_vcpu_check_block() (signal_pending(), "
        "kvm_arch_vcpu_runnable())", "What ends a KVM_RUN sleep: a pending signal, or a wake-up event "
        "where @wakes says one counts.")
mp.step("kvm_run_step", ("v",), "(result, Block)", "one turn of vcpu_run() / kvm_arch_vcpu_ioctl_run()",
        "One decision of the vCPU inside KVM_RUN: signal_pending first, then the architecture's step.")
mp.step("kvm_run_step_x86", ("v",), "(result, Block)", "x86 vcpu_run(), vcpu_block()",
        "INIT/SIPI waits, HALTED, NMIs taken at entry, then the guest program.")
mp.step("kvm_run_step_arm", ("v",), "(result, Block)", "arm64/riscv kvm_arch_vcpu_ioctl_run()",
        "STOPPED, SUSPENDED (WFI until a wake-up event), then the guest program.")
mp.step("guest_program", ("v",), "(result, Block)", "the guest code (not KVM)",
        "The RUNNABLE vCPU runs its guest program until its next exit or sleep.")
mp.step("kvm_emulate_halt", ("v",), "bool", "x86 kvm_emulate_halt()",
        "HLT: with the in-kernel irqchip the vCPU becomes HALTED and blocks (true); without it "
        "KVM_EXIT_HLT, the MP state left to userspace.")
mp.step("suspend_wakeup_exit", ("v",), "none", "arm64 kvm_arm_vcpu_suspend(): the WAKEUP exit",
        "A wake-up event for a SUSPENDED vCPU: exit to userspace, the vCPU stays SUSPENDED.")
mp.step("system_event_type", ("program",), "int", "the type kvm_prepare_system_event() reports",
        "The KVM_SYSTEM_EVENT_* type this architecture's KVM reports for the guest's request.")
mp.step("kvm_prepare_system_event", ("v", "event"), "none", "arm64 kvm_prepare_system_event()",
        "arm64/riscv: a SHUTDOWN or RESET request stops every vCPU; nothing is destroyed.")

mp.observables.update({
    "mp": "list of the vCPUs; mp[i] has mp_state (last value KVM_GET_MP_STATE returned or "
          "KVM_SET_MP_STATE set successfully; None before), reads (tuple of every GET result), "
          "in_run (inside KVM_RUN), entries (KVM_RUN calls started), runs (KVM_RUN calls returned), "
          "exit_reason (the kvm_run field now), immediate_exit, signals (signals sent to its thread), "
          "wakeups (wake-up events injected), guest_progress (what the guest program counted)",
    "mp_vm": "the VM: arch (x86_64, arm64, riscv), irqchip (bool), program, system_suspend "
             "(KVM_CAP_ARM_SYSTEM_SUSPEND enabled)",
})
mp.extra_capabilities.update({
    "system_events": "the backend has guest programs that make KVM_EXIT_SYSTEM_EVENT exits "
                     "(system_off, system_reset on arm64/riscv; crash on x86)",
})
