"""Each facet's overridable steps are one vocabulary: both bundled backends implement every step of
every facet they support under the declared name and parameters, and nothing else they define is
public; the registration-time check holds variants to the same vocabulary."""

from __future__ import annotations

import inspect

import pytest

from pytest_kvmconf import facets
from pytest_kvmconf.backend_check import problems
from pytest_kvmconf.backends import reference
from pytest_kvmconf.backends.compose import FacetMachine
from pytest_kvmconf.backends.reference import ReferenceBackend, ReferenceMachine
from pytest_kvmconf.backends.reference.attr import AttrModel
from pytest_kvmconf.backends.reference.locking import LockingModel
from pytest_kvmconf.backends.reference.memslots import MemslotsModel
from pytest_kvmconf.backends.reference.mp import MpModel
from pytest_kvmconf.backends.reference.requests import RequestsModel
from pytest_kvmconf.backends.reference.spte import SpteModel
from pytest_kvmconf.backends.threaded import ThreadedBackend, ThreadedMachine
from pytest_kvmconf.backends.threaded.attr import AttrThreads
from pytest_kvmconf.backends.threaded.locking import LockingThreads
from pytest_kvmconf.backends.threaded.mp import MpThreads
from pytest_kvmconf.backends.threaded.requests import RequestsThreads
from pytest_kvmconf.backends.threaded.spte import SpteThreads

from .broken import running

BACKENDS = [ReferenceBackend(), ThreadedBackend()]
REFERENCE_MIXINS = reference.MIXINS
#: the facet mixins whose public methods are all operations, steps or hooks.
VOCABULARY_MIXINS = (RequestsModel, RequestsThreads, MpModel, MpThreads, SpteModel, SpteThreads,
                     AttrModel, AttrThreads, LockingModel, LockingThreads, MemslotsModel)


def declared(backend) -> list[facets.Step]:
    return sorted((s for s in facets.all_steps().values() if s.facet in backend.capabilities),
                  key=lambda s: s.name)


def test_the_requests_facets_declare_their_steps() -> None:
    steps = facets.all_steps()
    for name in ("set_request_bit", "kvm_request_needs_ipi", "kvm_vcpu_exiting_guest_mode", "kvm_vcpu_wake_up",
                 "send_ipi", "kvm_vcpu_check_block", "request_no_action", "request_no_wakeup",
                 "kvm_for_each_vcpu", "kvm_make_vcpu_request"):
        assert name in steps, name
    ops = facets.all_ops()
    for step in steps.values():
        assert step.name not in ops, f"{step.name} is both an operation and a step"
        assert step.kernel and step.doc, step.name


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_both_backends_implement_every_declared_step(backend) -> None:
    machine = backend.machine_class
    generator_style = machine.execution == "generator"
    for step in declared(backend):
        method = getattr(machine, step.name, None)
        assert method is not None, f"{backend.name} lacks step {step.name} of facet {step.facet}"
        params = list(inspect.signature(method).parameters)
        assert params[0] == "self" and tuple(params[1:]) == step.args, \
            f"{backend.name}.{step.name}{tuple(params[1:])} != declared {step.args}"
        # A step with scheduling points is a generator in the generator model, a plain call elsewhere,
        # except where the threaded backend runs the reference model's own paths (locking).
        owner = next(k for k in machine.__mro__ if step.name in vars(k))
        runs_model_paths = any(issubclass(owner, m) for m in REFERENCE_MIXINS)
        assert inspect.isgeneratorfunction(method) == ((generator_style or runs_model_paths) and step.points), \
            f"{backend.name}.{step.name}: points={step.points} but generator={inspect.isgeneratorfunction(method)}"


def test_both_backends_support_the_same_steps() -> None:
    ref, thr = ({s.name for s in declared(b)} for b in BACKENDS)
    shared = set(ReferenceBackend.capabilities) & set(ThreadedBackend.capabilities)
    both = {s.name for s in facets.all_steps().values() if s.facet in shared}
    assert both <= ref and both <= thr


@pytest.mark.parametrize("mixin", VOCABULARY_MIXINS, ids=lambda m: m.__name__)
def test_everything_outside_the_vocabulary_is_private(mixin: type) -> None:
    public = {n for n, v in vars(mixin).items() if callable(v) and not n.startswith("_")}
    vocabulary = set(facets.all_ops()) | set(facets.all_steps())
    stray = {n for n in public - vocabulary if not n.startswith(("init_", "observe_"))}
    assert not stray, f"{mixin.__name__} has public methods outside its facets' vocabulary: {sorted(stray)}"


def test_a_step_override_with_other_parameters_is_an_error() -> None:
    class Wrong(ReferenceMachine):
        def kvm_request_needs_ipi(self, vcpu):  # the step takes (v, req)
            return 0, False

    errors, _ = problems(running(Wrong, "wrong"))
    assert any("Wrong.kvm_request_needs_ipi must take (v, req) as the step it overrides" in e for e in errors), errors


def test_a_generator_override_of_a_step_that_returns_at_once_is_an_error() -> None:
    class Yields(ThreadedMachine):
        def request_no_wakeup(self, req):
            yield  # the threaded steps are plain calls

    errors, _ = problems(running(Yields, "yields"))
    assert any("Yields.request_no_wakeup is a generator" in e for e in errors), errors


def test_an_override_under_a_former_name_warns_with_the_step() -> None:
    class Old(ReferenceMachine):
        def _set_request_bit(self, v, req):
            yield from ()

        def kvm_vcpu_wakeup(self, v):
            return False

    errors, warnings = problems(running(Old, "old"))
    assert not errors
    assert any("Old._set_request_bit overrides nothing: the bundled backends call that step 'set_request_bit'"
               in w for w in warnings), warnings
    assert any("Old.kvm_vcpu_wakeup overrides nothing" in w and "did you mean 'kvm_vcpu_wake_up'" in w
               for w in warnings), warnings


def test_a_mixin_of_overrides_under_a_former_name_warns_too() -> None:
    class Overrides:  # composed with a machine, as tests/broken/locking.py does
        def _hardware_enable_all(self, ctx):
            yield from ()

    machine = type("Composed", (Overrides, ReferenceMachine), {})
    _, warnings = problems(running(machine, "composed"))
    assert any("Overrides._hardware_enable_all overrides nothing: the bundled backends call that step "
               "'hardware_enable_all'" in w for w in warnings), warnings


def test_the_locking_variants_composed_with_either_machine_pass_the_check() -> None:
    from .broken import locking

    for name in locking.VARIANTS:
        for base in (ReferenceBackend(), ThreadedBackend()):
            assert problems(locking.backend(name, base)) == ([], []), (name, base.name)


def test_the_ported_variants_override_steps_that_return_at_once() -> None:
    # tests/broken/threaded.py runs these reference variants' code unchanged on the threaded backend
    # (test_threaded checks each is caught there): possible because they override such steps only.
    from .broken.threaded import PORTED

    steps = facets.all_steps()
    for cls in PORTED:
        overridden = {n for n, v in vars(cls).items() if callable(v) and not n.startswith("__")}
        assert overridden and all(n in steps and not steps[n].points for n in overridden), cls
        # A copied function calling super() would still name the reference class: none may.
        assert not any("__class__" in vars(cls)[n].__code__.co_freevars for n in overridden), cls


def test_every_former_name_points_at_a_declared_step() -> None:
    from pytest_kvmconf.backend_check import FORMER_NAMES

    steps = facets.all_steps()
    assert not {old: new for old, new in FORMER_NAMES.items() if new not in steps}
    for machine in (ReferenceMachine, ThreadedMachine):
        assert not [old for old in FORMER_NAMES if old in dir(machine) and old not in steps], machine


def test_a_backend_of_its_own_is_not_held_to_the_bundled_steps() -> None:
    # Steps are what the bundled backends share; a backend written from scratch names its own helpers.
    class Own(FacetMachine):
        def set_request_bit(self, anything):
            return anything

    backend = running(Own, "own", ReferenceBackend())
    backend.capabilities = frozenset()
    assert problems(backend) == ([], [])


def step_tables() -> str:
    """CONTRIBUTING.md's tables of the steps, one per facet, as the facets declare them."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    facets.all_steps()  # every facet registered
    first = ["requests", "kick", "run_loop", "block", "mp", "spte", "attr", "locking", "memslots"]
    order = sorted(facets.FACETS, key=lambda n: (first.index(n) if n in first else len(first), n))
    out = []
    for facet in (facets.FACETS[n] for n in order):
        if not facet.steps:
            continue
        out.append(f"`{facet.name}` steps:\n\n| step | what it models | kernel | parameters | returns | points |\n"
                   "|---|---|---|---|---|---|")
        for s in facet.steps.values():
            out.append(f"| `{s.name}` | {cell(s.doc)} | {cell(s.kernel)} | `({', '.join(s.args)})` "
                       f"| {cell(s.returns)} | {'yes' if s.points else ''} |")
        out.append("")
    return "\n".join(out)


def test_contributing_tabulates_every_step() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "CONTRIBUTING.md").read_text(encoding="utf-8")
    tables = step_tables()
    assert tables in doc, "CONTRIBUTING.md's step tables differ from the facets' declarations; they are:\n\n" + tables


if __name__ == "__main__":  # python -m tests.test_steps: print the tables for CONTRIBUTING.md
    print(step_tables())
