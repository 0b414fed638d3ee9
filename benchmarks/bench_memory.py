"""What the memory models cost, and how fast missing barriers are caught.

Run from the repository root:  python benchmarks/bench_memory.py [--schedules N] [--seeds K]
                                    [--baseline-rev REV] [--litmus N]

Prints:
1. per REQ spec on the reference backend, the engine's cost per schedule (CPU and wall time,
   microseconds) under sc, tso and lkmm, on the same hypothesis-drawn schedules; with
   --baseline-rev, also the cost of the code at that git revision (before memory models existed)
   on the same schedules, measured in a subprocess in the same run;
2. per missing-barrier variant (tests/broken/barriers.py) and model, the examples hypothesis
   generated until the violation, for K seeds (target: within 100; the budget for the hunt is
   --budget, so the table also shows what a variant needs when 100 is not enough);
3. with --litmus N: each translated kernel litmus test (tests/litmus/lkmm.toml) under lkmm: its
   schedules enumerated (--litmus-every, all of the small tests), then N drawn ones, with the
   verdict against the file's Result line (--only-litmus: just this table).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings

ROOT = Path(__file__).resolve().parent.parent
if "--root" in sys.argv:  # the baseline's side: measure the package of another checkout
    ROOT = Path(sys.argv[sys.argv.index("--root") + 1])
sys.path.insert(0, str(ROOT))

from pytest_kvmconf.backends.reference import ReferenceBackend  # noqa: E402
from pytest_kvmconf.engine.runner import RunOptions, run_schedule  # noqa: E402
from pytest_kvmconf.engine.schedule import Schedule  # noqa: E402
from pytest_kvmconf.spec.loader import load_files, spec_files  # noqa: E402
from pytest_kvmconf.strategies import schedule_strategy  # noqa: E402

QUIET = dict(database=None, deadline=None, suppress_health_check=list(HealthCheck))


def version_for(gid: str) -> str:
    return "4.13" if gid.startswith("REQ-26") else "6.18"


def draw(g, n: int) -> list[Schedule]:
    out: list[Schedule] = []

    @seed(0)
    @settings(max_examples=n, phases=[Phase.generate], **QUIET)
    @given(schedule_strategy(g, version_for(g.id)))
    def collect(schedule):
        out.append(schedule)

    collect()
    return out


def options(gid: str, model: str) -> RunOptions:
    if model == "sc":
        return RunOptions(version_for(gid))  # also what code from before memory models accepts
    return RunOptions(version_for(gid), memory_model=model)


def cost(g, schedules: list[Schedule], model: str) -> tuple[float, float]:
    """CPU and wall seconds per schedule (best of 3 passes, the machine is shared)."""
    b, opts = ReferenceBackend(), options(g.id, model)
    best = (float("inf"), float("inf"))
    try:  # as a search holds it (explore, the plugin): not reinstalled around every watched call
        from pytest_kvmconf.engine.guard import holding
    except ImportError:  # a baseline from before the hang watch
        from contextlib import nullcontext as holding
    with holding():
        for _ in range(3):
            c0, w0 = time.process_time(), time.perf_counter()
            for s in schedules:
                run_schedule(g, b, s, opts)
            c, w = time.process_time() - c0, time.perf_counter() - w0
            best = min(best, (c / len(schedules), w / len(schedules)))
    return best


def req_guarantees() -> dict:
    try:
        from pytest_kvmconf.backend import skip_reason
    except ImportError:  # a baseline from before it
        def skip_reason(*_: object) -> None:
            return None
    b = ReferenceBackend()
    return {g.id: g for g in load_files(spec_files([ROOT / "specs"]))
            if g.id.startswith("REQ-") and ".live" not in g.id and ".trace" not in g.id
            and skip_reason(b, g.needs, g.arch, version_for(g.id)) is None}


def measure(models: list[str], n: int) -> dict[str, dict[str, tuple[float, float]]]:
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for gid, g in sorted(req_guarantees().items()):
        schedules = draw(g, n)
        assumed = getattr(g, "memory_models", ("sc",))  # a baseline from before the key
        out[gid] = {m: cost(g, schedules, m) for m in models if m in assumed}
    return out


def baseline(rev: str, n: int) -> dict[str, dict[str, tuple[float, float]]]:
    """The same sc measurement with the package as it was at ``rev`` (a subprocess, same run)."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", tmp, rev],
                       check=True, capture_output=True)
        try:
            me = Path(__file__).resolve()
            res = subprocess.run([sys.executable, str(me), "--json", "--schedules", str(n), "--root", tmp],
                                 check=True, capture_output=True, text=True)
            return json.loads(res.stdout)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", tmp], capture_output=True)


def examples_to_catch(g, b, model: str, s: int, budget: int) -> int | None:
    count = 0
    opts = options(g.id, model)

    @seed(s)
    @settings(max_examples=budget, phases=[Phase.generate], **QUIET)
    @given(schedule_strategy(g, version_for(g.id)))
    def hunt(schedule):
        nonlocal count
        count += 1
        if run_schedule(g, b, schedule, opts).violation is not None:
            raise AssertionError("caught")

    try:
        hunt()
    except AssertionError:
        return count
    return None


def litmus(n: int, every: int) -> None:
    """Each translated test: its schedules enumerated depth-first up to ``every`` runs (all of them
    for the small ones), then ``n`` hypothesis-drawn schedules; the verdict against the file's."""
    from pytest_kvmconf.spec.loader import load_file
    from tests.enumerate import walk

    print(f"\n{'kernel litmus test (lkmm)':<60}{'stated':>10}{'ours':>10}{'agree':>6}  schedules run")
    agree = total = 0
    for g in load_file(ROOT / "tests" / "litmus" / "lkmm.toml"):
        stated = g.quote.split(".")[0].removeprefix("Result: ")
        opts, b = RunOptions("6.18", memory_model="lkmm"), ReferenceBackend()

        def hit(o) -> bool:
            return o.violation is not None or bool(o.reached)

        runs, complete, found = walk(g, b, opts, every, hit)
        how = f"every schedule ({runs})" if complete else f"{runs} enumerated"
        sampled = 0
        if found is None and not complete:
            for s in draw(g, n):
                sampled += 1
                if hit(run_schedule(g, b, s, opts)):
                    found = True
                    break
            how += f" + {sampled} drawn"
        seen = "Never" if found is None else "Sometimes"
        total += 1
        agree += seen == stated
        print(f"{g.section:<60}{stated:>10}{seen:>10}{'yes' if seen == stated else 'NO':>6}  {how}")
    print(f"{agree} of {total} agree with the kernel's stated result")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schedules", type=int, default=200, help="schedules per spec for the cost table")
    ap.add_argument("--seeds", type=int, default=5, help="seeds per missing-barrier variant")
    ap.add_argument("--budget", type=int, default=2000, help="example budget for the hunt")
    ap.add_argument("--baseline-rev", default=None, help="git revision to measure sc against")
    ap.add_argument("--litmus", type=int, default=0, help="drawn schedules per translated litmus test")
    ap.add_argument("--litmus-every", type=int, default=20000,
                    help="enumerated schedules per litmus test before drawing (all of a small one)")
    ap.add_argument("--only-litmus", action="store_true", help="skip the cost and hunt tables")
    ap.add_argument("--no-hunt", action="store_true", help="skip the missing-barrier table")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--root", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.json:  # the baseline's side: sc only, as plain data
        print(json.dumps(measure(["sc"], args.schedules)))
        return

    if args.only_litmus:
        litmus(args.litmus or 2000, args.litmus_every)
        return
    figures = measure(["sc", "tso", "lkmm"], args.schedules)
    base = baseline(args.baseline_rev, args.schedules) if args.baseline_rev else {}
    head = f"{'spec':<10}" + (f"{'base cpu':>10}" if base else "") + \
        "".join(f"{m + ' cpu':>10}{m + ' wall':>10}" for m in ("sc", "tso", "lkmm")) + "   (us/schedule)"
    print(head)
    totals: dict[str, list[float]] = {}
    for gid, per in figures.items():
        row = f"{gid:<10}"
        if base:
            b = base.get(gid, {}).get("sc")
            row += f"{b[0] * 1e6:>10.0f}" if b else f"{'-':>10}"
            if b and "sc" in per:
                totals.setdefault("base", []).append(b[0])
                totals.setdefault("sc/base", []).append(per["sc"][0])
        for m in ("sc", "tso", "lkmm"):
            if m in per:
                row += f"{per[m][0] * 1e6:>10.0f}{per[m][1] * 1e6:>10.0f}"
                totals.setdefault(m, []).append(per[m][0])
            else:
                row += f"{'skip':>10}{'':>10}"
        print(row)
    common = [gid for gid, per in figures.items() if all(m in per for m in ("sc", "tso", "lkmm"))]
    sc = sum(figures[g]["sc"][0] for g in common)
    print(f"\nover the {len(common)} specs all three models run: tso costs "
          f"{sum(figures[g]['tso'][0] for g in common) / sc:.2f} x sc, lkmm "
          f"{sum(figures[g]['lkmm'][0] for g in common) / sc:.2f} x sc (CPU time per schedule)")
    if base:
        print(f"sc against {args.baseline_rev}: {sum(totals['sc/base']) / sum(totals['base']):.3f} x "
              "(CPU time, same schedules, same run)")

    if args.no_hunt:
        if args.litmus:
            litmus(args.litmus, args.litmus_every)
        return
    from tests.bite import guarantees
    from tests.broken.barriers import VARIANTS, backend

    print(f"\n{'missing barrier':<32}{'spec':<8}{'model':<6}{'examples to catch (per seed)':<36}"
          f"{'median':>7}{'max':>6}")
    worst = 0
    for name, (_, gids, models, _) in VARIANTS.items():
        for gid in gids:
            for m in ("sc", "tso", "lkmm"):
                counts = [examples_to_catch(guarantees()[gid], backend(name), m, s,
                                            args.budget if m in models else 100)
                          for s in range(args.seeds)]
                shown = ", ".join("-" if c is None else str(c) for c in counts)
                known = [c for c in counts if c is not None]
                med = statistics.median(known) if known else float("nan")
                top = max(known) if len(known) == len(counts) else "-"
                label = m if m in models else f"{m}*"
                print(f"{name:<32}{gid:<8}{label:<6}{shown:<36}{med:>7}{top!s:>6}")
                if m in models:
                    worst = max(worst, max(known) if len(known) == len(counts) else args.budget + 1)
    print("\n* the model forbids the reordering: '-' (not caught in 100) is the right answer there.")
    print(f"worst case where it must be caught: {worst} examples (target: 100; budget here {args.budget})")
    if args.litmus:
        litmus(args.litmus, args.litmus_every)


if __name__ == "__main__":
    main()
