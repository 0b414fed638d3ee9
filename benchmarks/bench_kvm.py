"""Where a live example's time goes on the kvm backend: VM creation, settling, kicks, close.

    python benchmarks/bench_kvm.py [--examples 50] [--specs MP-04.a,REQ-25.live,...]

For each spec it runs ``--examples`` schedules (fixed seed) and reports, per example, the wall
time and the process CPU time, and the wall time spent in the machine's creation, its settle
and after-kick waits on the kernel's evidence, and its close, with the median and the slowest
example. The baseline in the same run is a bare VM create+close of the same shape. Skips (with
the reason) where /dev/kvm is unusable.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_kvmconf.backends.kvm import KvmBackend, core, probe  # noqa: E402
from pytest_kvmconf.backends.kvm.machine import KvmMachine  # noqa: E402
from pytest_kvmconf.backends.kvm.vm import Vm  # noqa: E402
from tests.bite import verdict  # noqa: E402

PHASES = (("create", KvmMachine, "__init__"), ("settle", core.KvmCore, "settle"),
          ("after kick", core.KvmCore, "await_kick"), ("close", KvmMachine, "close"))


def instrument(spent: dict[str, list[float]]) -> None:
    for label, cls, name in PHASES:
        original = getattr(cls, name)

        def timed(*args, _f=original, _label=label, **kwargs):  # type: ignore[no-untyped-def]
            start = time.perf_counter()
            try:
                return _f(*args, **kwargs)
            finally:
                spent[_label].append(time.perf_counter() - start)

        setattr(cls, name, timed)


def bare(irqchip: bool, program: str, n: int) -> tuple[float, float]:
    creates, closes = [], []
    for _ in range(n):
        start = time.perf_counter()
        vm = Vm(1, irqchip, program, lambda: None)
        mid = time.perf_counter()
        vm.close()
        creates.append(mid - start)
        closes.append(time.perf_counter() - mid)
    return statistics.median(creates), statistics.median(closes)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=50)
    ap.add_argument("--specs", default="MP-04.a,MP-03.a,REQ-07.live,REQ-25.live,MP-01.d")
    args = ap.parse_args()
    why = probe.environment()[0]
    if why:
        print(f"skipped: {why}")
        return 0
    print("load average: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    c, d = bare(True, "busy", args.examples)
    print(f"baseline: bare VM (irqchip, 1 vCPU) create {c * 1e3:.1f} ms, close {d * 1e3:.1f} ms (medians)")
    spent: dict[str, list[float]] = defaultdict(list)
    instrument(spent)
    for gid in args.specs.split(","):
        spent.clear()
        wall, cpu = time.perf_counter(), time.process_time()
        found = verdict(gid, KvmBackend(), max_examples=args.examples)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        n = args.examples
        parts = ", ".join(f"{k} {sum(v) / n * 1e3:.1f} (median {statistics.median(v) * 1e3:.1f}, "
                          f"max {max(v) * 1e3:.1f})" for k, v in spent.items() if v)
        print(f"{gid}: {wall / n * 1e3:.1f} ms wall, {cpu / n * 1e3:.1f} ms CPU per example; "
              f"ms per example: {parts}; verdict {type(found).__name__ if found else 'holds'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
