"""Operations every backend gets from the engine itself."""

from . import Arg, Facet, register

core = register(Facet("core", "operations provided by the engine for every backend"))

core.op(
    "snapshot", [], "state",
    "Record the observable state at this point; bind it with `as` and compare it "
    "with later states in conditions (e.g. what held when an operation returned).",
)
core.op(
    "note", [Arg("text", "str")], "none",
    "A labelled scheduling point with no effect, to mark a place in the timeline.",
)

core.observables.update({
    "threads": "threads.<name>.done (bool) and threads.<name>.position (last scheduling point label)",
    "step": "the step just taken: step.thread, step.vcpu (-1 for non-vCPU threads), step.op (operation "
            "being run), step.label; when an operation returned in this step: step.returned (its name), "
            "step.args, step.result and step.before (the state when it started)",
    "old": "the state before the step just taken (only in `always` checks)",
})
core.extra_capabilities.update({
    "userspace_obligations": "the backend also keeps what the documents oblige userspace to do (a model of "
                             "a VMM-side check): checks marked obligation = 'userspace' are judged on it; "
                             "on a KVM backend they are not, as KVM does not enforce them",
})
