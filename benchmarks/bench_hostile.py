"""What the hostile-input guards cost on the normal path, and what compiling conditions saves.

Run from the repository root:  python benchmarks/bench_hostile.py [--examples N] [--base DIR]

CPU time (time.process_time, this process and all its threads) beside wall time, for the
same fixed schedules in the same run, over every guarantee the backends can check:

1. conditions: every check of every spec evaluated on the final states of the schedules,
   by the compiled closures (spec/expr.py) and, with ``--base DIR`` (a checkout from before
   the change), by the old tree walker of DIR/pytest_kvmconf/spec/expr.py;
2. reference backend: run_schedule with the generator run (and new_machine/close) watched for
   hangs as pytest runs it (a watchdog thread and a signal, see engine/guard.py; the signal's
   handler held once per guarantee by guard.watching), watched by a caller outside
   guard.watching (the handler installed and restored around every run: two signal.signal
   calls), and unwatched; and the watch's own cost per run, measured around an empty run (the
   whole-run figures are noisy on a shared machine, this one is not);
3. threaded backend: pooled workers reused across schedules (the default, WORKER_IDLE > 0),
   the same with the backend's methods outside operations (new_machine, observe, close)
   unwatched, and a fresh OS thread per spec thread and schedule (WORKER_IDLE = 0).

The variants run in interleaved rounds in alternating order (--rounds, default 10); each row
shows the median CPU per schedule over the rounds, the range of the rounds, and the median of
the per-round ratios to the first row: on a loaded 2-core machine single rounds of the same
variant differ by 10 % and more, so one round's ratio says little. Every timed round starts
with gc.collect(): without it the full collections, which come at a fixed rhythm of allocations,
fell on the same variant's rounds again and again, and two variants running identical code
differed by 7 % (the 8-11 % once reported as the cost of the hang watch was mostly that).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pytest_kvmconf.backend import skip_reason  # noqa: E402
from pytest_kvmconf.backends.reference import ReferenceBackend  # noqa: E402
from pytest_kvmconf.backends.threaded import ThreadedBackend  # noqa: E402
from pytest_kvmconf.engine import guard, runner, workers  # noqa: E402
from pytest_kvmconf.engine.runner import RunOptions, run_schedule  # noqa: E402
from pytest_kvmconf.spec.loader import load_files, spec_files  # noqa: E402
from pytest_kvmconf.strategies import schedule_strategy  # noqa: E402

QUIET = dict(database=None, deadline=None, suppress_health_check=list(HealthCheck))
VERSION = "6.18"


def schedules(g, n: int) -> list:
    out: list = []

    @seed(0)
    @settings(max_examples=n, phases=[Phase.generate], **QUIET)
    @given(schedule_strategy(g, VERSION))
    def draw(s):
        out.append(s)

    draw()
    return out


def timed(fn) -> tuple[float, float]:
    """(cpu seconds, wall seconds) of fn()."""
    c, w = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c, time.perf_counter() - w


def checkable(backend) -> list:
    gs = load_files(spec_files([ROOT / "specs"]))
    return [g for g in gs if g.versions.contains(VERSION)
            and skip_reason(backend, g.needs, g.arch, VERSION) is None]


def old_evaluator(base: Path):
    """The tree walker of ``base``'s spec/expr.py (standard library only), run standalone."""
    spec = importlib.util.spec_from_file_location("old_expr", base / "pytest_kvmconf" / "spec" / "expr.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_expr"] = module
    spec.loader.exec_module(module)
    return module._eval


def bench_conditions(gs: list, n: int, base: Path | None) -> None:
    reference = ReferenceBackend()
    cases = []  # (expr, env) pairs met in real runs
    for g in gs:
        for s in schedules(g, n):
            out = run_schedule(g, reference, s, RunOptions(VERSION))
            if out.final_state is None or out.violation is not None:
                continue
            env = {**runner.facets.all_constants(), **dict(s.params), "nr_vcpus": 0, **out.final_state,
                   "threads": {}, "step": runner.NO_STEP}
            for c in g.checks:
                if c.kind != "always":
                    cases.append((c.expr, env))
    ok = []
    for e, env in cases:
        try:
            e.evaluate(env)
            ok.append((e, env))
        except Exception:
            pass
    reps = max(1, 200_000 // max(len(ok), 1))
    cpu, wall = timed(lambda: [e.evaluate(env) for _ in range(reps) for e, env in ok])
    count = reps * len(ok)
    print(f"conditions: {len(ok)} (condition, final state) pairs from {len(gs)} guarantees, x{reps}")
    print(f"  compiled closures   {cpu / count * 1e6:8.2f} us CPU per evaluation ({wall / count * 1e6:.2f} wall)")
    if base is not None:
        walk = old_evaluator(base)
        cpu0, wall0 = timed(lambda: [walk(e.tree.body, env) for _ in range(reps) for e, env in ok])
        print(f"  old tree walker     {cpu0 / count * 1e6:8.2f} us CPU per evaluation ({wall0 / count * 1e6:.2f} wall)"
              f"   compiled/old = {cpu / cpu0:.2f}")


def bench_runs(label: str, backend, gs: list, n: int, variants: dict, rounds: int) -> None:
    """``variants``: name -> (setup, undo, per_guarantee); per_guarantee runs each guarantee's
    schedules inside guard.watching, as pytest does."""
    drawn = {g.id: schedules(g, n) for g in gs}
    total = sum(map(len, drawn.values()))
    print(f"{label}: {total} schedules over {len(gs)} guarantees, {rounds} rounds")

    def run_all(per_guarantee: bool) -> None:
        for g in gs:
            with guard.watching(g.id, backend) if per_guarantee else contextlib.nullcontext():
                for s in drawn[g.id]:
                    run_schedule(g, backend, s, RunOptions(VERSION))

    results: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for round_ in range(rounds):  # interleaved rounds in alternating order: load and warm-up hit all alike
        order = list(variants.items())
        for name, (setup, undo, per_guarantee) in (order if round_ % 2 == 0 else order[::-1]):
            setup()
            gc.collect()  # see the module's docstring
            try:
                results[name].append(timed(functools.partial(run_all, per_guarantee)))
            finally:
                undo()
    first = next(iter(variants))
    for name in variants:
        cpus = [c / total * 1e6 for c, _ in results[name]]
        walls = [w / total * 1e6 for _, w in results[name]]
        ratios = [c / c0 for (c, _), (c0, _) in zip(results[name], results[first])]
        print(f"  {name:<44} {statistics.median(cpus):6.0f} us CPU per schedule "
              f"(rounds {min(cpus):.0f}-{max(cpus):.0f}; wall {statistics.median(walls):.0f})"
              f"   x{statistics.median(ratios):.3f} (rounds x{min(ratios):.2f}-x{max(ratios):.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=50, help="schedules per guarantee")
    ap.add_argument("--rounds", type=int, default=10, help="interleaved rounds per variant")
    ap.add_argument("--base", type=Path, default=None, help="a checkout from before the change (old evaluator)")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cpus\n")
    reference, threaded = ReferenceBackend(), ThreadedBackend()
    gs = checkable(reference)
    bench_conditions(gs, max(5, args.examples // 5), args.base)
    print()
    watched, bounded = guard.watched, guard.bounded

    def direct(run, progress, timeout, what):
        run()

    def use_direct():  # no hang watch at all: generator runs, and backend methods outside them
        guard.watched = direct
        guard.bounded = lambda backend, method, call, timeout: call()

    def restore():
        guard.watched, guard.bounded = watched, bounded

    progress, empty, n = guard.Progress(), (lambda: None), 50_000
    cpu, _ = timed(lambda: [watched(empty, progress, 5.0, "empty") for _ in range(n)])
    with guard.watching("empty", reference):
        held, _ = timed(lambda: [watched(empty, progress, 5.0, "empty") for _ in range(n)])
    print(f"hang watch around a generator run (empty run): {held / n * 1e6:.1f} us CPU per run inside "
          f"guard.watching, {cpu / n * 1e6:.1f} us outside it (the handler installed per run)\n")
    bench_runs("reference", reference, gs, args.examples, {
        "watched, handler per guarantee (pytest)": (lambda: None, lambda: None, True),
        "watched, handler per run (outside watching)": (lambda: None, lambda: None, False),
        "unwatched (no hang detection)": (use_direct, restore, True),
    }, args.rounds)
    print()
    idle = workers.WORKER_IDLE

    def fresh():
        workers.WORKER_IDLE = 0

    def reset():
        workers.WORKER_IDLE = idle

    bench_runs("threaded", threaded, checkable(threaded), max(5, args.examples // 2), {
        "pooled workers (default)": (lambda: None, lambda: None, True),
        "pooled, backend methods unwatched": (use_direct, restore, True),
        "a fresh OS thread per spec thread": (fresh, reset, True),
    }, max(2, args.rounds // 2))


if __name__ == "__main__":
    main()
