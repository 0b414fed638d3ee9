"""Per-schedule hit rates of the default search's two phases, and the share within budget they imply.

Run from the repository root:
    python benchmarks/bench_rates.py [--schedules 400] [--seeds 4] [--variants SUBSTR,...]
                                     [--capable 0] [--json out.json]

bench_search counts schedules to the first violation; with 50 seeds a share within 100 of 98 % is
one unlucky seed, and whether a setting can reach 99 % at all is hidden in that noise. This script
measures what the share is made of. For each broken variant (tests/bite.broken_cases(), filtered by
--variants; by default the ones bench_search found slowest), it runs --schedules schedules per seed
of each phase of the mixed search without stopping at a hit:
  random   the first phase: the random search's drawer and picker;
  pct      the second: the mixed search's own drawer (decks) and pickers (PCT), as it runs them
           from schedule ``random_first`` on, learning its decisions estimate as it goes.
It prints each phase's hits per 100 schedules (with a standard error), the share of seeds that
find the variant within the default budget that these rates imply,
  1 - (1 - r_random)^K * (1 - r_pct)^(100 - K),   K = random_first,
and the pct rate that 99 % would need. A variant whose needed rate is above anything the pct phase
reaches is not a matter of tuning the pickers.

--capable R: also replay each of the pct phase's first schedules R times with fresh picks and count
the schedules whose parameters and steps can show the bug at all (a hit in some replay): a low
share there means the bug is bound by what is generated, not by the interleaving.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from random import Random

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pytest_kvmconf.engine.explored import data_keys  # noqa: E402
from pytest_kvmconf.engine.runner import RunOptions, run_schedule  # noqa: E402
from pytest_kvmconf.engine.schedule import Recording  # noqa: E402
from pytest_kvmconf.engine.search import Search, parse_search  # noqa: E402
from tests.bite import BUDGET, BrokenCase, broken_cases, guarantees  # noqa: E402

#: The variants bench_search (50 seeds) found slowest: a median of 12 or more schedules, or under
#: 99 % within 100 with some search.
SLOWEST = (
    "TestUnmasked/REQ-01", "NoWakeupIgnored/REQ-10", "WaitConditionIgnored/REQ-13", "CheckBeforeMode/REQ-15",
    "CheckBeforeMode/REQ-16", "EntryCheckLowByte/REQ-16", "OutsideGuestModeNoWait/REQ-19", "LostWakeup/REQ-25",
    "WalkTakesCpusReadLock/LOCK-09", "PmuInitTwiceAccepted/ATTR-06", "IndirectFastPathUnpinned/SPTE-02",
    "HaltedReadAsStopped/MP-01", "NoWmbInMakeRequest@lkmm/REQ-14", "NoMbAfterAtomicInCheckRequest@lkmm/REQ-14",
    "NoMbAfterInGuestMode@tso/REQ-15", "NoMbAfterInGuestMode@tso/REQ-24",
)


def run_one(g, backend, options: RunOptions, search: Search, rng: Random, index: int, schedule,
            data) -> bool:
    """One schedule of the hunt as explore runs it (picker, recorded tape, what the search
    learns from it); True if it failed."""
    picker = search.picker(rng, index, data)
    rec = Recording(picker)
    outcome = run_schedule(g, backend, schedule, options, rec)
    outcome.schedule = replace(schedule, tape=rec.writer.tape())
    search.observed(picker, outcome, data)
    return outcome.violation is not None


def phase_hits(case: BrokenCase, search: Search, phase: str, n: int, seed: int) -> int:
    """Hits among n schedules of one phase of ``search`` (no stopping at the first)."""
    g = guarantees()[case.gid]
    rng = Random(seed)
    # The random phase is the random search's schedules (mixed's first ones are exactly those);
    # the pct phase's are mixed's from index random_first on.
    if phase == "random":
        search, first = parse_search("random"), 0
    else:
        first = search.random_first
    draw = search.drawer(g, case.doc_version, rng)
    key = data_keys(g, case.doc_version)
    backend, options = case.backend(), RunOptions(case.doc_version, memory_model=case.memory_model)
    hits = 0
    for i in range(first, first + n):
        schedule = draw(i)
        hits += run_one(g, backend, options, search, rng, i, schedule, key(schedule))
    return hits


def capable_share(case: BrokenCase, search: Search, n: int, replays: int, seed: int) -> float:
    """The share of n pct-phase schedules of which some of ``replays`` fresh interleavings fails."""
    g = guarantees()[case.gid]
    rng = Random(seed)
    draw = search.drawer(g, case.doc_version, rng)
    key = data_keys(g, case.doc_version)
    backend, options = case.backend(), RunOptions(case.doc_version, memory_model=case.memory_model)
    capable = 0
    for i in range(search.random_first, search.random_first + n):
        schedule = draw(i)
        data = key(schedule)
        for _ in range(replays):
            if run_one(g, backend, options, search, rng, i, schedule, data):
                capable += 1
                break
    return capable / n


def implied_share(r_random: float, r_pct: float, first: int, budget: int = BUDGET) -> float:
    return 1 - (1 - r_random) ** first * (1 - r_pct) ** (budget - first)


def needed_pct_rate(r_random: float, first: int, target: float = 0.99, budget: int = BUDGET) -> float:
    """The pct phase's rate for ``target`` within budget, given the random phase's rate."""
    left = (1 - target) / (1 - r_random) ** first
    return 0.0 if left >= 1 else 1 - left ** (1 / (budget - first))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schedules", type=int, default=400, help="schedules per seed and phase")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--variants", default=",".join(SLOWEST),
                    help="comma-separated substrings of family/variant/gid (default: the slowest)")
    ap.add_argument("--capable", type=int, default=0, metavar="R",
                    help="also measure the share of generated schedules that can fail (R replays each)")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    wanted = [w for w in args.variants.split(",") if w]
    # A threaded twin of a variant (the same override run on the threaded backend) has the same
    # rates: only the first case of each variant/guarantee/model is measured.
    seen, cases = set(), []
    for c in broken_cases():
        key = (c.variant.split("@")[0].removesuffix("Threaded").removesuffix("Ported"), c.gid, c.memory_model)
        if key in seen or not any(w in f"{c.family}/{c.variant}/{c.gid}" for w in wanted):
            continue
        seen.add(key)
        cases.append(c)
    start_cpu, start = time.process_time(), time.perf_counter()
    n = args.schedules * args.seeds
    print(f"{len(cases)} cases; {args.schedules} schedules x {args.seeds} seeds per phase; hits per 100 "
          f"schedules (standard error); implied: share of seeds within {BUDGET} schedules")
    print(f"{'variant':42} {'spec':8} {'K':>3} {'random':>11} {'pct':>11} {'implied':>8} {'pct for 99%':>12}"
          + ("  capable" if args.capable else ""))
    rows = []
    for c in cases:
        search = parse_search("mixed").for_model(c.memory_model)
        rates = {}
        for phase in ("random", "pct"):
            hits = sum(phase_hits(c, search, phase, args.schedules, 1000 + s) for s in range(args.seeds))
            rates[phase] = hits / n
        k = search.random_first
        row = {"variant": c.variant, "gid": c.gid, "first": k, **rates,
               "implied": implied_share(rates["random"], rates["pct"], k),
               "needed": needed_pct_rate(rates["random"], k)}
        if args.capable:
            row["capable"] = capable_share(c, search, args.schedules, args.capable, 2000)
        rows.append(row)

        def pc(r: float) -> str:
            return f"{100 * r:5.1f} ({100 * math.sqrt(r * (1 - r) / n):3.1f})"

        print(f"{c.variant[:42]:42} {c.gid:8} {k:3} {pc(rates['random']):>11} {pc(rates['pct']):>11} "
              f"{100 * row['implied']:7.1f}% {100 * row['needed']:11.1f}%"
              + (f"  {100 * row['capable']:6.1f}%" if args.capable else ""), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    short = [r for r in rows if r["implied"] < 0.99]
    print(f"\nimplied under 99 % within {BUDGET}: {len(short)} of {len(rows)}: "
          + (", ".join(f"{r['variant']}/{r['gid']} ({100 * r['implied']:.1f} %)" for r in short) or "-"))
    print(f"benchmark took {time.perf_counter() - start:.0f} s wall, {time.process_time() - start_cpu:.0f} s CPU")


if __name__ == "__main__":
    main()
