"""A backend is checked when it is chosen: missing or mis-declared operations, misspelt overrides."""

from __future__ import annotations

import importlib
import inspect

import pytest

from pytest_kvmconf.backend_check import problems
from pytest_kvmconf.backends.compose import FacetBackend, FacetMachine
from pytest_kvmconf.backends.reference import ReferenceBackend
from pytest_kvmconf.backends.threaded import ThreadedBackend

pytest_plugins = ["pytester"]


def broken_machines() -> list[type]:
    out = []
    for mod in ("attr", "locking", "mp", "requests", "spte", "threaded", "threaded_mp"):
        m = importlib.import_module(f"tests.broken.{mod}")
        out += [c for c in vars(m).values() if inspect.isclass(c) and c.__module__ == m.__name__
                and issubclass(c, FacetMachine)]
    return out


def test_bundled_backends_and_every_broken_variant_pass_the_check() -> None:
    from tests.broken import running

    assert problems(ReferenceBackend()) == ([], []) and problems(ThreadedBackend()) == ([], [])
    machines = broken_machines()
    assert len(machines) > 50
    for machine in machines:
        assert problems(running(machine, machine.__name__)) == ([], []), machine


def test_a_missing_operation_and_a_wrong_signature_are_errors() -> None:
    class Bitmap(FacetMachine):
        def kvm_make_request(self, ctx, req):  # no vcpu, no state
            yield from ()

    class Mine(FacetBackend):
        name = "mine"
        capabilities = frozenset({"requests"})
        machine_class = Bitmap

    errors, _ = problems(Mine())
    assert any("kvm_make_request must take (ctx, req, vcpu, state)" in e for e in errors), errors
    assert any(e.endswith("declares capability 'requests' but has no operation kvm_test_request") for e in errors)


def test_a_misspelt_override_warns_with_did_you_mean(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
        from pytest_kvmconf.backends.reference import ReferenceBackend, ReferenceMachine

        class Lazy(ReferenceMachine):
            def _exiting_guest_mod(self, v):  # private: not a public override, not checked
                return 0

            def kvm_vcpu_kik(self, ctx, vcpu):
                yield from ()

            def helper_of_mine(self):
                return 1

        class LazyBackend(ReferenceBackend):
            name = "lazy"
            machine_class = Lazy

        def pytest_kvmconf_backends():
            return {"lazy": LazyBackend}
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--kvm-backend=lazy", "--kvm-list")
    assert result.ret == 0
    out = result.stdout.str()
    assert "Lazy.kvm_vcpu_kik overrides nothing and no operation has that name (did you mean 'kvm_vcpu_kick'?)" \
        in out
    assert "helper_of_mine" not in out and "_exiting_guest_mod" not in out


def test_a_backend_missing_an_operation_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
        from pytest_kvmconf.backends.compose import FacetBackend, FacetMachine

        class Empty(FacetMachine):
            pass

        class EmptyBackend(FacetBackend):
            name = "empty"
            capabilities = frozenset({"kick"})
            machine_class = Empty

        def pytest_kvmconf_backends():
            return {"empty": EmptyBackend}
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--kvm-backend=empty", "--kvm-list")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*backend 'empty' (Empty) declares capability 'kick' but has no operation "
                                 "kvm_vcpu_kick*"])
    assert "Traceback" not in result.stderr.str()


def test_an_override_of_a_locking_operation_stays_one() -> None:
    from pytest_kvmconf.backends.reference import ReferenceMachine

    def routing(self, ctx):
        yield from self.lock_acquire(ctx, "kvm->irq_lock")
        yield from self.lock_release(ctx, "kvm->irq_lock")

    variant = type("Variant", (ReferenceMachine,), {"kvm_vm_ioctl_set_gsi_routing": routing, "helper": routing})
    assert variant.kvm_vm_ioctl_set_gsi_routing.__locking_op__ and \
        variant.kvm_vm_ioctl_set_gsi_routing.__wrapped__ is routing
    assert variant.helper is routing  # not a locking operation: left alone
