"""What the hostile-input guards cost on the normal path, and what compiling conditions saves.

Run from the repository root:  python benchmarks/bench_hostile.py [--examples N] [--base DIR]

CPU time (time.process_time, this process and all its threads) beside wall time, for the
same fixed schedules in the same run, over every guarantee the backends can check:

1. conditions: every check of every spec evaluated on the final states of the schedules,
   by the compiled closures (spec/expr.py) and, with ``--base DIR`` (a checkout from before
   the change), by the old tree walker of DIR/pytest_kvmconf/spec/expr.py;
2. reference backend: run_schedule with the generator run watched for hangs (the default: a
   watchdog thread and a signal, see engine/guard.py) against the same run unwatched; and the
   watch's own cost per run, measured around an empty run (the whole-run figures are noisy on
   a shared machine, this one is not);
3. threaded backend: pooled workers reused across schedules (the default, WORKER_IDLE > 0)
   against a fresh OS thread per spec thread and schedule (WORKER_IDLE = 0).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
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


def bench_runs(label: str, backend, gs: list, n: int, variants: dict) -> None:
    drawn = {g.id: schedules(g, n) for g in gs}
    print(f"{label}: {sum(map(len, drawn.values()))} schedules over {len(gs)} guarantees")
    results = {}
    for round_ in range(4):  # interleaved rounds in alternating order: load and warm-up hit all alike
        order = list(variants.items())
        for name, (setup, undo) in (order if round_ % 2 == 0 else order[::-1]):
            setup()
            try:
                cpu, wall = timed(lambda: [run_schedule(g, backend, s, RunOptions(VERSION))
                                           for g in gs for s in drawn[g.id]])
            finally:
                undo()
            c0, w0 = results.get(name, (0.0, 0.0))
            results[name] = (c0 + cpu, w0 + wall)
    total = 4 * sum(map(len, drawn.values()))
    first = None
    for name in variants:
        cpu, wall = results[name]
        first = first or cpu
        print(f"  {name:<34} {cpu / total * 1e6:8.0f} us CPU per schedule ({wall / total * 1e6:.0f} wall)"
              f"   x{cpu / first:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=50, help="schedules per guarantee")
    ap.add_argument("--base", type=Path, default=None, help="a checkout from before the change (old evaluator)")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cpus\n")
    reference, threaded = ReferenceBackend(), ThreadedBackend()
    gs = checkable(reference)
    bench_conditions(gs, max(5, args.examples // 5), args.base)
    print()
    watched = guard.watched

    def direct(run, progress, timeout, what):
        run()

    def use_direct():
        guard.watched = direct

    def restore():
        guard.watched = watched

    progress, empty, n = guard.Progress(), (lambda: None), 50_000
    cpu, _ = timed(lambda: [watched(empty, progress, 5.0, "empty") for _ in range(n)])
    print(f"hang watch around a generator run: {cpu / n * 1e6:.1f} us CPU per run (empty run)\n")
    bench_runs("reference", reference, gs, args.examples, {
        "watched generator run (default)": (lambda: None, lambda: None),
        "direct, unwatched": (use_direct, restore),
    })
    print()
    idle = workers.WORKER_IDLE

    def fresh():
        workers.WORKER_IDLE = 0

    def reset():
        workers.WORKER_IDLE = idle

    bench_runs("threaded", threaded, checkable(threaded), max(5, args.examples // 2), {
        "pooled workers (default)": (lambda: None, lambda: None),
        "a fresh OS thread per spec thread": (fresh, reset),
    })


if __name__ == "__main__":
    main()
