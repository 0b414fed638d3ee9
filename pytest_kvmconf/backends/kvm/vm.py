"""A real VM on /dev/kvm with one OS thread per vCPU.

Each vCPU has its own *vCPU thread* (as in a VMM): it creates the vCPU, issues
every vCPU ioctl, and is the thread a kick signal is sent to. Other threads hand
it jobs and wait for their results; KVM_RUN is a job whose completion they can
poll (:class:`RunTicket`) since it may block in the kernel for good.

Everything acquired here (fds, mappings, threads, the signal handler) is given
back by :meth:`Vm.close`, which first kicks a vCPU thread out of KVM_RUN.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import guest, uapi
from .stats import BinaryStats

#: The kick signal: a real-time signal with a no-op handler (Firecracker uses SIGRTMIN,
#: QEMU SIG_IPI); a handler, not SIG_IGN, so that it is pending and interrupts KVM_RUN.
KICK_SIGNAL = signal.SIGRTMIN + 2
#: How long a quick vCPU ioctl may take before the vCPU thread counts as stuck.
JOB_TIMEOUT = 5.0
#: How long close() keeps kicking a vCPU thread out of KVM_RUN.
STOP_TIMEOUT = 3.0


class KickHandler:
    """The kick signal's no-op handler, installed while any VM is open (reference counted).

    Python only lets the main thread install handlers; the backend's skip_reason
    says so before a machine is made elsewhere.
    """

    _lock = threading.Lock()
    _users = 0
    _previous: Any = None

    @classmethod
    def acquire(cls) -> None:
        with cls._lock:
            if cls._users == 0:
                cls._previous = signal.signal(KICK_SIGNAL, _no_op)
            cls._users += 1

    @classmethod
    def release(cls) -> None:
        with cls._lock:
            cls._users -= 1
            if cls._users == 0:
                signal.signal(KICK_SIGNAL, cls._previous if cls._previous is not None else signal.SIG_DFL)
                cls._previous = None


def _no_op(signum: int, frame: Any) -> None:
    """The kick's only job is to be pending while the vCPU thread is in KVM_RUN."""


@dataclass
class RunResult:
    ret: int
    exit_reason: int
    system_event: int | None
    port: int | None


@dataclass
class RunTicket:
    """One KVM_RUN handed to a vCPU thread."""

    nth: int
    done: threading.Event = field(default_factory=threading.Event)
    result: RunResult | None = None


def _errno_of(call: Callable[[], int]) -> int:
    try:
        return call()
    except uapi.KvmError as exc:
        return -(exc.errno or 1)


class Vcpu:
    """One vCPU and its thread. Public methods are called from other threads."""

    def __init__(self, vm: Vm, index: int, on_return: Callable[[], None]):
        self.vm, self.index = vm, index
        self.on_return = on_return
        self.fd = -1
        self.run_addr = 0
        self.run: uapi.kvm_run | None = None
        self.entries = 0  # KVM_RUN calls started by the thread
        self.runs = 0  # KVM_RUN calls returned
        self.in_run = False
        self.tid = 0  # the vCPU thread's kernel thread id (for /proc and tracepoints)
        self.stats: BinaryStats | None = None  # the vCPU's binary statistics, if the kernel has them
        self._jobs: queue.SimpleQueue[Callable[[], Any] | None] = queue.SimpleQueue()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name=f"kvmconf-kvm-vcpu{index}", daemon=True)
        self.thread.start()
        if not self._ready.wait(JOB_TIMEOUT):
            raise RuntimeError(f"vcpu{index}: its thread did not start")
        if self._error is not None:
            self.stop()
            raise self._error

    # -- the vCPU thread ----------------------------------------------------------
    def _loop(self) -> None:
        self.tid = threading.get_native_id()
        try:
            self._create()
        except BaseException as exc:  # reported to the creator
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        while True:
            job = self._jobs.get()
            if job is None:
                return
            job()

    def _create(self) -> None:
        vm = self.vm
        self.fd = uapi.ioctl(vm.fd, uapi.KVM_CREATE_VCPU, self.index, "KVM_CREATE_VCPU")
        self.run_addr = uapi.map_memory(vm.run_size, self.fd)
        self.run = uapi.kvm_run.from_address(self.run_addr)
        sregs = uapi.kvm_sregs()
        uapi.ioctl(self.fd, uapi.KVM_GET_SREGS, sregs, "KVM_GET_SREGS")
        for seg in (sregs.cs, sregs.es, sregs.ss):
            seg.base, seg.selector = 0, 0
        sregs.ds.selector = guest.data_segment(self.index)
        sregs.ds.base = 16 * sregs.ds.selector  # real mode: base = selector * 16
        # "Unreal mode": FS keeps a flat 4 GiB limit, so the interrupt handler reaches the LAPIC's
        # EOI register at 0xFEE000B0 with a 32-bit address (guest.IRQ_CODE).
        sregs.fs.base, sregs.fs.selector, sregs.fs.limit, sregs.fs.g = 0, 0, 0xFFFFFFFF, 1
        uapi.ioctl(self.fd, uapi.KVM_SET_SREGS, sregs, "KVM_SET_SREGS")
        regs = uapi.kvm_regs(rip=guest.CODE, rsp=guest.STACK_TOP, rflags=2)
        uapi.ioctl(self.fd, uapi.KVM_SET_REGS, regs, "KVM_SET_REGS")
        self._open_stats()
        if vm.irqchip:
            # Software-enable the in-kernel LAPIC: a disabled one accepts no MSI, NMIs included.
            lapic = uapi.kvm_lapic_state()
            uapi.ioctl(self.fd, uapi.KVM_GET_LAPIC, lapic, "KVM_GET_LAPIC")
            lapic.regs[uapi.APIC_SPIV + 1] |= uapi.APIC_SPIV_APIC_ENABLED >> 8
            uapi.ioctl(self.fd, uapi.KVM_SET_LAPIC, lapic, "KVM_SET_LAPIC")

    def _open_stats(self) -> None:
        """The vCPU's binary statistics; "blocking" is 1 while it sleeps in kvm_vcpu_block
        (halted, or waiting for INIT/SIPI)."""
        self.stats = BinaryStats.of(self.fd)

    @property
    def stats_fd(self) -> int:
        return self.stats.fd if self.stats is not None else -1

    def stat(self, name: str) -> int | None:
        return self.stats.read(name) if self.stats is not None else None

    def blocking(self) -> bool | None:
        """Is the vCPU asleep in the kernel (KVM's "blocking" statistic)? None if unknown."""
        value = self.stat("blocking")
        return None if value is None else value != 0

    def _run(self, ticket: RunTicket) -> None:
        run = self.run
        assert run is not None
        self.entries += 1
        self.in_run = True
        ret = _errno_of(lambda: uapi.ioctl(self.fd, uapi.KVM_RUN, 0, "KVM_RUN"))
        reason = run.exit_reason
        event = run.exit.system_event.type if ret == 0 and reason == uapi.KVM_EXIT_SYSTEM_EVENT else None
        port = run.exit.io.port if ret == 0 and reason == uapi.KVM_EXIT_IO else None
        ticket.result = RunResult(ret, reason, event, port)
        self.runs += 1
        ticket.done.set()
        # Last: whoever sees in_run False also sees the result (a kicker's wait ends on either).
        self.in_run = False
        self.on_return()

    # -- other threads ----------------------------------------------------------
    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the vCPU thread and return its result."""
        box: list[Any] = []
        done = threading.Event()

        def job() -> None:
            try:
                box.append(("ok", fn()))
            except BaseException as exc:
                box.append(("err", exc))
            done.set()

        self._jobs.put(job)
        if not done.wait(JOB_TIMEOUT):
            raise RuntimeError(f"vcpu{self.index}: its thread did not answer within {JOB_TIMEOUT} s "
                               "(still inside KVM_RUN?)")
        kind, value = box[0]
        if kind == "err":
            raise value
        return value

    def ioctl(self, request: int, arg: Any, name: str) -> int:
        """A vCPU ioctl on the vCPU thread: its return value, or -errno."""
        return self.call(lambda: _errno_of(lambda: uapi.ioctl(self.fd, request, arg, name)))

    def start_run(self) -> RunTicket:
        ticket = RunTicket(self.entries + 1)
        self._jobs.put(lambda: self._run(ticket))
        return ticket

    def kick(self) -> None:
        """Send the kick signal to the vCPU thread."""
        ident = self.thread.ident
        if ident is not None and self.thread.is_alive():
            signal.pthread_kill(ident, KICK_SIGNAL)

    def stop(self) -> None:
        """Bring the thread out of KVM_RUN and end it: immediate_exit, then the kick signal,
        then wait for the thread's end (a kick made this way is never lost, MP-04)."""
        if self.thread.is_alive():
            if self.run is not None:
                self.run.immediate_exit = 1
            self._jobs.put(None)
            deadline = time.monotonic() + STOP_TIMEOUT
            while self.thread.is_alive() and time.monotonic() < deadline:
                if self.in_run:
                    self.kick()
                # Returns as soon as the thread ends; the kick is repeated only if KVM_RUN
                # was entered between the check and the signal and kept running.
                self.thread.join(0.05)
        if self.run_addr:
            self.run = None
            uapi.unmap_memory(self.run_addr, self.vm.run_size)
            self.run_addr = 0
        if self.stats is not None:
            self.stats.close()
            self.stats = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Vm:
    """/dev/kvm, one VM with 64 KiB of RAM holding a guest program, and its vCPUs."""

    def __init__(self, nr_vcpus: int, irqchip: bool, program: str, on_return: Callable[[], None],
                 before_vcpus: Callable[[Vm], None] | None = None):
        self.irqchip = irqchip
        self.kvm_fd = self.fd = -1
        self.ram = 0
        self.vcpus: list[Vcpu] = []
        self.run_size = 0
        self.stats: BinaryStats | None = None  # the VM's binary statistics, if the kernel has them
        KickHandler.acquire()
        try:
            self.kvm_fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
            self.run_size = uapi.ioctl(self.kvm_fd, uapi.KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE")
            self.fd = uapi.ioctl(self.kvm_fd, uapi.KVM_CREATE_VM, 0, "KVM_CREATE_VM")
            self.stats = BinaryStats.of(self.fd)
            if irqchip:
                uapi.ioctl(self.fd, uapi.KVM_CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP")
            self.ram = uapi.map_memory(guest.RAM_SIZE)
            guest.load(self.ram, program, irqchip)
            region = uapi.kvm_userspace_memory_region(slot=0, flags=0, guest_phys_addr=0,
                                                      memory_size=guest.RAM_SIZE, userspace_addr=self.ram)
            uapi.ioctl(self.fd, uapi.KVM_SET_USER_MEMORY_REGION, region, "KVM_SET_USER_MEMORY_REGION")
            if before_vcpus is not None:  # VM-wide set-up that must precede KVM_CREATE_VCPU (the dirty ring)
                before_vcpus(self)
            for i in range(nr_vcpus):
                self.vcpus.append(Vcpu(self, i, on_return))
        except BaseException:
            self.close()
            raise

    def ioctl(self, request: int, arg: Any, name: str) -> int:
        """A VM ioctl (from any thread): its return value, or -errno."""
        return _errno_of(lambda: uapi.ioctl(self.fd, request, arg, name))

    def progress(self, vcpu: int) -> int:
        return guest.progress(self.ram, vcpu) if self.ram else 0

    def close(self) -> None:
        """Release everything; safe to call twice and after a failed __init__."""
        errors: list[BaseException] = []
        for v in self.vcpus:
            try:
                v.stop()
            except BaseException as exc:
                errors.append(exc)
        self.vcpus = []
        if self.stats is not None:
            self.stats.close()
            self.stats = None
        for attr in ("fd", "kvm_fd"):
            fd = getattr(self, attr)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)
        if self.ram:
            uapi.unmap_memory(self.ram, guest.RAM_SIZE)
            self.ram = 0
        if self.run_size >= 0:
            self.run_size = -1
            KickHandler.release()
        if errors:
            raise errors[0]
