"""devices/vcpu.rst as a concurrent program: arm64 vCPU attributes set from real OS threads.

Any VMM thread may make these ioctls. As in KVM, the VM's configuration is
guarded by one mutex (kvm->arch.config_lock / kvm->lock): each ioctl takes it,
checks and changes the configuration, drops it, then reaches a scheduling
point, so ioctls from several threads interleave whole.

The ioctls and their steps are the reference model's (:mod:`..reference.attr`:
the document's tables, with the kernel's order where the document gives none),
as the locking facet's threaded backend runs the reference paths over real
locks: :class:`AttrThreads` subclasses :class:`AttrModel` and runs each ioctl's
checks and changes under the configuration lock, its scheduling point after
the lock is dropped. A variant overrides the same steps on both backends.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from typing import Any

from ...backend import MachineConfig, ThreadContext
from ...scheduling import Point, point
from ..reference.attr import AttrModel


class AttrThreads(AttrModel):
    """Facet mixin: attr, on real threads sharing the VM's configuration lock."""

    def init_attr(self, config: MachineConfig) -> None:
        self.config_lock = threading.Lock()
        super().init_attr(config)

    def _locked(self, ioctl: Generator[Point, None, int]) -> int:
        """Run one ioctl of the model on this OS thread: what it does before each scheduling point
        under config_lock, the point itself with the lock dropped (no lock is held at a point)."""
        while True:
            with self.config_lock:
                try:
                    item = next(ioctl)
                except StopIteration as stop:
                    return stop.value
            point(item.label)

    def arm_create_vcpu(self, ctx: ThreadContext) -> Any:
        return self._locked(super().arm_create_vcpu(ctx))

    def arm_create_vgic(self, ctx: ThreadContext) -> Any:
        return self._locked(super().arm_create_vgic(ctx))

    def arm_init_vgic(self, ctx: ThreadContext) -> Any:
        return self._locked(super().arm_init_vgic(ctx))

    def kvm_set_device_attr(self, ctx: ThreadContext, vcpu: int, group: int, attr: int, value: int = 0) -> Any:
        return self._locked(super().kvm_set_device_attr(ctx, vcpu, group, attr, value))

    def kvm_get_device_attr(self, ctx: ThreadContext, vcpu: int, group: int, attr: int) -> Any:
        return self._locked(super().kvm_get_device_attr(ctx, vcpu, group, attr))

    def kvm_has_device_attr(self, ctx: ThreadContext, vcpu: int, group: int, attr: int) -> Any:
        return self._locked(super().kvm_has_device_attr(ctx, vcpu, group, attr))

    def arm_vcpu_run(self, ctx: ThreadContext, vcpu: int) -> Any:
        return self._locked(super().arm_vcpu_run(ctx, vcpu))
