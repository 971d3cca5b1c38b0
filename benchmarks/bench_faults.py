"""ns per fault-point decision when no fault applies, beside a bare function call in the same run.

Run: ``python benchmarks/bench_faults.py [--calls 200000] [--rounds 5]``.
Cases: outside any request; in a request where the point has no configured
fault; in a request where the point has a fault but the unit is in control.
Each figure is the whole call of a decorated no-op function, best of N rounds;
"overhead" subtracts the bare call.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import fieldlab
from fieldlab import context


def best_ns(fn: Callable[[], Any], n: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter_ns() - t0) / n)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    exp = fieldlab.Experiment("slow-db", {"control": 1, "slow": 1}, traffic=4,
                              faults={"slow": [{"point": "db.query", "latency_ms": 300}]})
    lab = fieldlab.Lab([exp], faults={"enabled": True})
    control = next(f"u{i}" for i in range(100_000) if lab.assign("slow-db", f"u{i}").variant == "control")

    def bare() -> None:
        return None

    @fieldlab.fault_point("db.query")
    def configured() -> None:
        return None

    @fieldlab.fault_point("cache.get")
    def unconfigured() -> None:
        return None

    block = fieldlab.fault_point("db.query")

    def with_block() -> None:
        with block:
            return None

    n, r = args.calls, args.rounds
    base = best_ns(bare, n, r)
    rows = [("bare function call", base), ("decorated, outside a request", best_ns(configured, n, r))]
    ctx = context.start(lab, {"user": control}, trace_id="0af7651916cd43dd8448eb211c80319c")
    token = context.bind(ctx)
    try:
        rows.append(("decorated, in a request, point not configured", best_ns(unconfigured, n, r)))
        rows.append(("decorated, in a request, unit in control", best_ns(configured, n, r)))
        rows.append(("`with` block, in a request, unit in control", best_ns(with_block, n, r)))
    finally:
        context.reset(token)
    assert not ctx.fault_injected
    for name, ns in rows:
        extra = "" if ns is base else f"   overhead {ns - base:6.0f} ns"
        print(f"{name:48} {ns:7.0f} ns/call{extra}")


if __name__ == "__main__":
    main()
