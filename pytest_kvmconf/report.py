"""How a violation reads: the litmus-test shape KVM engineers already know.

The guarantee and its sentence, the parameters, one column per thread with a
row per scheduling step (like the CPU1/CPU2 diagrams of the documents), the
final state, the condition that failed, and the command that replays it.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .engine.records import Outcome
from .explain import explain
from .facets.requests import MODE_NAMES, request_name
from .spec.model import Param

COLUMN = 46


def format_value(name: str, value: Any, doc_version: str, is_request: bool = False) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        return repr(value) if isinstance(value, str) else str(value)
    if is_request or name in ("req", "request"):
        return f"{request_name(value, doc_version)} ({value:#x})"
    return str(value)


def named_value(text: str, value: Any, doc_version: str) -> str:
    """A sub-expression's value, raw, with the facet's name for it where the name says what it is."""
    last = text.rsplit(".", 1)[-1].rsplit("[", 1)[0]
    if isinstance(value, int) and not isinstance(value, bool):
        if last == "mode" and value in MODE_NAMES:
            return f"{value} ({MODE_NAMES[value]})"
        if "req" in last:
            return f"{value:#x} ({request_name(value, doc_version)})"
    if last in ("requests", "handled") and isinstance(value, Iterable) and not isinstance(value, str | Mapping):
        items = sorted(value) if isinstance(value, frozenset | set) else list(value)
        if all(isinstance(r, int) for r in items):
            inner = ", ".join(request_name(r, doc_version) for r in items)
            return ("{" + inner + "}") if isinstance(value, frozenset | set) else f"[{inner}]"
    if isinstance(value, Mapping) and "id" in value and "mode" in value:
        return _vcpu(value, doc_version)
    return _short(value)


def _is_request_param(p: Param) -> bool:
    return p.kind == "set" and p.set_name.endswith("requests")


def timeline(outcome: Outcome, width: int = COLUMN) -> str:
    threads = outcome.threads
    col = {t: i for i, t in enumerate(threads)}
    header = "  #  " + "".join(f"{t:<{width}}" for t in threads)
    lines = [header.rstrip(), "  " + "-" * (len(header) - 2)]
    for e in outcome.timeline:
        cells = [""] * len(threads)
        text = "; ".join(e.texts) if e.texts else "(returns)"
        wrapped = textwrap.wrap(text, width - 2) or [""]
        for j, part in enumerate(wrapped):
            cells = [""] * len(threads)
            cells[col[e.thread]] = part
            num = f"{e.index:>3}" if j == 0 else "   "
            lines.append(f"{num}  " + "".join(f"{c:<{width}}" for c in cells).rstrip())
    return "\n".join(lines)


def format_state(state: Mapping[str, Any] | None, doc_version: str) -> str:
    if state is None:
        return "  (none)"
    lines = []
    for key, value in state.items():
        if key == "vcpus" and isinstance(value, Sequence):
            for v in value:
                lines.append(f"  vcpu{v.get('id', '?')}: " + _vcpu(v, doc_version))
        else:
            lines.append(f"  {key} = {_short(value)}")
    return "\n".join(lines)


def _vcpu(v: Mapping[str, Any], doc_version: str) -> str:
    parts = []
    for k, val in v.items():
        if k == "id" or val in (False, None, 0, (), frozenset(), {}, []):
            continue
        if k == "mode":
            val = MODE_NAMES.get(val, val)
        elif k == "requests":
            val = "{" + ", ".join(request_name(r, doc_version) for r in sorted(val)) + "}"
        elif k == "handled":
            val = "[" + ", ".join(request_name(r, doc_version) for r in val) + "]"
        parts.append(f"{k}={_short(val)}")
    mode = "" if "mode=" in " ".join(parts) else "mode=OUTSIDE_GUEST_MODE "
    return mode + " ".join(parts)


def _short(value: Any) -> str:
    if isinstance(value, frozenset | set):
        return "{" + ", ".join(map(str, sorted(value, key=str))) + "}"
    text = str(value)
    return text if len(text) < 200 else text[:197] + "..."


def violation_record(outcome: Outcome) -> dict[str, Any]:
    """A violation as plain data (the HTML report draws its timeline from it)."""
    v = outcome.violation
    return {"kind": v.kind if v else "", "message": v.message if v else "", "threads": list(outcome.threads),
            "timeline": [{"index": e.index, "thread": e.thread, "texts": list(e.texts)} for e in outcome.timeline],
            "params": {k: format_value(k, val, "6.18") for k, val in outcome.params.items()}}


def violation_report(outcome: Outcome, doc_version: str, replay: str, free: bool = False) -> str:
    g, v = outcome.guarantee, outcome.violation
    assert v is not None
    out = [
        f"{g.id} violated: {g.title}",
        f"  {g.document}, {g.section} (document text {doc_version}):",
        *("    " + line for line in textwrap.wrap(f'"{g.quote}"', 96)),
        "",
        f"what went wrong ({v.kind}): {v.message}",
    ]
    if v.check is not None:
        label = {"always": "invariant", "final": "must hold at the end", "never": "forbidden outcome",
                 "exists": "must be reachable"}[v.check.kind]
        out.append(f"  {label}: {v.check.expr}" + (f"   (when {v.check.when})" if v.check.when else ""))
        if v.at is not None:
            out.append(f"  it stopped holding after step {v.at}")
        if v.env is not None:
            why = explain(str(v.check.expr), v.env, expected=v.check.kind != "never",
                          name_value=lambda text, value: named_value(text, value, doc_version))
            if why:
                out.append("  where")
                out.extend(f"    {line}" for line in why)
    out.append("")
    if outcome.params:
        out.append("parameters:")
        requests = {p.name for p in g.params if _is_request_param(p)}
        out.extend(f"  {k} = {format_value(k, val, doc_version, k in requests)}"
                   for k, val in outcome.params.items())
        out.append("")
    out.append("schedule (one column per thread, one row per scheduling step):")
    out.append(timeline(outcome))
    out.append("")
    if v.kind in ("deadlock", "hang", "livelock", "error"):
        out.append("threads at the end:")
        out.extend(f"  {p}" for p in outcome.positions)
        out.append("")
    out.append("final state:")
    out.append(format_state(outcome.final_state, doc_version))
    out.append("")
    if free:
        out.append("replay (free mode: the threads ran preemptively, so this re-runs the schedule with")
        out.append("the same delay seed, which need not meet the same race; the timeline is what was seen):")
    else:
        out.append("replay exactly this schedule:")
    out.append(f"  {replay}")
    return "\n".join(out)
