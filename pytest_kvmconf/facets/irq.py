"""Interrupt injection from userspace, and what a live kernel shows of it.

The operations are a VMM's ways of making an interrupt pending for a vCPU
(api.rst: KVM_SIGNAL_MSI, KVM_IRQ_LINE, KVM_INTERRUPT, INIT and SIPI as MSI
delivery modes). Each specs' sentence is one of vcpu-requests.rst's: an
injection is a request (KVM_REQ_EVENT) plus a kick of the vCPU, so a live kernel
shows the kick's promised effect (a forced exit, a wake-up) through the guest
taking the interrupt and through KVM's own counters.

Only the ``kvm`` backend implements this facet; the models do not model guest
interrupt delivery, so these specs are skipped there with that reason.

Extra capabilities a spec may ask for (``needs``): ``tracepoints`` (kernel
tracepoints through tracefs) and ``binary_stats`` (KVM_GET_STATS_FD); the kvm
backend skips a spec whose channel is missing on the running host.
"""

from __future__ import annotations

from . import Arg, Facet, register

#: Ways to inject (argument ``via`` of ``inject_irq``).
VIAS = {
    "msi": "KVM_SIGNAL_MSI, fixed delivery of vector 0x20 to the vCPU's APIC id (needs an irqchip)",
    "nmi": "KVM_SIGNAL_MSI, NMI delivery to the vCPU's APIC id (needs an irqchip)",
    "irq_line": "KVM_IRQ_LINE: a pulse on GSI 0, through the in-kernel PIC to vCPU 0 (needs an irqchip)",
    "kvm_interrupt": "KVM_INTERRUPT of vector 0x20 from the vCPU's thread (only without an irqchip)",
}
#: The guest reports a taken interrupt as KVM_EXIT_IO on these ports.
IRQ_PORT = 0x12
NMI_PORT = 0x11

irq = register(Facet(
    "irq",
    "interrupt injection from userspace (KVM_SIGNAL_MSI, KVM_IRQ_LINE, KVM_INTERRUPT, INIT/SIPI) and "
    "the guest's handlers; kernel counters and tracepoints as observers",
))
irq.constants.update({"IRQ_PORT": IRQ_PORT, "NMI_PORT": NMI_PORT})
irq.named_sets.update({
    "irqchip_vias": lambda v: ("msi", "nmi", "irq_line"),
    "msi_vias": lambda v: ("msi", "nmi"),
})
irq.extra_capabilities.update({
    "tracepoints": "the backend observes kernel tracepoints (tracefs): irq[i].traced_wakeups",
    "binary_stats": "the backend reads KVM's binary statistics (KVM_GET_STATS_FD): irq[i].halt_wakeups",
})

V = Arg("vcpu", "vcpu", doc="index of the vCPU")
irq.op("inject_irq", [V, Arg("via", "any", doc=f"an expression naming one of {', '.join(VIAS)}")], "int",
       "Make an interrupt pending for the vCPU the way ``via`` says, from the calling thread "
       "(KVM_INTERRUPT: from the vCPU's thread). Returns the ioctl's result (KVM_SIGNAL_MSI: >0 "
       "delivered, 0 coalesced/blocked) or -errno. If the vCPU is inside KVM_RUN, the operation "
       "returns once KVM_RUN has returned or the kernel shows this injection cannot end it.")
irq.op("inject_init", [V], "int", "KVM_SIGNAL_MSI with INIT delivery to the vCPU (needs an irqchip).")
irq.op("inject_sipi", [V], "int",
       "KVM_SIGNAL_MSI with STARTUP (SIPI) delivery to the vCPU, whose vector starts it in the guest's "
       "AP trampoline (needs an irqchip).")

irq.observables.update({
    "irq": "list of the vCPUs; irq[i] has taken (external interrupts the guest's handler counted), "
           "nmis (NMIs the guest counted), injected (injections made for it), inits, sipis, "
           "halt_wakeups (KVM's halt_wakeup statistic since the machine began: times a waker took the "
           "vCPU thread off its wait queue; None without binary stats), traced_wakeups "
           "(kvm_vcpu_wakeup tracepoints of the vCPU thread after a real wait; None without tracing)",
})
