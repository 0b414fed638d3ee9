"""What a user pays per example: the whole search, as the plugin runs it, on every guarantee.

Run from the repository root:  python benchmarks/bench_user.py [--examples N] [--seeds K] [--modes ...]

For every guarantee of specs/ (all areas, each at a document text that states it) and every mode
(reference; threaded controlled; threaded free), engine.explore.explore runs exactly as a test item
runs it (hypothesis drawing and bookkeeping, the engine, the backend, free mode's repetitions; no
database, so no replays), with a fixed budget per seed. It measures CPU time of the whole process
(every thread, so the threaded backend's OS threads count) beside wall time, and prints the load
average before and after, because these machines are shared.

Headline per mode: CPU milliseconds per example over all guarantees, split into the part inside
the runs (engine and backend) and the rest (hypothesis' own cost); and the tail over guarantees
(median, 90th percentile, worst). Baseline in the same run: the figure the older benchmark
headlined (time inside run_schedule alone, REQ specs only), here in CPU time, so the gap between
what was reported and what a user pays is visible.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from hypothesis import settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pytest_kvmconf.backend import skip_reason  # noqa: E402
from pytest_kvmconf.backends.reference import ReferenceBackend  # noqa: E402
from pytest_kvmconf.backends.threaded import ThreadedBackend  # noqa: E402
from pytest_kvmconf.engine.explore import NothingReached, ViolationFound, explore  # noqa: E402
from pytest_kvmconf.engine.runner import RunOptions  # noqa: E402
from pytest_kvmconf.spec.loader import load_files, spec_files  # noqa: E402
from pytest_kvmconf.spec.versions import KNOWN_VERSIONS, NEWEST  # noqa: E402

MODES = {
    "reference": (ReferenceBackend, False),
    "threaded": (ThreadedBackend, False),
    "threaded-free": (ThreadedBackend, True),
}


def version_for(g) -> str:
    if g.versions.contains(NEWEST):
        return NEWEST
    return next(v for v in reversed(KNOWN_VERSIONS) if g.versions.contains(v))


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} CPUs"


def measure(g, backend, free: bool, examples: int, seeds: int) -> dict | None:
    """CPU and wall seconds and examples of ``seeds`` searches of ``g``; None when it cannot run."""
    version = version_for(g)
    if skip_reason(backend, g.needs, g.arch, version):
        return None
    options = RunOptions(version, free=free)
    base = settings(max_examples=examples, database=None)
    cpu = wall = inside = inside_cpu = 0.0
    n = 0
    verdicts = set()
    for s in range(seeds):
        c0, w0 = time.process_time(), time.perf_counter()
        try:
            stats = explore(g, backend, options, base=base, seed=s)
            verdicts.add("pass")
        except (ViolationFound, NothingReached) as exc:
            stats = exc.stats
            verdicts.add(type(exc).__name__)
        cpu += time.process_time() - c0
        wall += time.perf_counter() - w0
        n += stats.examples
        inside += stats.coverage.running
        inside_cpu += stats.coverage.running_cpu
    return {"cpu": cpu, "wall": wall, "examples": n, "inside": inside, "inside_cpu": inside_cpu,
            "verdicts": verdicts}


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=30, help="examples per search")
    ap.add_argument("--seeds", type=int, default=2, help="searches (seeds) per guarantee and mode")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    ap.add_argument("--only", default="", help="guarantee id prefix, e.g. REQ- (default: all)")
    args = ap.parse_args()

    guarantees = [g for g in load_files(spec_files([ROOT / "specs"])) if g.id.startswith(args.only)]
    print(f"{len(guarantees)} guarantees, {args.seeds} seeds x {args.examples} examples each; {load()}")
    for mode in args.modes.split(","):
        factory, free = MODES[mode]
        backend = factory()
        rows = {}
        start_load = load()
        for g in guarantees:
            r = measure(g, backend, free, args.examples, args.seeds)
            if r is not None:
                rows[g.id] = r
        cpu = sum(r["cpu"] for r in rows.values())
        n = sum(r["examples"] for r in rows.values())
        inside_cpu = sum(r["inside_cpu"] for r in rows.values())
        wall = sum(r["wall"] for r in rows.values())
        per = [r["cpu"] / r["examples"] * 1e3 for r in rows.values() if r["examples"]]
        worst = max(rows, key=lambda k: rows[k]["cpu"] / max(rows[k]["examples"], 1))
        req = {k: r for k, r in rows.items() if k.startswith("REQ-")}
        old = sum(r["inside_cpu"] for r in req.values()) / max(sum(r["examples"] for r in req.values()), 1) * 1e3
        odd = {k: sorted(r["verdicts"]) for k, r in rows.items() if r["verdicts"] != {"pass"}}
        print(f"\n== {mode}: {len(rows)} guarantees checkable, {len(guarantees) - len(rows)} skipped "
              f"(before: {start_load}; after: {load()})")
        print(f"  headline: {cpu / n * 1e3:.2f} ms CPU per example ({wall / n * 1e3:.2f} ms wall), of which "
              f"{inside_cpu / n * 1e3:.2f} ms inside the runs and {(cpu - inside_cpu) / n * 1e3:.2f} ms "
              f"hypothesis and the search around them")
        print(f"  over guarantees, ms CPU per example: median {statistics.median(per):.2f}, "
              f"90th percentile {percentile(per, 0.9):.2f}, worst {max(per):.2f} ({worst})")
        print(f"  baseline, measured the way the old headline was (time inside run_schedule only, REQ specs "
              f"only), in CPU time: {old:.2f} ms per schedule")
        if odd:
            print(f"  not a plain pass (the figures still count): {odd}")


if __name__ == "__main__":
    main()
