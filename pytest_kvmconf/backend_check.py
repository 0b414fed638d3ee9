"""Check a backend when it is chosen, as pluggy checks a hook implementation when it registers.

Only what can be seen without building a machine (which may open /dev/kvm): a backend that names
its ``machine_class`` (as the facet-composed backends do) gets

* an error for each operation its capabilities need that the class lacks, or whose method does
  not take the operation's declared arguments (the engine passes all of them), after ``ctx``
  where the machine dispatches with the composed machines' ``run_op``;
* an error for each override, in a class outside pytest-kvmconf, of a step of the facets'
  vocabulary (:attr:`pytest_kvmconf.facets.Facet.steps`) that does not take the step's declared
  parameters, or that is a generator where the bundled backend's step returns at once;
* a warning, with a "did you mean", for each public method a class outside pytest-kvmconf defines
  that overrides nothing: no operation, no step, no machine hook, no method of the classes it
  builds on; and for a method named as a bundled backend's helper was before the steps became one
  vocabulary (``_set_request_bit``, ...), which the backends no longer call.
  A misspelt override in a broken variant otherwise silently changes nothing.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any

import pytest

from . import facets
from .backends.compose import FacetMachine

MACHINE_METHODS = frozenset({"run_op", "observe", "close"})

#: Helpers of the bundled backends renamed when each facet's steps became one vocabulary: a
#: variant written against the old names overrides nothing now.
FORMER_NAMES = {
    "_set_request_bit": "set_request_bit", "_check_request": "check_request_bit",
    "_needs_ipi": "kvm_request_needs_ipi", "_exiting_guest_mode": "kvm_vcpu_exiting_guest_mode",
    "_wake_up": "kvm_vcpu_wake_up", "_send_ipi": "send_ipi", "_take_ipis": "local_irq_enable",
    "_wait_for_acks": "csd_lock_wait", "wait_for_acks": "csd_lock_wait", "wakes_for": "request_no_wakeup",
    "_check_block": "kvm_vcpu_check_block", "check_then_sleep": "set_current_state",
    "_handle_requests": "check_vcpu_requests", "handle_requests": "check_vcpu_requests",
    "_enter_guest": "vcpu_enter_guest", "enter_guest": "vcpu_enter_guest",
    "_after_in_guest_mode": "smp_mb__after_srcu_read_unlock", "last_request_check": "kvm_vcpu_exit_request",
    "_guest_entry": "guest_enter", "run_guest": "guest_enter", "_guest_exit": "guest_exit",
    "_sync_pir_to_irr": "vmx_sync_pir_to_irr", "sync_pir_to_irr": "vmx_sync_pir_to_irr",
    "_pi_set_pir_and_on": "pi_test_and_set_pir_and_on", "_pi_notify": "kvm_vcpu_trigger_posted_interrupt",
    "_send_pi_notification": "send_pi_notification",
    # mp
    "_mp_initial_state": "initial_mp_state", "_mp_accepts": "mp_state_valid", "_mp_store": "store_mp_state",
    "_mp_read": "read_mp_state", "_mp_capability": "kvm_vm_ioctl_check_extension", "_mp_enter": "enter_kvm_run",
    "_mp_takes_immediate_exit": "kvm_run_immediate_exit", "_mp_signal_interrupts": "signal_pending",
    "_mp_on_signal": "signal_wake_up", "_mp_wakes": "mp_sleep_ends", "_mp_step": "kvm_run_step",
    "_mp_step_x86": "kvm_run_step_x86", "_mp_step_arm": "kvm_run_step_arm", "_mp_program": "guest_program",
    "_mp_guest": "guest_program", "_mp_x86_halt": "kvm_emulate_halt", "_mp_wakeup": "suspend_wakeup_exit",
    "_mp_event_type": "system_event_type", "_mp_system_event": "kvm_prepare_system_event",
    # spte
    "_sp_gfn": "sp_gfn", "_new_spte": "make_spte", "_is_dirty": "is_dirty_spte", "spte_dirty": "is_dirty_spte",
    "_is_accessed": "is_accessed_spte", "spte_accessed": "is_accessed_spte",
    "_spte_has_volatile_bits": "spte_has_volatile_bits", "_allows": "is_access_allowed",
    "access_allowed": "is_access_allowed", "_fast_path_allowed": "fast_path_allowed",
    "_fast_fix": "fast_pf_new_spte", "_restore_acc_track": "restore_acc_track_spte",
    "_pin": "gfn_to_pfn_memslot_atomic", "pin_gfn": "gfn_to_pfn_memslot_atomic", "_unpin": "kvm_release_pfn_clean",
    "unpin": "kvm_release_pfn_clean", "_fast_cmpxchg": "fast_pf_fix_direct_spte",
    "fast_pf_commit": "fast_pf_fix_direct_spte", "_mark_page_dirty": "mark_page_dirty",
    "_spte_write_protect": "spte_write_protect", "_mmu_spte_update": "mmu_spte_update",
    "_wrprot_needs_flush": "wrprot_needs_flush", "_mmu_spte_clear_track_bits": "mmu_spte_clear_track_bits",
    "clear_track_bits": "mmu_spte_clear_track_bits", "_propagate_ad": "set_pfn_accessed_dirty",
    "_mark_spte_for_access_track": "mmu_spte_age", "mark_for_access_track": "mmu_spte_age",
    "_access_track": "mark_spte_for_access_track",
    # attr
    "_pmu_set": "kvm_arm_pmu_v3_set_attr", "arm_pmu_set_attr": "kvm_arm_pmu_v3_set_attr",
    "_valid_pmu_irq": "valid_pmu_irq", "_pmu_irq_consistent": "pmu_irq_is_valid", "_pmu_init": "kvm_arm_pmu_v3_init",
    "_pmu_get": "kvm_arm_pmu_v3_get_attr", "_timer_set": "kvm_arm_timer_set_attr",
    "arm_timer_set_attr": "kvm_arm_timer_set_attr", "_timer_irqs_immutable": "timer_ppis_immutable",
    "_valid_timer_irq": "valid_timer_irq", "_timer_set_targets": "timer_set_targets",
    "_timer_get": "kvm_arm_timer_get_attr", "_new_vcpu_timer_irqs": "new_vcpu_timer_irqs",
    "_first_run": "kvm_arch_vcpu_run_pid_change", "arm_first_run": "kvm_arch_vcpu_run_pid_change",
    "_timer_irqs_are_valid": "timer_irqs_are_valid",
    # locking
    "_lock": "lock_acquire", "_unlock": "lock_release", "_srcu_read_lock": "srcu_read_lock",
    "_srcu_read_unlock": "srcu_read_unlock", "_synchronize_srcu": "synchronize_srcu", "_access": "access_data",
    "_vcpu_mutex": "vcpu_mutex", "_hardware_enable_all": "hardware_enable_all",
    "_hardware_disable_all": "hardware_disable_all", "_kvm_enable_virtualization": "kvm_enable_virtualization",
    "_kvm_disable_virtualization": "kvm_disable_virtualization", "_kvm_online_cpu": "kvm_online_cpu",
    "_vmexit": "handle_exit", "_mmu_first_shadow_root_alloc": "mmu_first_shadow_root_alloc",
    "_kvm_tdp_mmu_map": "kvm_tdp_mmu_map", "_kvm_swap_active_memslots": "kvm_swap_active_memslots",
    "_kvm_handle_hva_range": "kvm_handle_hva_range", "_kvm_setup_default_irq_routing": "kvm_setup_default_irq_routing",
}


class BackendWarning(pytest.PytestWarning):
    """Something about the chosen backend that is probably a mistake (a misspelt override)."""


def _ours(cls: type) -> bool:
    return cls.__module__.split(".")[0] == "pytest_kvmconf"


def problems(backend: Any) -> tuple[list[str], list[str]]:
    """(errors, warnings) about ``backend``; both empty when it names no machine class."""
    cls = getattr(backend, "machine_class", None)
    if not isinstance(cls, type):
        return [], []
    label = f"backend {getattr(backend, 'name', '?')!r} ({cls.__qualname__})"
    caps = set(getattr(backend, "capabilities", ()))
    ops = facets.all_ops()
    composed = getattr(cls, "run_op", None) is FacetMachine.run_op
    errors = []
    for op in sorted(ops.values(), key=lambda o: o.name):
        if op.facet not in caps:
            continue
        method = getattr(cls, op.name, None)
        if method is None:
            errors.append(f"{label} declares capability {op.facet!r} but has no operation {op.name}")
            continue
        try:
            signature = inspect.signature(method)
        except ValueError:  # no signature to read (a builtin): nothing to check
            continue
        args = {a.name: a.default for a in op.args}
        # The composed machines' run_op passes ctx first; a machine with its own run_op may not.
        conventions = [(None, None)] if composed else [(None, None), (None,)]
        for leading in conventions:
            try:
                signature.bind(*leading, **args)
                break
            except TypeError as exc:
                failure = exc
        else:
            declared = ", ".join(["ctx", *args] if composed else args)
            errors.append(f"{label}: {op.name} must take ({declared}): {failure}")
    steps = {n: s for n, s in facets.all_steps().items() if s.facet in caps}
    errors += _step_errors(cls, label, steps)
    warnings = []
    inherited: set[str] = set()
    for base in cls.__mro__[1:]:
        inherited |= {n for n in vars(base) if not n.startswith("_")}
    known = inherited | set(ops) | set(steps) | MACHINE_METHODS
    for klass in reversed(cls.__mro__):
        if _ours(klass) or klass is object:
            continue
        for name, value in vars(klass).items():
            if not callable(value) or name.startswith(("init_", "observe_", "__")):
                continue
            # What klass overrides in the machine: every class after it in the machine's MRO (a
            # mixin of overrides, as tests/broken/locking.py composes them, has only object above it).
            after = cls.__mro__[cls.__mro__.index(klass) + 1:]
            owners = {n for base in after for n in vars(base)}
            if name in owners or name in ops or name in steps or name in MACHINE_METHODS:
                continue
            if name in FORMER_NAMES and any(_ours(b) for b in after):
                warnings.append(f"{label}: {klass.__qualname__}.{name} overrides nothing: the bundled backends "
                                f"call that step {FORMER_NAMES[name]!r} now")
                continue
            if name.startswith("_"):
                continue
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
            if close:
                warnings.append(f"{label}: {klass.__qualname__}.{name} overrides nothing and no operation has "
                                f"that name (did you mean {close[0]!r}?)")
    return errors, warnings


def _step_errors(cls: type, label: str, steps: dict[str, facets.Step]) -> list[str]:
    """Overrides, outside pytest-kvmconf, of steps the bundled class they build on implements."""
    errors = []
    for name, step in sorted(steps.items()):
        owner = next((k for k in cls.__mro__ if name in vars(k)), None)
        bundled = next((k for k in cls.__mro__ if _ours(k) and name in vars(k)), None)
        if owner is None or bundled is None or _ours(owner):
            continue
        method = vars(owner)[name]
        try:
            signature = inspect.signature(method)
        except (TypeError, ValueError):
            continue
        try:
            signature.bind(None, *step.args)
        except TypeError as exc:
            errors.append(f"{label}: {owner.__qualname__}.{name} must take ({', '.join(step.args)}) as the "
                          f"step it overrides: {exc}")
            continue
        if inspect.isgeneratorfunction(method) and not inspect.isgeneratorfunction(vars(bundled)[name]):
            errors.append(f"{label}: {owner.__qualname__}.{name} is a generator, but the step it overrides "
                          f"returns its result at once ({step.returns}): drop the yield")
    return errors
