"""Can this process use /dev/kvm the way the kvm backend needs? Say why not.

Checked once per process: the host architecture, that /dev/kvm opens, the API
version, the capabilities the operations rely on, and a smoke run of the
``pio`` guest (a real KVM_RUN returning KVM_EXIT_IO). Each failure is a
sentence a test can be skipped with.
"""

from __future__ import annotations

import errno
import os
import platform
from functools import cache

from . import guest, uapi

#: Capabilities every machine needs, and those an operation or option adds.
BASE_CAPS = {uapi.KVM_CAP_USER_MEMORY: "KVM_CAP_USER_MEMORY", uapi.KVM_CAP_MP_STATE: "KVM_CAP_MP_STATE",
             uapi.KVM_CAP_IMMEDIATE_EXIT: "KVM_CAP_IMMEDIATE_EXIT",
             uapi.KVM_CAP_CHECK_EXTENSION_VM: "KVM_CAP_CHECK_EXTENSION_VM"}
_MSI = (uapi.KVM_CAP_SIGNAL_MSI, "KVM_CAP_SIGNAL_MSI")
OP_CAPS = {"inject_wakeup": _MSI, "inject_init": _MSI, "inject_sipi": _MSI}
IRQCHIP_CAP = (uapi.KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP")
STATS_CAP = (uapi.KVM_CAP_BINARY_STATS_FD, "KVM_CAP_BINARY_STATS_FD")
#: Every capability :func:`environment` asks the kernel about.
ALL_CAPS = (*BASE_CAPS, *(c for c, _ in OP_CAPS.values()), IRQCHIP_CAP[0], STATS_CAP[0])


def host_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64",
            "riscv64": "riscv"}.get(machine.lower(), machine)


@cache
def environment() -> tuple[str | None, frozenset[int]]:
    """(why the kvm backend cannot run here, or None; the capabilities the kernel offers)."""
    arch = host_arch()
    if arch != "x86_64":
        return f"the kvm backend's guest programs are x86 real-mode code; this host is {arch}", frozenset()
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return "no /dev/kvm on this machine (KVM is not available: no kvm module or not a VM host)", frozenset()
    except PermissionError:
        return "no permission to open /dev/kvm (run as a member of the kvm group)", frozenset()
    except OSError as exc:
        return f"cannot open /dev/kvm: {exc.strerror}", frozenset()
    try:
        try:
            version = uapi.ioctl(fd, uapi.KVM_GET_API_VERSION, 0, "KVM_GET_API_VERSION")
        except uapi.KvmError as exc:
            return f"/dev/kvm does not answer KVM_GET_API_VERSION ({exc.strerror})", frozenset()
        if version != uapi.KVM_API_VERSION:
            return f"/dev/kvm speaks KVM API version {version}, not {uapi.KVM_API_VERSION}", frozenset()
        caps = set()
        for cap in ALL_CAPS:
            try:
                if uapi.ioctl(fd, uapi.KVM_CHECK_EXTENSION, cap, "KVM_CHECK_EXTENSION") > 0:
                    caps.add(cap)
            except uapi.KvmError:
                pass
    finally:
        os.close(fd)
    missing = [name for cap, name in BASE_CAPS.items() if cap not in caps]
    if missing:
        return f"the kernel lacks {', '.join(missing)}", frozenset(caps)
    why = smoke_run()
    return why, frozenset(caps)


def smoke_run() -> str | None:
    """Run the pio guest once on a throwaway VM; None if it exits as it should."""
    from .vm import Vm

    try:
        vm = Vm(1, False, "pio", lambda: None)
    except ValueError as exc:  # signal handlers can only be installed from the main thread
        return f"cannot set up a VM here: {exc}"
    except OSError as exc:
        return f"cannot create a VM with one vCPU: {exc.strerror or exc}"
    try:
        ticket = vm.vcpus[0].start_run()
        if not ticket.done.wait(2.0):
            return "KVM_RUN of a real-mode guest did not return within 2 s"
        r = ticket.result
        if r is None or r.ret != 0 or r.exit_reason != uapi.KVM_EXIT_IO or r.port != guest.PIO_PORT:
            err = f"-{errno.errorcode.get(-r.ret, -r.ret)}" if r and r.ret < 0 else (r.ret if r else None)
            return (f"KVM_RUN of a real-mode guest does not work here (returned {err}, "
                    f"exit_reason {r.exit_reason if r else None}; expected KVM_EXIT_IO on port {guest.PIO_PORT:#x})")
        return None
    finally:
        vm.close()
