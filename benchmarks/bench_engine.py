"""How fast the engine runs schedules, what it adds to hypothesis, and how fast specs bite.

Run from the repository root:  python benchmarks/bench_engine.py [--examples N] [--seeds K]

Prints three tables:
1. per REQ spec on the reference backend: schedules per second of the engine alone (time inside
   run_schedule), hypothesis' own cost per example for a bare test drawing the same schedules, and
   the engine's cost as a fraction of hypothesis' own;
2. the totals over all REQ specs (targets: >= 1,000 schedules/s on one core, engine <= 0.5 x
   hypothesis' own cost);
3. per broken variant in tests/broken/requests.py: examples until its spec caught it, over several
   seeds (target: every variant within 100).

Times are CPU time of the process (time.process_time), with the load average printed before and
after, because these machines are shared. This table is the engine's own speed; what a user pays
per example (hypothesis included, every guarantee, free mode's repetitions) is
benchmarks/bench_user.py's headline.
"""

from __future__ import annotations

import argparse
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
from pytest_kvmconf.engine import guard  # noqa: E402
from pytest_kvmconf.engine.runner import RunOptions, run_schedule  # noqa: E402
from pytest_kvmconf.spec.loader import load_files, spec_files  # noqa: E402
from pytest_kvmconf.strategies import schedule_strategy  # noqa: E402
from tests.broken.requests import VARIANTS, backend  # noqa: E402

QUIET = dict(database=None, deadline=None, suppress_health_check=list(HealthCheck))


def version_for(gid: str) -> str:
    return "4.13" if gid.startswith("REQ-26") else "6.18"


def bare_cost(g, version: str, n: int) -> float:
    """Seconds per example of hypothesis alone, drawing the same schedules."""
    @settings(max_examples=n, phases=[Phase.generate], **QUIET)
    @given(schedule_strategy(g, version))
    def bare(schedule):
        pass

    start = time.process_time()
    bare()
    return (time.process_time() - start) / n


def engine_cost(g, version: str, n: int) -> tuple[float, int]:
    """Seconds per schedule inside the engine, and the number of schedules run."""
    spent, count = 0.0, 0
    b = ReferenceBackend()
    options = RunOptions(version)

    @settings(max_examples=n, phases=[Phase.generate], **QUIET)
    @given(schedule_strategy(g, version))
    def full(schedule):
        nonlocal spent, count
        start = time.process_time()
        run_schedule(g, b, schedule, options)
        spent += time.process_time() - start
        count += 1

    with guard.watching(g.id, b):  # as pytest runs a guarantee
        full()
    return spent / max(count, 1), count


def examples_to_catch(g, b, version: str, s: int, budget: int) -> int | None:
    """Examples hypothesis generated until the first violation (None: not within budget).

    For an existence check the question is the other way round: the variant is caught when no
    example within the budget reaches the outcome; this returns the budget then."""
    count = 0
    options = RunOptions(version)
    wanted = {i for i, c in enumerate(g.checks) if c.kind == "exists"}
    reached: set[int] = set()

    @seed(s)
    @settings(max_examples=budget, phases=[Phase.generate], **QUIET)
    @given(schedule_strategy(g, version))
    def hunt(schedule):
        nonlocal count
        count += 1
        outcome = run_schedule(g, b, schedule, options)
        if outcome.violation is not None:
            raise AssertionError("caught")
        reached.update(outcome.reached)

    try:
        hunt()
    except AssertionError:
        return count
    if wanted and not wanted <= reached:
        return count
    return None


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} CPUs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=300, help="schedules per spec for the speed table")
    ap.add_argument("--seeds", type=int, default=5, help="seeds per broken variant")
    ap.add_argument("--budget", type=int, default=100, help="example budget for catching a variant")
    args = ap.parse_args()

    reference = ReferenceBackend()  # the REQ specs it can check (the live ones need the kvm backend)
    guarantees = {g.id: g for g in load_files(spec_files([ROOT / "specs"])) if g.id.startswith("REQ-")
                  and g.versions.contains(version_for(g.id))
                  and skip_reason(reference, g.needs, g.arch, version_for(g.id)) is None}
    print(f"CPU time; {load()}")
    print(f"{'spec':<10}{'engine sched/s':>16}{'hypothesis us/ex':>18}{'engine us/sched':>17}{'engine/hyp':>12}")
    total_engine = total_bare = 0.0
    total_n = 0
    for gid, g in sorted(guarantees.items()):
        version = version_for(gid)
        bare = bare_cost(g, version, args.examples)
        eng, n = engine_cost(g, version, args.examples)
        total_engine += eng * n
        total_bare += bare * n
        total_n += n
        print(f"{gid:<10}{1 / eng:>16,.0f}{bare * 1e6:>18,.0f}{eng * 1e6:>17,.0f}{eng / bare:>12.2f}")
    print(f"{'all REQ':<10}{total_n / total_engine:>16,.0f}{total_bare / total_n * 1e6:>18,.0f}"
          f"{total_engine / total_n * 1e6:>17,.0f}{total_engine / total_bare:>12.2f}")
    print(f"\ntargets: >= 1,000 schedules/s (engine alone: {total_n / total_engine:,.0f}); "
          f"engine <= 0.5 x hypothesis' own cost ({total_engine / total_bare:.2f})\n")

    print(f"{'broken variant':<24}{'spec':<10}{'examples to catch (per seed)':<34}{'median':>7}{'max':>6}")
    worst = 0
    for name, (_, gids, _) in VARIANTS.items():
        b = backend(name)
        for gid in gids:
            g = guarantees[gid]
            counts = [examples_to_catch(g, b, version_for(gid), s, args.budget) for s in range(args.seeds)]
            shown = ", ".join("-" if c is None else str(c) for c in counts)
            known = [c for c in counts if c is not None]
            med = statistics.median(known) if known else float("nan")
            top = max(known) if len(known) == len(counts) else f">{args.budget}"
            worst = max(worst, max(known) if known else args.budget + 1)
            if len(known) < len(counts):
                worst = args.budget + 1
            print(f"{name:<24}{gid:<10}{shown:<34}{med:>7}{top!s:>6}")
    print(f"\nworst case: {worst} examples (target: every variant within {args.budget})")
    print(f"after: {load()}")


if __name__ == "__main__":
    main()
