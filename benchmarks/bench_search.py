"""Search power: schedules and CPU to the first violation, per broken variant and search.

Run from the repository root:
    python benchmarks/bench_search.py [--seeds 50] [--seed-base 0] [--cap 1000] [--searches mixed,random,pct:3]
                                      [--variants SUBSTR,...] [--jobs 2] [--json out.json]

For every broken variant of tests/broken and each guarantee that must catch it (reference and
threaded, as tests/bite.broken_cases() lists them; a missing barrier of tests/broken/barriers.py
under each memory model that lets its reordering happen, named VARIANT@MODEL), each search hunts with seeds 0..N-1 (the
generate phase only, no database, no shrinking; at most --cap schedules) and the table shows, per
search side by side:
  med / p90   schedules to the first violation (">cap" when a seed did not find it),
  in100       the share of seeds that found it within the default budget (100 schedules),
  cpu ms      median CPU milliseconds (time.process_time) to the first violation, and wall ms beside it.
A second table: distinct interleavings per 100 schedules (distinct timelines: which thread ran
which step, in order) of each search on the guarantee against the correct backend.
A guarantee with an existence check (``exists``) is hunted with the default budget first: its
check can only fail when a budget ends, so a NothingReached there counts as caught at 100.
The closing lines give, per search, the worst in100, and the variants where the first search's
median or CPU exceed the targets (median <= random's; CPU <= 2 x random's).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from contextlib import nullcontext
from multiprocessing import Pool
from pathlib import Path

from hypothesis import Phase, settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pytest_kvmconf.engine.explore as explore_module  # noqa: E402
from pytest_kvmconf.backends.reference import ReferenceBackend  # noqa: E402
from pytest_kvmconf.backends.threaded import ThreadedBackend  # noqa: E402
from pytest_kvmconf.engine.explore import NothingReached, ViolationFound, explore  # noqa: E402
from pytest_kvmconf.engine.runner import RunOptions  # noqa: E402
from pytest_kvmconf.engine.search import DEFAULT_SEARCH  # noqa: E402
from tests.bite import BUDGET, BrokenCase, broken_cases, guarantees  # noqa: E402

DISTINCT_SEEDS = 3
#: CPU medians below this are a schedule or two: not judged against the 2 x random target.
CPU_FLOOR = 0.005


def options(case: BrokenCase) -> RunOptions:
    return RunOptions(case.doc_version, memory_model=case.memory_model)


def hunt(case: BrokenCase, search: str, seed: int, cap: int) -> tuple[int | None, float, float]:
    """(schedules to the first violation or None, CPU seconds, wall seconds).

    An existence check can only fail when a budget ends: a guarantee with one is first hunted
    with the default budget, and a NothingReached there counts as caught at that budget."""
    g = guarantees()[case.gid]
    cpu, wall = time.process_time(), time.perf_counter()
    found = None
    for budget in ((BUDGET, cap) if g.has_exists and cap > BUDGET else (cap,)):
        base = settings(max_examples=budget, database=None, deadline=None, phases=[Phase.generate])
        try:
            explore(g, case.backend(), options(case), base, seed=seed, search=search)
        except ViolationFound as exc:
            found = exc.stats.coverage.first_violation
            break
        except NothingReached:
            if budget == BUDGET:
                found = BUDGET
                break
    return found, time.process_time() - cpu, time.perf_counter() - wall


def distinct(case: BrokenCase, search: str, seeds: int) -> float:
    """Distinct timelines per 100 schedules on the correct backend (averaged over seeds)."""
    g = guarantees()[case.gid]
    threaded = case.family.startswith("threaded") or case.variant.split("@")[0].endswith("Threaded")
    correct = ThreadedBackend() if threaded else ReferenceBackend()
    seen_per_seed = []
    real = explore_module.run_schedule
    timelines: list[tuple] = []

    def recording(*args, **kwargs):
        out = real(*args, **kwargs)
        timelines.append(tuple((e.thread, e.texts) for e in out.timeline))
        return out

    for seed in range(seeds):
        timelines.clear()
        explore_module.run_schedule = recording
        try:
            base = settings(max_examples=100, database=None, deadline=None, phases=[Phase.generate])
            explore(g, correct, options(case), base, seed=seed, search=search)
        except (ViolationFound, NothingReached):
            pass
        finally:
            explore_module.run_schedule = real
        if timelines:
            seen_per_seed.append(100 * len(set(timelines)) / len(timelines))
    return statistics.mean(seen_per_seed) if seen_per_seed else float("nan")


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, math.ceil(q * len(s)) - 1)]


def measure(job: tuple[int, list[str], int, int, bool, int]) -> dict:
    # A case travels as its index into broken_cases(): its backend factory is a lambda, which
    # does not pickle to a --jobs worker.
    index, searches, seeds, cap, with_distinct, base = job
    case = broken_cases()[index]
    row: dict = {"family": case.family, "variant": case.variant, "gid": case.gid, "searches": {}}
    for search in searches:
        results = [hunt(case, search, s, cap) for s in range(base, base + seeds)]
        counts = [cap + 1 if n is None else n for n, _, _ in results]
        row["searches"][search] = {
            "counts": counts,
            "median": statistics.median(counts),
            "p90": percentile(counts, 0.9),
            "in_budget": sum(c <= BUDGET for c in counts) / len(counts),
            # Hits per schedule run (found seeds / all schedules run, misses at the cap included):
            # the maximum-likelihood rate of a geometric wait, far less noisy than the median.
            "rate": sum(n is not None for n, _, _ in results) / sum(min(c, cap) for c in counts),
            "cpu": statistics.median(c for _, c, _ in results),
            "wall": statistics.median(w for _, _, w in results),
            "distinct": distinct(case, search, DISTINCT_SEEDS) if with_distinct else None,
        }
    return row


def shown(x: float, cap: int) -> str:
    return f">{cap}" if x > cap else f"{x:g}"


def print_tables(rows: list[dict], searches: list[str], distinct: bool) -> None:
    caps = {s: max(r["searches"][s].get("cap", 0) for r in rows) for s in searches}
    print(f"{len(rows)} cases, seeds and cap per search: "
          + ", ".join(f"{s} {rows[0]['searches'][s].get('seeds', '?')} seeds cap {caps[s]}" for s in searches))
    print(f"per search: median / p90 schedules to the first violation, share of seeds within {BUDGET}, "
          "hits per 100 schedules, median CPU ms (wall ms)")
    print(f"{'variant':<34}{'spec':<9}" + "".join(f"{s:^40}" for s in searches))
    for r in rows:
        cells = []
        for s in searches:
            x, cap = r["searches"][s], caps[s]
            cells.append(f"{shown(x['median'], cap):>6} /{shown(x['p90'], cap):>5} "
                         f"{x['in_budget']:>5.0%} {100 * x['rate']:>5.1f} {x['cpu'] * 1e3:>6.0f} "
                         f"({x['wall'] * 1e3:>5.0f})  ")
        print(f"{r['variant'][:33]:<34}{r['gid']:<9}" + "".join(cells))

    if distinct:
        print(f"\ndistinct interleavings per 100 schedules on the correct backend (mean of {DISTINCT_SEEDS} seeds)")
        print(f"{'spec':<9}{'family':<13}" + "".join(f"{s:>12}" for s in searches))
        done = set()
        for r in rows:
            if (r["gid"], r["family"]) in done:
                continue
            done.add((r["gid"], r["family"]))
            print(f"{r['gid']:<9}{r['family']:<13}" + "".join(f"{r['searches'][s]['distinct']:>12.1f}"
                                                           for s in searches))

    print()
    for s in searches:
        worst = min(r["searches"][s]["in_budget"] for r in rows)
        missed = sum(r["searches"][s]["in_budget"] < 0.99 for r in rows)
        meds = [r["searches"][s]["median"] for r in rows]
        cpus = [r["searches"][s]["cpu"] for r in rows]
        dist = [r["searches"][s]["distinct"] for r in rows if r["searches"][s].get("distinct") is not None]
        print(f"{s:<12} worst share within {BUDGET}: {worst:.0%} ({missed} cases under 99%); sum of medians "
              f"{sum(meds):g}; sum of median CPU {sum(cpus):.2f} s"
              + (f"; mean distinct per 100: {statistics.mean(dist):.1f}" if dist else ""))
    if "random" in searches and searches[0] != "random":
        first = searches[0]
        slower = [f"{r['variant']}/{r['gid']} ({r['searches'][first]['median']:g} vs "
                  f"{r['searches']['random']['median']:g})" for r in rows
                  if r["searches"][first]["median"] > r["searches"]["random"]["median"]]
        costly = [f"{r['variant']}/{r['gid']} ({r['searches'][first]['cpu'] * 1e3:.0f} vs "
                  f"{r['searches']['random']['cpu'] * 1e3:.0f} ms)" for r in rows
                  if r["searches"][first]["cpu"] > max(2 * r["searches"]["random"]["cpu"], CPU_FLOOR)]
        print(f"{first}: median above random's on {len(slower)} of {len(rows)}: {', '.join(slower) or '-'}")
        lower = [f"{r['variant']}/{r['gid']} ({100 * r['searches'][first]['rate']:.1f} vs "
                 f"{100 * r['searches']['random']['rate']:.1f})" for r in rows
                 if r["searches"][first]["rate"] < r["searches"]["random"]["rate"]]
        print(f"{first}: fewer hits per 100 schedules than random on {len(lower)} of {len(rows)}: "
              f"{', '.join(lower) or '-'}")
        print(f"{first}: CPU above 2 x random's (and above {CPU_FLOOR * 1e3:.0f} ms) on {len(costly)} of "
              f"{len(rows)}: {', '.join(costly) or '-'}")


def merged(files: list[str]) -> tuple[list[dict], list[str]]:
    """The rows of several --json files, their searches side by side (first file's order)."""
    rows: dict[tuple, dict] = {}
    searches: list[str] = []
    for f in files:
        doc = json.loads(Path(f).read_text())
        for r in doc["rows"]:
            key = (r["family"], r["variant"], r["gid"])
            row = rows.setdefault(key, {**r, "searches": {}})
            for s, x in r["searches"].items():
                x.setdefault("cap", doc["args"]["cap"])
                x.setdefault("seeds", doc["args"]["seeds"])
                row["searches"][s] = x
                if s not in searches:
                    searches.append(s)
    complete = [r for r in rows.values() if all(s in r["searches"] for s in searches)]
    return complete, searches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=50)
    ap.add_argument("--seed-base", type=int, default=0,
                    help="the first seed (seeds base..base+N-1): a setting tuned on seeds 0..N-1 is "
                         "checked on seeds it was not tuned on")
    ap.add_argument("--cap", type=int, default=1000, help="most schedules per hunt")
    ap.add_argument("--searches", default=f"{DEFAULT_SEARCH},random,pct:3",
                    help="comma-separated --kvm-search values; the first is judged against 'random'")
    ap.add_argument("--variants", default="", help="comma-separated substrings of family/variant/gid")
    ap.add_argument("--shard", default="", metavar="K/N", help="only every N-th case, from the K-th (0-based)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes")
    ap.add_argument("--no-distinct", action="store_true", help="skip the distinct-interleavings table")
    ap.add_argument("--json", default="", help="also write the figures here")
    ap.add_argument("--from-json", default="", metavar="FILES",
                    help="run nothing: print the tables of these comma-separated --json files side by side")
    args = ap.parse_args()
    if args.from_json:
        rows, searches = merged(args.from_json.split(","))
        print_tables(rows, searches, all(x.get("distinct") is not None
                                         for r in rows for x in r["searches"].values()))
        return
    searches = list(dict.fromkeys(args.searches.split(",")))
    wanted = [w for w in args.variants.split(",") if w]
    cases = [i for i, c in enumerate(broken_cases())
             if not wanted or any(w in f"{c.family}/{c.variant}/{c.gid}" for w in wanted)]
    if args.shard:
        k, n = (int(x) for x in args.shard.split("/"))
        cases = cases[k::n]
    jobs = [(c, searches, args.seeds, args.cap, not args.no_distinct, args.seed_base) for c in cases]
    start_cpu, start = time.process_time(), time.perf_counter()
    rows = []
    # Each case's row is printed as it completes (a full run takes long on a loaded machine).
    with Pool(args.jobs) if args.jobs > 1 else nullcontext() as pool:
        for r in (pool.imap(measure, jobs) if pool else map(measure, jobs)):
            for x in r["searches"].values():
                x.update(cap=args.cap, seeds=args.seeds)
            rows.append(r)
            print("done: " + " ".join(f"{s}: {shown(x['median'], args.cap)}/{shown(x['p90'], args.cap)}/"
                                      f"{x['in_budget']:.0%}/{x['cpu'] * 1e3:.0f}ms"
                                      for s, x in r["searches"].items()) + f"  {r['variant']}/{r['gid']}",
                  file=sys.stderr, flush=True)
            if args.json:  # kept up to date, so a long run's figures survive an interruption
                Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print_tables(rows, searches, not args.no_distinct)
    print(f"\nbenchmark took {time.perf_counter() - start:.0f} s wall, {time.process_time() - start_cpu:.0f} s "
          "CPU in this process")


if __name__ == "__main__":
    main()
