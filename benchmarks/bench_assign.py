"""ns per ``lab.assign`` over distinct units, beside the raw MurmurHash in the same run.

Run: ``python benchmarks/bench_assign.py [--units 200000] [--rounds 5]``.
Prints the best-of-N ns per call for each, and their ratio (target: <= 3x).
The raw figure hashes the same ``salt:unit`` strings with ``mmh3.hash``, so the
ratio is the cost fieldlab adds on top of the hash the contract requires.
"""

from __future__ import annotations

import argparse
import time

import mmh3

import fieldlab


def best_ns(fn, n: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        fn()
        best = min(best, (time.perf_counter_ns() - t0) / n)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--units", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    units = [f"user-{i}" for i in range(args.units)]
    exp = fieldlab.Experiment("checkout-redesign", {"control": 1, "treatment": 1}, traffic=50)
    layered = fieldlab.Experiment("search-ranking", {"control": 1, "a": 1, "b": 1}, layer="search", layer_range=[0, 50])
    lab = fieldlab.Lab([exp, layered], layers=[fieldlab.Layer("search")],
                       holdouts=[fieldlab.Holdout("h2026", 5, ["search-ranking"])])
    keyed = [f"checkout-redesign:{u}" for u in units]
    h = mmh3.hash
    assign = lab.assign

    def raw() -> None:
        for s in keyed:
            h(s, 0, False) % 10000

    def raw_concat() -> None:
        for u in units:
            h("checkout-redesign:" + u, 0, False) % 10000

    def simple() -> None:
        for u in units:
            assign("checkout-redesign", u)

    def layered_run() -> None:
        for u in units:
            assign("search-ranking", u)

    simple()  # warm the per-bucket outcome cache, as a running service would be
    rows = [
        ("raw mmh3.hash(salt:unit)", best_ns(raw, len(units), args.rounds)),
        ("raw concat + mmh3.hash", best_ns(raw_concat, len(units), args.rounds)),
        ("lab.assign (split)", best_ns(simple, len(units), args.rounds)),
        ("lab.assign (holdout+layer)", best_ns(layered_run, len(units), args.rounds)),
    ]
    base = rows[0][1]
    print(f"{len(units):,} distinct units, best of {args.rounds} rounds")
    print(f"{'':30} {'ns/call':>9} {'x raw hash':>11}")
    for name, ns in rows:
        print(f"{name:30} {ns:9.1f} {ns / base:11.2f}")
    ratio = rows[2][1] / base
    print(f"lab.assign / raw hash = {ratio:.2f}x (target <= 3x): {'PASS' if ratio <= 3 else 'MISS'}")


if __name__ == "__main__":
    main()
