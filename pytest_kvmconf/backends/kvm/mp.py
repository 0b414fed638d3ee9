"""The mp facet on a real VM: MP states, KVM_RUN, its interruption (signal, immediate_exit)
and NMI wake-ups (KVM_SIGNAL_MSI)."""

from __future__ import annotations

from typing import Any

from ...backend import MachineConfig
from ...facets.mp import MP_STATE_NAMES
from ...scheduling import Point, Wait
from . import uapi
from .core import KvmCore, Steps


class MpOps(KvmCore):
    """The mp facet: MP states, KVM_RUN, its interruption (signal, immediate_exit), NMIs."""

    def __init__(self, config: MachineConfig, execution: str = "threads"):
        super().__init__(config, execution)
        n = config.vcpus
        self.seen: list[int | None] = [None] * n
        self.reads: list[list[int]] = [[] for _ in range(n)]
        self.settled = [0] * n
        self.signals = [0] * n
        self.wakeups = [0] * n
        self.suspend_enabled = False

    def _observe(self, out: dict[str, Any]) -> None:
        super()._observe(out)
        vcpus = []
        for i, v in enumerate(self.vm.vcpus):
            run = v.run
            vcpus.append({
                "id": i, "mp_state": self.seen[i], "reads": tuple(self.reads[i]), "in_run": v.in_run,
                "entries": v.entries, "runs": v.runs,
                "exit_reason": run.exit_reason if run is not None else None,
                "immediate_exit": run.immediate_exit if run is not None else None,
                "signals": self.signals[i], "wakeups": self.wakeups[i],
                "guest_progress": self.vm.progress(i),
            })
        out["mp"] = vcpus
        out["mp_vm"] = {"arch": "x86_64", "irqchip": self.irqchip, "program": self.program,
                        "system_suspend": self.suspend_enabled}

    # -- operations ---------------------------------------------------------------
    def op_kvm_get_mp_state(self, vcpu: int) -> Steps:
        mp = uapi.kvm_mp_state()
        ret = self.vm.vcpus[vcpu].ioctl(uapi.KVM_GET_MP_STATE, mp, "KVM_GET_MP_STATE")
        value = mp.mp_state if ret == 0 else ret
        if ret == 0:
            self.seen[vcpu] = value
            self.reads[vcpu].append(value)
        yield Point(f"KVM_GET_MP_STATE = {MP_STATE_NAMES.get(value, value)}")
        return value

    def op_kvm_set_mp_state(self, vcpu: int, state: int) -> Steps:
        arg = uapi.kvm_mp_state(state & 0xFFFFFFFF)
        ret = self.vm.vcpus[vcpu].ioctl(uapi.KVM_SET_MP_STATE, arg, "KVM_SET_MP_STATE")
        if ret == 0:
            self.seen[vcpu] = state
        yield Point(f"KVM_SET_MP_STATE({MP_STATE_NAMES.get(state, state)}) = {ret}")
        return ret

    def op_kvm_get_regs(self, vcpu: int) -> Steps:
        regs = uapi.kvm_regs()
        ret = self.vm.vcpus[vcpu].ioctl(uapi.KVM_GET_REGS, regs, "KVM_GET_REGS")
        yield Point("KVM_GET_REGS")
        if ret != 0:
            return {"error": ret}
        return {name: getattr(regs, name) for name, _ in uapi.kvm_regs._fields_}

    def op_set_immediate_exit(self, vcpu: int, value: int = 1) -> Steps:
        run = self.vm.vcpus[vcpu].run
        assert run is not None
        run.immediate_exit = value
        yield Point(f"vcpu{vcpu} kvm_run->immediate_exit = {value}")

    def op_signal_vcpu(self, vcpu: int) -> Steps:
        v = self.vm.vcpus[vcpu]
        self.signals[vcpu] += 1
        inside, runs = v.in_run, v.runs
        v.kick()
        if inside:
            self.await_kick(v, runs, signal=True)
        yield Point(f"pthread_kill(vcpu{vcpu} thread, SIGRTMIN+2)"
                    + ("" if inside else ": not in KVM_RUN, the handler runs"))

    def op_inject_wakeup(self, vcpu: int) -> Steps:
        v = self.vm.vcpus[vcpu]
        self.wakeups[vcpu] += 1
        msi = uapi.kvm_msi(address_lo=uapi.X86_MSI_BASE | (vcpu << uapi.X86_MSI_DEST_SHIFT),
                           data=uapi.X86_DELIVERY_NMI)
        inside, runs = v.in_run, v.runs
        ret = self.vm.ioctl(uapi.KVM_SIGNAL_MSI, msi, "KVM_SIGNAL_MSI")
        if inside and ret > 0:
            self.await_kick(v, runs, signal=False)
        yield Point(f"KVM_SIGNAL_MSI(NMI to vcpu{vcpu}) = {ret}")
        return ret

    def op_suppress_wakeup(self, vcpu: int) -> Steps:
        raise NotImplementedError("suppress_wakeup: an NMI cannot be masked by userspace "
                                  "(the x86 guests of the kvm backend take wake-ups as NMIs)")
        yield Point("unreachable")  # pragma: no cover

    def op_wait_in_kvm_run(self, vcpu: int, nth: int = 1) -> Steps:
        yield Wait(f"wait until vcpu{vcpu} is in its KVM_RUN #{nth}", lambda: self.settled[vcpu] >= nth)

    def op_kvm_check_extension(self, cap: int) -> Steps:
        ret = self.vm.ioctl(uapi.KVM_CHECK_EXTENSION, cap, "KVM_CHECK_EXTENSION")
        yield Point(f"KVM_CHECK_EXTENSION({cap}) = {ret}")
        return ret

    def op_kvm_enable_cap(self, cap: int) -> Steps:
        ret = self.vm.ioctl(uapi.KVM_ENABLE_CAP, uapi.kvm_enable_cap(cap=cap), "KVM_ENABLE_CAP")
        if ret == 0 and cap == uapi.KVM_CAP_ARM_SYSTEM_SUSPEND:
            self.suspend_enabled = True
        yield Point(f"KVM_ENABLE_CAP({cap}) = {ret}")
        return ret

    def op_kvm_run(self, vcpu: int) -> Steps:
        v = self.vm.vcpus[vcpu]
        before = self.vm.progress(vcpu)
        ticket = v.start_run()
        # The vCPU thread is entering KVM_RUN now: other threads may act while it enters the
        # kernel and the guest (a kick or an injection racing the entry).
        yield Point(f"vcpu{vcpu} thread enters KVM_RUN #{ticket.nth}")
        self.settle(v, ticket, before)
        self.settled[vcpu] += 1
        self._notify()
        if not ticket.done.is_set():
            yield Wait(f"in KVM_RUN #{ticket.nth} (the guest runs or the vCPU waits)",
                       ticket.done.is_set, idle=True)
        r = ticket.result
        assert r is not None
        shown = "-EINTR" if r.ret == -4 else r.ret
        yield Point(f"KVM_RUN #{ticket.nth} returns {shown}, exit_reason {r.exit_reason}")
        return {"ret": r.ret, "exit_reason": r.exit_reason, "system_event": r.system_event, "port": r.port}
