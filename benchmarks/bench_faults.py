"""ns per fault-point decision when no fault applies, beside a bare function call in the same run.

Run: ``python benchmarks/bench_faults.py [--calls 200000] [--rounds 5]``.
Cases: outside any request; in a request where the point has no configured
fault; in a request where the point has a fault but the unit is in control;
and with a sick canary (weights in a state file, followed by the Lab's poller): a
point without the canary, a request outside the canary's traffic, and a
request in the canary's control arm (its arm recorded, no dose).
Each figure is the whole call of a decorated no-op function, best of N rounds;
"overhead" subtracts the bare call.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

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
    exp = fieldlab.Experiment(
        "slow-db", {"control": 1, "slow": 1}, traffic=4, faults={"slow": [{"point": "db.query", "latency_ms": 300}]}
    )
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
    rows += canary_rows(n, r)
    for name, ns in rows:
        extra = "" if ns is base else f"   overhead {ns - base:6.0f} ns"
        print(f"{name:48} {ns:7.0f} ns/call{extra}")


def canary_rows(n: int, r: int) -> list[tuple[str, float]]:
    """The canary cases: weights published in a state file as the controller does, read by the poller."""
    import dataclasses
    import os
    import tempfile

    from fieldlab.control import canary as C
    from fieldlab.control.state import JsonFileStore

    state_file = os.path.join(tempfile.mkdtemp(prefix="bench-canary-"), "lab.state.json")
    weights = {"control": 0.5, "100ms": 0.5}
    doc = dict(C.CanaryState(key="inv", weights=weights, weights_version=1).to_dict())
    JsonFileStore(state_file).update(lambda cur: dataclasses.replace(cur, seq=1, canaries={"inv": doc}))
    lab = fieldlab.Lab.from_dict(
        {
            "lab": {"state": state_file},
            "faults": {"enabled": True},
            "canaries": [{"key": "inv", "point": "inv.reserve", "traffic": 2, "doses": {"latency_ms": [100]}}],
        }
    )
    table = C.weight_table(weights)
    outside = next(f"{i:032x}" for i in range(1, 10_000) if C.choose_arm("inv", f"{i:032x}", table, 2) is None)
    in_control = next(f"{i:032x}" for i in range(1, 100_000) if C.choose_arm("inv", f"{i:032x}", table, 2) == "control")

    @fieldlab.fault_point("inv.reserve")
    def reserve() -> None:
        return None

    @fieldlab.fault_point("cache.get")
    def elsewhere() -> None:
        return None

    rows = []
    try:
        for name, tid, fn in (
            ("canary lab, in a request, point without canary", outside, elsewhere),
            ("canary point, request outside the canary", outside, reserve),
            ("canary point, request in the canary's control", in_control, reserve),
        ):
            ctx = context.start(lab, {}, trace_id=tid)
            token = context.bind(ctx)
            try:
                rows.append((name, best_ns(fn, n, r)))
            finally:
                context.reset(token)
            assert not ctx.fault_injected
    finally:
        lab.close()
    return rows


if __name__ == "__main__":
    main()
