"""A tiny project for the plugin tests: three guarantees and two backends.

Independent of the bundled specs and the reference model, so the report,
expectation and ecosystem tests know every verdict in advance:

* TOY-01 holds on both backends;
* TOY-02 is violated by ``toy-broken`` on every schedule (kvm_test_request
  never sees a request);
* TOY-03 needs the ``kick`` facet, which neither backend has: a skip.
"""

from __future__ import annotations

import textwrap

import pytest

SPEC = textwrap.dedent('''
    [document]
    file = "vcpu-requests.rst"
    area = "toy"

    [[guarantee]]
    id = "TOY-01"
    title = "A made request is pending"
    section = "Overview"
    quote = "Make request @req of VCPU @vcpu."
    versions = { since = "4.13" }
    params.req = { from = "arch_independent_requests" }
    [[guarantee.thread]]
    name = "requester"
    steps = [{ op = "kvm_make_request", req = "req", vcpu = 0 }]
    [[guarantee.check]]
    final = "(req & KVM_REQUEST_MASK) in vcpus[0].requests"

    [[guarantee]]
    id = "TOY-02"
    title = "kvm_test_request sees a made request"
    section = "Overview"
    quote = "Check if VCPU @vcpu has request @req pending."
    versions = { since = "4.13" }
    params.req = { from = "arch_independent_requests" }
    [[guarantee.thread]]
    name = "requester"
    steps = [
      { op = "kvm_make_request", req = "req", vcpu = 0 },
      { op = "kvm_test_request", req = "req", vcpu = 0, as = "seen" },
    ]
    [[guarantee.check]]
    final = "seen"
    message = "kvm_test_request missed a pending request"

    [[guarantee]]
    id = "TOY-03"
    title = "A kick of a vCPU outside guest mode does nothing"
    section = "VCPU Kicks"
    quote = "kick a VCPU outside guest mode: nothing to do"
    versions = { since = "4.13" }
    [[guarantee.thread]]
    name = "kicker"
    steps = [{ op = "kvm_vcpu_kick", vcpu = 0 }]
    [[guarantee.check]]
    final = "vcpus[0].ipis == 0"
''')

BACKEND = textwrap.dedent('''
    """Toy backends: the request bitmap only."""

    from pytest_kvmconf import Point
    from pytest_kvmconf.facets.requests import KVM_REQUEST_MASK
    from pytest_kvmconf.spec.versions import VersionRange


    class ToyMachine:
        execution = "generator"

        def __init__(self, config, broken):
            self.requests = [set() for _ in range(config.vcpus)]
            self.broken = broken

        def run_op(self, ctx, op, args):
            return getattr(self, op)(**args)

        def kvm_make_request(self, req, vcpu, state=None):
            self.requests[vcpu].add(req & KVM_REQUEST_MASK)
            yield Point("set_bit(req, &vcpu->requests)")

        def kvm_test_request(self, req, vcpu):
            seen = (req & KVM_REQUEST_MASK) in self.requests[vcpu] and not self.broken
            yield Point("test_bit(req, &vcpu->requests)")
            return seen

        def observe(self):
            return {"vcpus": [{"id": i, "requests": frozenset(r)} for i, r in enumerate(self.requests)]}

        def close(self):
            pass


    class ToyBackend:
        name = "toy"
        description = "the request bitmap alone"
        capabilities = frozenset({"requests"})
        archs = frozenset({"x86_64"})
        doc_versions = VersionRange("4.13")
        broken = False

        def new_machine(self, config):
            return ToyMachine(config, self.broken)


    class BrokenToyBackend(ToyBackend):
        name = "toy-broken"
        description = "kvm_test_request never sees a request"
        broken = True
''')

CONFTEST = textwrap.dedent('''
    from toy_backend import BrokenToyBackend, ToyBackend


    def pytest_kvmconf_backends():
        return {"toy": ToyBackend, "toy-broken": BrokenToyBackend}
''')

#: Arguments that run only the toy specs, quickly.
ARGS = ("-p", "no:cacheprovider", "--kvm-no-bundled-specs", "--kvm-specs=specs", "--kvm-profile=quick")


def make_project(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(toy_backend=BACKEND, conftest=CONFTEST)
    pytester.mkdir("specs")
    (pytester.path / "specs" / "toy.toml").write_text(SPEC, encoding="utf-8")
    pytester.syspathinsert()


def outcomes(result: pytest.RunResult) -> dict[str, str]:
    """Guarantee id -> PASSED/FAILED/SKIPPED/XFAIL/XPASS/ERROR, from the lines of a ``-v`` run."""
    words = {"PASSED", "FAILED", "SKIPPED", "XFAIL", "XPASS", "ERROR"}
    out: dict[str, str] = {}
    for line in result.outlines:
        parts = line.split()
        ids = [p.rsplit("::", 1)[-1] for p in parts if "::TOY-" in p]
        verdict = [p for p in parts if p in words]
        if len(ids) == 1 and verdict and not line.startswith(tuple(words)):
            out[ids[0]] = verdict[0]
    return out
