"""A spec thread made concrete for one schedule: its steps with evaluated arguments.

Both executors (generator and OS threads) walk the same plan, so argument
evaluation, result binding and the timeline's call text exist once.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import SpecError
from ..facets import Op
from ..spec.expr import Expr
from ..spec.loader import MAX_VCPUS
from ..spec.model import Guarantee, Step
from .schedule import Schedule


@functools.cache
def _vcpu_args(op: Op) -> frozenset[str]:
    return frozenset(a.name for a in op.args if a.type == "vcpu")


@dataclass
class PlannedStep:
    step: Step
    #: extra names for argument expressions (per-vCPU index, drawn step params).
    scope: Mapping[str, Any]
    #: a generated step's (spec thread, choice, drawn params), as the schedule holds it
    generated: tuple[str, int, tuple[tuple[str, Any], ...]] | None = None


@dataclass
class ThreadPlan:
    name: str
    vcpu: int | None
    steps: list[PlannedStep]
    #: names every plan of a run shares (constants, params, bindings); owned by the run.
    env: dict[str, Any] = field(repr=False, default_factory=dict)
    bindings: dict[str, Any] = field(repr=False, default_factory=dict)
    #: (spec file, guarantee id), for errors of the spec found while running.
    origin: tuple[str, str | None] = ("spec", None)
    #: vCPU arguments must be below this: the run's vCPUs, or MAX_VCPUS where the spec creates
    #: vCPUs at run time (and may address one it has not created, to check the refusal).
    vcpu_limit: int = 64

    def args(self, ps: PlannedStep) -> dict[str, Any]:
        out = {}
        env = None
        for k, v in ps.step.args:
            if isinstance(v, Expr):
                if env is None:
                    env = {**self.env, **self.bindings, **ps.scope}
                value = out[k] = v.evaluate(env)
                if k in _vcpu_args(ps.step.op) and not (type(value) is int and 0 <= value < self.vcpu_limit):
                    raise SpecError(*self.origin, ps.step.where,
                                    f"{k} = {v.source!r} evaluated to {value!r}: not a vCPU index of this "
                                    f"run (0 to {self.vcpu_limit - 1})")
            else:
                out[k] = v
        return out

    def bind(self, ps: PlannedStep, result: Any) -> None:
        if ps.step.bind:
            self.bindings[ps.step.bind] = result

    def calls(self) -> Iterator[tuple[PlannedStep, dict[str, Any]]]:
        for ps in self.steps:
            yield ps, self.args(ps)


def creates_vcpus(g: Guarantee) -> bool:
    return any(s.op.name.endswith("create_vcpu") for t in g.threads
               for s in t.steps + (t.sequence.choose if t.sequence else ()))


def make_plans(g: Guarantee, schedule: Schedule, nr_vcpus: int, env: dict[str, Any],
               bindings: dict[str, Any]) -> list[ThreadPlan]:
    generated = dict(schedule.sequences)
    limit = MAX_VCPUS if creates_vcpus(g) else nr_vcpus
    plans = []
    for t in g.threads:
        copies = [(f"{t.name}{i}", i, {"vcpu": i}) for i in range(nr_vcpus)] if t.per_vcpu \
            else [(t.name, t.vcpu, {})]
        for name, vcpu, scope in copies:
            steps = [PlannedStep(s, scope) for s in t.steps]
            if t.sequence is not None:
                for choice, drawn in generated.get(t.name, ()):
                    steps.append(PlannedStep(t.sequence.choose[choice], {**scope, **dict(drawn)},
                                             (t.name, choice, drawn)))
            plans.append(ThreadPlan(name, vcpu, steps, env, bindings, (str(g.file), g.id), limit))
    return plans
