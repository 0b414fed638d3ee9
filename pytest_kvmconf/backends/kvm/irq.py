"""The irq facet on a real VM: injecting interrupts, NMIs, INIT and SIPI from userspace.

Every injection is made from the calling spec thread (KVM_INTERRUPT: from the
vCPU's own thread, as the ioctl requires), the way a VMM's device thread would.
When the vCPU is inside KVM_RUN the operation then waits, on the kernel's
evidence, until KVM_RUN returned or the kernel shows that this injection cannot
end it (:meth:`~.machine.KvmCore.await_kick`), so checks judge a settled state.

Observers: the guest's handlers count what they took (:func:`.guest.taken`),
KVM's ``halt_wakeup`` statistic counts the times a waker took the vCPU thread off
its wait queue (:mod:`.stats`), and with ``needs = ["tracepoints"]`` the
``kvm_vcpu_wakeup`` tracepoints of the vCPU thread are recorded through a private
tracefs instance (:mod:`.tracefs`).
"""

from __future__ import annotations

from typing import Any

from ...backend import MachineConfig
from ...scheduling import Point
from . import guest, tracefs, uapi
from .core import KvmCore, Steps

#: The tracepoints the irq observables read.
TRACE_EVENTS = ("kvm/kvm_vcpu_wakeup",)

# x86 MSI data: delivery mode << 8 | vector (arch/x86/include/asm/apicdef.h APIC_DM_*).
DELIVERY = {"fixed": 0, "nmi": 4, "init": 5, "startup": 6}


class IrqOps(KvmCore):
    """Interrupt injection (facet ``irq``)."""

    def __init__(self, config: MachineConfig, execution: str = "threads"):
        super().__init__(config, execution)
        n = config.vcpus
        self.injected = [0] * n
        self.inits = [0] * n
        self.sipis = [0] * n
        self._halt_wakeups = [v.stat("halt_wakeup") for v in self.vm.vcpus]
        self.trace: tracefs.Subscription | None = None
        if "tracepoints" in config.needs:
            self.trace = tracefs.session().subscribe(TRACE_EVENTS)

    def _observe(self, out: dict[str, Any]) -> None:
        super()._observe(out)
        needs = self.config.needs
        if needs and "irq" not in needs:
            return
        if self.trace is not None:
            self.trace.poll()
        vcpus = []
        for i, v in enumerate(self.vm.vcpus):
            taken, nmis = guest.taken(self.vm.ram, i)
            now, then = v.stat("halt_wakeup"), self._halt_wakeups[i]
            traced = None
            if self.trace is not None:
                traced = sum(1 for e in self.trace.of(v.tid, "kvm_vcpu_wakeup") if e.body.startswith("wait"))
            vcpus.append({"id": i, "taken": taken, "nmis": nmis, "injected": self.injected[i],
                          "inits": self.inits[i], "sipis": self.sipis[i],
                          "halt_wakeups": None if now is None or then is None else now - then,
                          "traced_wakeups": traced})
        out["irq"] = vcpus

    def _release(self) -> None:
        trace = getattr(self, "trace", None)  # None too if the VM could not be made
        if trace is not None:
            trace.close()
            self.trace = None
        super()._release()

    # -- how an interrupt is made pending -----------------------------------------------
    def msi(self, vcpu: int, delivery: str, vector: int = 0) -> int:
        """KVM_SIGNAL_MSI to vCPU ``vcpu``'s APIC id (= its index): >0 delivered, 0 not, or -errno."""
        msi = uapi.kvm_msi(address_lo=uapi.X86_MSI_BASE | (vcpu << uapi.X86_MSI_DEST_SHIFT),
                           data=DELIVERY[delivery] << 8 | vector)
        return self.vm.ioctl(uapi.KVM_SIGNAL_MSI, msi, "KVM_SIGNAL_MSI")

    def irq_line(self, irq: int) -> int:
        """A pulse on GSI ``irq`` (KVM_IRQ_LINE level 1, then 0): 0, or -errno."""
        ret = self.vm.ioctl(uapi.KVM_IRQ_LINE, uapi.kvm_irq_level(irq=irq, level=1), "KVM_IRQ_LINE")
        if ret < 0:
            return ret
        return self.vm.ioctl(uapi.KVM_IRQ_LINE, uapi.kvm_irq_level(irq=irq, level=0), "KVM_IRQ_LINE")

    def inject(self, vcpu: int, via: str) -> int:
        if via == "msi":
            return self.msi(vcpu, "fixed", guest.IRQ_VECTOR)
        if via == "nmi":
            return self.msi(vcpu, "nmi")
        if via == "irq_line":
            return self.irq_line(0)
        if via == "kvm_interrupt":
            return self.vm.vcpus[vcpu].ioctl(uapi.KVM_INTERRUPT, uapi.kvm_interrupt(irq=guest.IRQ_VECTOR),
                                              "KVM_INTERRUPT")
        raise ValueError(f"inject_irq: no way {via!r} to inject (ways: msi, nmi, irq_line, kvm_interrupt)")

    # -- operations ---------------------------------------------------------------------
    def op_inject_irq(self, vcpu: int, via: str) -> Steps:
        v = self.vm.vcpus[vcpu]
        self.injected[vcpu] += 1
        inside, runs = v.in_run, v.runs
        ret = self.inject(vcpu, via)
        if inside and ret >= 0:
            self.await_kick(v, runs, signal=False)
        yield Point(f"{via} injection for vcpu{vcpu} = {ret}")
        return ret

    def op_inject_init(self, vcpu: int) -> Steps:
        v = self.vm.vcpus[vcpu]
        self.inits[vcpu] += 1
        inside, runs = v.in_run, v.runs
        ret = self.msi(vcpu, "init")
        if inside and ret > 0:
            self.await_kick(v, runs, signal=False)
        yield Point(f"KVM_SIGNAL_MSI(INIT to vcpu{vcpu}) = {ret}")
        return ret

    def op_inject_sipi(self, vcpu: int) -> Steps:
        v = self.vm.vcpus[vcpu]
        self.sipis[vcpu] += 1
        inside, runs = v.in_run, v.runs
        ret = self.msi(vcpu, "startup", guest.sipi_vector(vcpu))
        if inside and ret > 0:
            self.await_kick(v, runs, signal=False)
        yield Point(f"KVM_SIGNAL_MSI(SIPI to vcpu{vcpu}) = {ret}")
        return ret

