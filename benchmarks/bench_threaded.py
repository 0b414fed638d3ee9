"""How fast the threaded backend runs schedules, and what one thread hand-off costs.

Run from the repository root:  python benchmarks/bench_threaded.py [--examples N]

Prints two tables:
1. per REQ spec: schedules per second on the reference model (generator points, for comparison),
   on the threaded backend in controlled mode and in free mode, per example as the plugin runs it
   (free mode runs each example FREE_ITERATIONS times), in CPU time of the whole process inside
   run_schedule (so every thread, its start-up and shutdown count), and microseconds per scheduling
   point in controlled mode; the load average is printed before and after;
   the last row totals all REQ specs (target: >= 300 controlled schedules/s on 2 cores);
2. the bare hand-off: two threads doing nothing but scheduling points, engine-controlled, in
   microseconds per point (the floor under every controlled step).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pytest_kvmconf.backend import ThreadContext  # noqa: E402
from pytest_kvmconf.backends.reference import ReferenceBackend  # noqa: E402
from pytest_kvmconf.backends.threaded import ThreadedBackend  # noqa: E402
from pytest_kvmconf.engine import guard  # noqa: E402
from pytest_kvmconf.engine.controlled import ControlledHandle, Group  # noqa: E402
from pytest_kvmconf.engine.explore import FREE_ITERATIONS  # noqa: E402
from pytest_kvmconf.engine.runner import RunOptions, run_schedule  # noqa: E402
from pytest_kvmconf.scheduling import point  # noqa: E402
from pytest_kvmconf.spec.loader import load_file  # noqa: E402
from pytest_kvmconf.strategies import schedule_strategy  # noqa: E402

QUIET = dict(database=None, deadline=None, suppress_health_check=list(HealthCheck))


def version_for(gid: str) -> str:
    return "4.13" if gid.startswith("REQ-26") else "6.18"


def schedules(g, version: str, n: int) -> list:
    """The same n schedules for every backend (hypothesis draws them once, fixed seed)."""
    out = []

    @seed(0)
    @settings(max_examples=n, phases=[Phase.generate], **QUIET)
    @given(schedule_strategy(g, version))
    def draw(s):
        out.append(s)

    draw()
    return out


def timed(g, backend, drawn: list, options: RunOptions, repeat: int = 1) -> tuple[float, int]:
    """CPU seconds (all threads) spent in run_schedule over ``drawn``, each run ``repeat`` times as
    an example is (free mode: FREE_ITERATIONS), and the scheduling steps taken."""
    steps = 0
    start = time.process_time()
    with guard.watching(g.id, backend):  # as pytest runs a guarantee
        for s in drawn:
            for _ in range(repeat):
                steps += len(run_schedule(g, backend, s, options).timeline)
    return time.process_time() - start, steps


class _Spin:
    """A machine whose one operation is nothing but scheduling points."""

    execution = "threads"

    def __init__(self, points: int):
        self.points = points

    def run_op(self, ctx: ThreadContext, op: str, args) -> None:
        for _ in range(self.points):
            point("spin")

    def observe(self) -> dict:
        return {}

    def close(self) -> None:
        pass


class _Plan:
    """Just enough of a ThreadPlan for one `spin` step."""

    def __init__(self, name: str):
        from types import SimpleNamespace

        self.name, self.vcpu = name, None
        op = SimpleNamespace(name="spin")
        self.steps = [SimpleNamespace(step=SimpleNamespace(op=op, bind=None, args=()), scope={})]

    def calls(self):
        for ps in self.steps:
            yield ps, {}

    def bind(self, ps, result) -> None:
        pass


def handoff_us(points: int = 20000) -> float:
    """Microseconds per engine-controlled point, alternating two threads."""
    machine = _Spin(points)
    group = Group(5.0)
    handles = [ControlledHandle(group, machine, _Plan(f"t{i}"), lambda ps, a: "spin()",
                                lambda ps, r: "", False) for i in range(2)]
    start = time.process_time()
    n = 0
    while not all(h.done for h in handles):
        for h in handles:
            if not h.done:
                h.advance()
                n += 1
    spent = time.process_time() - start
    for h in handles:
        h.close()
    return spent / n * 1e6


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} CPUs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=100, help="schedules per spec")
    args = ap.parse_args()
    guarantees = {g.id: g for g in load_file(ROOT / "specs" / "vcpu-requests.toml")}
    threaded, reference = ThreadedBackend(), ReferenceBackend()
    print(f"CPU time of the process (every thread); {load()}")
    head = f"{'spec':<10}{'reference/s':>12}{'controlled/s':>14}{'us/point':>10}{'free ex/s':>10}{'points':>8}"
    print(head)
    print("-" * len(head))
    totals = {"ref": 0.0, "ctl": 0.0, "free": 0.0, "n": 0, "steps": 0}
    for gid, g in sorted(guarantees.items()):
        version = version_for(gid)
        drawn = schedules(g, version, args.examples)
        ref, _ = timed(g, reference, drawn, RunOptions(version))
        ctl, steps = timed(g, threaded, drawn, RunOptions(version))
        free, _ = timed(g, threaded, drawn, RunOptions(version, free=True), repeat=FREE_ITERATIONS)
        n = len(drawn)
        for k, v in (("ref", ref), ("ctl", ctl), ("free", free), ("n", n), ("steps", steps)):
            totals[k] += v
        print(f"{gid:<10}{n / ref:>12,.0f}{n / ctl:>14,.0f}{ctl / steps * 1e6:>10,.0f}{n / free:>10,.0f}"
              f"{steps / n:>8.1f}")
    n = totals["n"]
    print("-" * len(head))
    print(f"{'all REQ':<10}{n / totals['ref']:>12,.0f}{n / totals['ctl']:>14,.0f}"
          f"{totals['ctl'] / totals['steps'] * 1e6:>10,.0f}{n / totals['free']:>10,.0f}"
          f"{totals['steps'] / n:>8.1f}")
    print(f"\ntarget: >= 300 controlled schedules/s ({n / totals['ctl']:,.0f}); "
          f"threads alive now: {threading.active_count()}")
    print(f"bare hand-off (two threads, points only): {handoff_us():.1f} us per controlled point")
    print(f"after: {load()}")


if __name__ == "__main__":
    main()
