"""Benchmark: Thompson sampling against a fixed equal split, and per-period analysis against pooling.

Part 1, regret. Bernoulli arms (conversion rates ``--rates``), a horizon of
``--horizon`` units arriving in periods of ``--period`` units. Each unit gets a
random id, its bucket from the assignment contract, and its arm from
:func:`fieldlab.control.bandit.assign_with_weights` over the published basis
points; after each period the controller recomputes
:func:`~fieldlab.control.bandit.thompson_weights` (floor 1 %, burn-in 100,
seeded). Regret is ``sum(best rate - rate of the unit's arm)``; the equal split
gets the same units. Reported over ``--runs`` seeds: mean regret of each, their
ratio, the smallest weight ever published (the floor), and how often the best
arm holds the largest weight at the end.

Part 2, Simpson's paradox. The same bandit runs while the baseline conversion
*falls* over time (a campaign ends) and arm B is truly ``--lift`` better than
A in every period. The bandit moves traffic to B as the baseline falls, so B's
units are mostly from the low-baseline periods: pooled, B looks worse. Each
run is analysed per period (stratified and inverse-variance) and pooled;
reported: mean estimate, its bias against the truth, the share of runs whose
95 % interval covers the truth, and the share of runs where the pooled estimate
has the wrong sign. Every period's SRM check against that period's weights is
reported too (false alarms expected at about 0.1 %).

Usage::

    python benchmarks/bench_bandit.py [--runs 100] [--seed 1]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

from fieldlab._hashing import bucket
from fieldlab.control import bandit as B


def simulate(
    rates_by_period: list[tuple[float, ...]], period_units: int, seed: int, adaptive: bool, draws: int
) -> tuple[float, list[B.PeriodData], float, tuple[float, ...]]:
    """Run one experiment; returns (regret, per-period data, smallest weight published, final weights)."""
    rng = random.Random(seed)
    k = len(rates_by_period[0])
    weights: tuple[float, ...] = tuple(1.0 / k for _ in range(k))
    totals = [[0, 0] for _ in range(k)]
    periods: list[B.PeriodData] = []
    regret = 0.0
    min_w = 1.0
    for p, rates in enumerate(rates_by_period):
        bp = B.to_basis_points(weights, floor=B.DEFAULT_FLOOR if adaptive else 0.0)
        counts = [[0, 0] for _ in range(k)]
        best = max(rates)
        for _ in range(period_units):
            arm = B.assign_with_weights(bucket(f"bench:{seed}", f"u{rng.getrandbits(64):016x}"), bp)
            conv = rng.random() < rates[arm]
            counts[arm][0] += 1
            counts[arm][1] += conv
            regret += best - rates[arm]
        periods.append(B.PeriodData(tuple(w / 10_000 for w in bp), tuple(B.ArmStats(n, s) for n, s in counts)))
        for i in range(k):
            totals[i][0] += counts[i][0]
            totals[i][1] += counts[i][1]
        if adaptive:
            res = B.thompson_weights([B.ArmStats(n, s) for n, s in totals], seed=seed * 1000 + p, draws=draws)
            weights = res.weights
            min_w = min(min_w, *weights)
    return regret, periods, min_w, weights


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rates", default="0.10,0.11,0.12,0.14")
    ap.add_argument("--horizon", type=int, default=40_000)
    ap.add_argument("--period", type=int, default=2_000)
    ap.add_argument("--draws", type=int, default=4_000, help="Monte Carlo draws per weights update")
    ap.add_argument("--lift", type=float, default=0.02)
    ap.add_argument("--part", choices=("all", "regret", "simpson"), default="all")
    args = ap.parse_args(argv)

    rates = tuple(float(x) for x in args.rates.split(","))
    n_periods = args.horizon // args.period
    if args.part != "simpson":
        regret_part(args, rates, n_periods)
    if args.part != "regret":
        simpson_part(args)
    return 0


def regret_part(args: argparse.Namespace, rates: tuple[float, ...], n_periods: int) -> None:
    """Part 1: Thompson sampling vs an equal split on the same units."""
    t0 = time.perf_counter()
    ts, eq, floors, best_end = [], [], [], 0
    for r in range(args.runs):
        seed = args.seed * 10_007 + r
        reg_t, _, mw, w = simulate([rates] * n_periods, args.period, seed, True, args.draws)
        reg_e, _, _, _ = simulate([rates] * n_periods, args.period, seed, False, args.draws)
        ts.append(reg_t)
        eq.append(reg_e)
        floors.append(mw)
        best_end += max(range(len(w)), key=lambda i: w[i]) == max(range(len(rates)), key=lambda i: rates[i])
    print(
        f"Part 1: regret, arms {rates}, horizon {args.horizon} units in {n_periods} periods, {args.runs} runs "
        f"({time.perf_counter() - t0:.0f} s)"
    )
    print(f"  {'policy':<22} {'mean regret':>12} {'sd':>8}")
    print(f"  {'Thompson (floor 1 %)':<22} {statistics.mean(ts):>12.1f} {statistics.stdev(ts):>8.1f}")
    print(f"  {'equal split':<22} {statistics.mean(eq):>12.1f} {statistics.stdev(eq):>8.1f}")
    print(
        f"  Thompson / equal = {statistics.mean(ts) / statistics.mean(eq):.3f}; Thompson below equal in "
        f"{sum(a < b for a, b in zip(ts, eq, strict=False))}/{args.runs} runs; smallest weight published {min(floors):.4f} "
        f"(floor 0.01); best arm holds the largest final weight in {best_end}/{args.runs} runs"
    )


def simpson_part(args: argparse.Namespace) -> None:
    """Part 2: Simpson's paradox. Baseline falls from 30 % to 8 % over the periods; B = A + lift throughout."""
    t0 = time.perf_counter()
    n2 = 8
    bases = [0.30 - (0.30 - 0.08) * i / (n2 - 1) for i in range(n2)]
    sched: list[tuple[float, ...]] = [(b, b + args.lift) for b in bases]
    est: dict[str, list[float]] = {"stratified": [], "inverse_variance": [], "pooled": []}
    cover = {"stratified": 0, "inverse_variance": 0}
    flips = 0
    srm_alarms = srm_checks = 0
    for r in range(args.runs):
        _, periods, _, _ = simulate(sched, args.period, args.seed * 20_011 + r, True, args.draws)
        for m in cover:
            res = B.per_period_effect(periods, method=m)
            est[m].append(res["estimate"])
            cover[m] += res["ci_low"] <= args.lift <= res["ci_high"]
        pooled = B.pooled_effect(periods)
        est["pooled"].append(pooled)
        flips += pooled < 0
        srm = B.srm_by_period(periods)
        srm_checks += len(srm)
        srm_alarms += sum(bool(x["mismatch"]) for x in srm)
    print()
    print(
        f"Part 2: Simpson's paradox, baseline {bases[0]:.2f} -> {bases[-1]:.2f} over {n2} periods of {args.period}, "
        f"true lift {args.lift:+.3f}, {args.runs} runs ({time.perf_counter() - t0:.0f} s)"
    )
    print(f"  {'estimator':<20} {'mean':>9} {'bias':>9} {'95% CI covers':>14}")
    for m in ("stratified", "inverse_variance"):
        mean = statistics.mean(est[m])
        print(f"  {'per period, ' + m[:10]:<20} {mean:>+9.4f} {mean - args.lift:>+9.4f} {cover[m] / args.runs:>13.0%}")
    mean = statistics.mean(est["pooled"])
    print(f"  {'pooled (naive)':<20} {mean:>+9.4f} {mean - args.lift:>+9.4f} {'-':>14}")
    print(
        f"  pooled estimate has the wrong sign in {flips}/{args.runs} runs; per-period SRM alarms "
        f"{srm_alarms}/{srm_checks} period checks"
    )


if __name__ == "__main__":
    sys.exit(main())
