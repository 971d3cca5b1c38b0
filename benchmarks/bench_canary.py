"""Benchmark: the sick canary against a Kraken-style linear ramp, on the same synthetic services.

Each run draws a synthetic service: a base latency that is lognormal (median
20-60 ms, sigma 0.25-0.6, the "soft transition"), a client timeout (a request
whose base latency plus the injected dose exceeds it fails), a background
error rate of 0.05 %, and the steady state ``error_slo = 99.5``,
``latency_slo = {ms = 1000, percent = 99}``. Its true breaking point is the
smallest dose at which the error rate or the slow rate reaches its allowance,
solved numerically from the model -- never from either search.

* **canary**: the real :mod:`fieldlab.control.canary` logic. Every round,
  ``--round`` requests with random trace ids are routed by
  :func:`~fieldlab.control.canary.choose_arm` over the published weights, each
  arm's outcomes are drawn from the model, and :func:`~fieldlab.control.canary.advance`
  reads the cumulative counts. The ladder is ``{start = 25, factor = 2, max = 1600}``.
* **ramp**: linear steps of ``--step`` ms (25, 50, 75, ...), each held for ``H``
  requests, stopping at the first step whose observed error or slow rate is
  above its allowance (it stops mid-step as soon as the step cannot pass any
  more); the breaking point is the harmonic midpoint of the last passed and
  the failed step (the same estimator the canary uses). ``H`` is swept; the
  ramp is credited with the smallest ``H`` that reaches the canary's accuracy.

Measured per method: accuracy (share of runs within +-10 % of the truth),
requests (mean), budget (mean bad requests of the faulted arms). Targets
(issue 13): canary accuracy >= 95 %, requests <= 1/3 of the ramp's at the same
accuracy, budget <= the ramp's.

Usage::

    python benchmarks/bench_canary.py [--runs 300] [--seed 1] [--round 100] [--step 25] [--holds 250,500,750,1000,2000,4000]
        [--truth 100,1200] [--scaled 8] [--set alpha=0.1,...]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from fieldlab.control import canary as C

_N = NormalDist()
ERROR_SLO = 99.5
LATENCY_MS = 1000.0
LATENCY_PERCENT = 99.0


@dataclass(frozen=True)
class Service:
    """A synthetic service: lognormal base latency, a client timeout, a background error rate."""

    median_ms: float
    sigma: float
    timeout_ms: float
    background: float = 0.0005

    def _tail(self, x: float) -> float:
        """P(base latency > x)."""
        if x <= 0:
            return 1.0
        return 1.0 - _N.cdf(math.log(x / self.median_ms) / self.sigma)

    def rates(self, dose: float) -> tuple[float, float]:
        """(error rate, slow rate) at ``dose``: timeouts and background errors; completed requests over the SLO."""
        timeout = self._tail(self.timeout_ms - dose)
        err = self.background + (1 - self.background) * timeout
        slow = 0.0
        if self.timeout_ms > LATENCY_MS:
            slow = (1 - self.background) * max(0.0, self._tail(LATENCY_MS - dose) - timeout)
        return err, slow

    def breaking_point(self) -> float:
        """The smallest dose where either rate reaches its allowance (bisection on the model)."""
        ea, sa = (100 - ERROR_SLO) / 100, (100 - LATENCY_PERCENT) / 100

        def broken(d: float) -> bool:
            e, s = self.rates(d)
            return e >= ea or s >= sa

        lo, hi = 0.0, 60_000.0
        for _ in range(100):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if broken(mid) else (mid, hi)
        return hi

    def draw(self, rng: np.random.Generator, dose: float, n: int) -> tuple[int, int]:
        """(errors, slow) among ``n`` requests at ``dose``."""
        if n <= 0:
            return 0, 0
        e, s = self.rates(dose)
        out = rng.multinomial(n, [e, s, max(0.0, 1 - e - s)])
        return int(out[0]), int(out[1])


def draw_service(rng: random.Random, lo: float = 100.0, hi: float = 1200.0) -> Service:
    """A service whose breaking point lies in ``[lo, hi]`` ms (rejection sampling)."""
    while True:
        svc = Service(
            median_ms=rng.uniform(20, 60), sigma=rng.uniform(0.25, 0.6), timeout_ms=rng.uniform(lo + 100, hi + 300)
        )
        if lo <= svc.breaking_point() <= hi:
            return svc


def spec(**tuning: Any) -> C.CanarySpec:
    """The canary as a user would configure it (the search's defaults unless ``tuning`` overrides them)."""
    table = {
        "key": "bench",
        "doses": {"start": 25, "factor": 2, "max": 1600},
        "steady_state": {"error_slo": ERROR_SLO, "latency_slo": {"ms": LATENCY_MS, "percent": LATENCY_PERCENT}},
    }
    return C.CanarySpec.from_table(table, **tuning)


def run_canary(svc: Service, sp: C.CanarySpec, seed: int, per_round: int, max_rounds: int = 5000) -> dict[str, Any]:
    """The real canary logic against ``svc``: route by trace id, draw outcomes, advance; until done."""
    rng = np.random.default_rng(seed)
    ids = random.Random(seed)
    state = C.start(sp)
    totals: dict[str, list[int]] = {}
    for _ in range(max_rounds):
        if state.finished:
            break
        table = C.weight_table(state.weights)
        routed: dict[str, int] = {}
        for _ in range(per_round):
            arm = C.choose_arm(sp.key, f"{ids.getrandbits(128):032x}", table)
            if arm is not None:
                routed[arm] = routed.get(arm, 0) + 1
        for arm, n in routed.items():
            e, s = svc.draw(rng, 0.0 if arm == C.CONTROL else float(arm[:-2]), n)
            t = totals.setdefault(arm, [0, 0, 0])
            t[0] += n
            t[1] += e
            t[2] += s
        state = C.advance(sp, state, {k: C.ArmCounts(v[0], v[1], v[2]) for k, v in totals.items()})
    return {
        "estimate": state.breaking_point,
        "requests": state.requests_spent,
        "bad": state.bad_spent,
        "outcome": state.outcome,
        "rounds": state.round,
    }


def run_ramp(
    svc: Service, step: float, hold: int, seed: int, max_dose: float = 1600.0, chunk: int = 100
) -> dict[str, Any]:
    """Kraken-style linear ramp: fixed steps, each held ``hold`` requests, stop at the first unhealthy step."""
    rng = np.random.default_rng(seed)
    ea, sa = (100 - ERROR_SLO) / 100, (100 - LATENCY_PERCENT) / 100
    requests = bad = 0
    prev = 0.0
    k = 1
    while k * step <= max_dose + 1e-9:
        dose = k * step
        n = e = s = 0
        failed = False
        while n < hold:
            m = min(chunk, hold - n)
            de, ds = svc.draw(rng, dose, m)
            n, e, s = n + m, e + de, s + ds
            if e > ea * hold or s > sa * hold:  # the step can no longer pass: stop now
                failed = True
                break
        requests += n
        bad += e + s
        if failed:
            est = 2 * prev * dose / (prev + dose) if prev > 0 else dose
            return {"estimate": est, "requests": requests, "bad": bad}
        prev = dose
        k += 1
    return {"estimate": None, "requests": requests, "bad": bad}


def summarise(rows: list[dict[str, Any]], truths: list[float]) -> dict[str, float]:
    ok = [r["estimate"] is not None and abs(r["estimate"] / t - 1) <= 0.10 for r, t in zip(rows, truths, strict=False)]
    return {
        "accuracy": sum(ok) / len(ok),
        "requests": float(np.mean([r["requests"] for r in rows])),
        "requests_p90": float(np.percentile([r["requests"] for r in rows], 90)),
        "bad": float(np.mean([r["bad"] for r in rows])),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--round", type=int, default=100, help="canary requests per controller round")
    ap.add_argument("--step", type=float, default=25.0, help="ramp step in ms")
    ap.add_argument("--holds", default="250,500,750,1000,2000,4000", help="ramp hold sizes to sweep")
    ap.add_argument("--set", default="", help="override canary tuning, e.g. alpha=0.1,control_share=0.1")
    ap.add_argument("--truth", default="100,1200", help="range of the true breaking points, ms")
    ap.add_argument(
        "--scaled", type=int, default=8, help="also run a ramp told the scale: step = truth / SCALED (0: skip)"
    )
    args = ap.parse_args(argv)

    master = random.Random(args.seed)
    t_lo, t_hi = (float(x) for x in args.truth.split(","))
    services = [draw_service(master, t_lo, t_hi) for _ in range(args.runs)]
    truths = [s.breaking_point() for s in services]
    sp = spec(
        **{k: (int(v) if v.isdigit() else float(v)) for k, v in (kv.split("=") for kv in args.set.split(",") if kv)}
    )
    t0 = time.perf_counter()
    canary_rows = [run_canary(s, sp, args.seed * 100_003 + i, args.round) for i, s in enumerate(services)]
    t_canary = time.perf_counter() - t0
    c = summarise(canary_rows, truths)
    outcomes: dict[str, int] = {}
    for r in canary_rows:
        outcomes[str(r["outcome"])] = outcomes.get(str(r["outcome"]), 0) + 1

    print(
        f"{args.runs} synthetic services, true breaking points {min(truths):.0f}-{max(truths):.0f} ms "
        f"(median {float(np.median(truths)):.0f}); canary rounds of {args.round} requests; seed {args.seed}"
    )
    print(
        f"canary outcomes: {outcomes}; mean {np.mean([r['rounds'] for r in canary_rows]):.0f} controller rounds "
        f"(a round offers {args.round} requests; a ramp needs requests/{args.round}); {t_canary:.1f} s of simulation"
    )
    print()
    print(f"{'method':<28} {'within +-10%':>12} {'requests':>10} {'p90 req':>9} {'bad (budget)':>13}")
    print(
        f"{'sick canary':<28} {c['accuracy']:>11.1%} {c['requests']:>10.0f} {c['requests_p90']:>9.0f} {c['bad']:>13.1f}"
    )

    def sweep(name: str, step_of: Any, salt: int) -> None:
        ramps = []
        for h in [int(x) for x in args.holds.split(",")]:
            rows = [
                run_ramp(s, step_of(t), h, args.seed * salt + i)
                for i, (s, t) in enumerate(zip(services, truths, strict=False))
            ]
            r = summarise(rows, truths)
            ramps.append((h, r))
            print(
                f"{f'{name} x {h}':<28} {r['accuracy']:>11.1%} {r['requests']:>10.0f} "
                f"{r['requests_p90']:>9.0f} {r['bad']:>13.1f}"
            )
        matched = [(h, r) for h, r in ramps if r["accuracy"] >= min(c["accuracy"], 0.95)]
        if matched:
            h, r = matched[0]
            verdicts.append(
                f"{name}: smallest hold at >= {min(c['accuracy'], 0.95):.0%} accuracy is {h} "
                f"({r['accuracy']:.1%}): canary/ramp requests = {c['requests'] / r['requests']:.3f} "
                f"(target <= 0.333), bad = {c['bad'] / r['bad']:.3f} (target <= 1)"
            )
        else:
            best_h, best = max(ramps, key=lambda hr: hr[1]["accuracy"])
            verdicts.append(
                f"{name}: no swept hold reaches {min(c['accuracy'], 0.95):.0%} (best: hold {best_h}, "
                f"{best['accuracy']:.1%}, {best['requests']:.0f} requests)"
            )

    verdicts: list[str] = []
    sweep(f"ramp {args.step:g} ms", lambda t: args.step, 200_003)
    if args.scaled:
        sweep(f"ramp truth/{args.scaled} (oracle)", lambda t: t / args.scaled, 300_007)
    print()
    for v in verdicts:
        print(v)
    print(f"canary accuracy {c['accuracy']:.1%} (target >= 95 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
