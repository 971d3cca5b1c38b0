"""A/A simulation of the guardrails: how often is a variant identical to control paused over its whole life?

Run ``python tests/control/aa_simulation.py [REPS] [DAYS]`` to print the table ``docs/guardrails.md`` quotes.

Each simulated experiment runs ``days`` days with a decision every hour, as a
controller with ``--interval 3600`` would. Traffic arrives in 5-minute bins: per
arm, Poisson(``units_per_bin``) new units, each making 1 + Poisson(3) requests
that fail with the unit's own probability (Beta-distributed around
``error_rate``, so errors cluster by unit as real users' do). Both arms are
drawn from the same distribution. A pause is counted once, and the experiment
stops there (as it would in production).

Speed: the rules of :func:`fieldlab.control.guardrails.evaluate_experiment`
(min units per arm, a window pair firing in both windows, the always-valid
interval of variant minus control above zero) are evaluated for all
experiments at once with numpy. The real ``evaluate_experiment`` is then run on
every look the vectorised rules pause and on ``check`` randomly drawn looks
they do not; any disagreement fails the simulation, so the figure is the real
function's.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from fieldlab.analysis.stats import cs_halfwidth
from fieldlab.control.budget import ArmData, Counts, Moments
from fieldlab.control.guardrails import ExperimentData, evaluate_experiment
from fieldlab.control.settings import LabGuardrails, parse_experiment_guardrails

__all__ = ["simulate", "SCENARIOS"]

BIN = 300.0  # seconds
KEYS = ("units", "requests", "errors", "syy", "sxx", "sxy")
#: (label, error rate, error SLO): healthy; hovering at the 6h/30m threshold; burning both pairs all the time
#: (the always-valid test alone stands between an A/A variant and a pause).
SCENARIOS = (
    ("healthy: 0.1 % errors, SLO 99.5", 0.001, 99.5),
    ("at the 6x threshold: 3 % errors, SLO 99.5", 0.03, 99.5),
    ("environment burning: 8 % errors, SLO 99.5", 0.08, 99.5),
)


def _arm_bins(rng: np.random.Generator, reps: int, bins: int, lam: float, p: float) -> np.ndarray:
    """Cumulative per-bin sums, shape (len(KEYS), reps, bins + 1): units, requests, errors, y^2, x^2, x*y."""
    units = rng.poisson(lam, size=(reps, bins))
    total = int(units.sum())
    x = (1 + rng.poisson(3.0, total)).astype(float)
    k = 2.0  # Beta(k p, k (1 - p)): mean p, strongly clustered by unit
    y = rng.binomial(x.astype(np.int64), rng.beta(k * p, k * (1 - p), total)).astype(float)
    idx = np.repeat(np.arange(reps * bins), units.ravel())
    out = np.zeros((len(KEYS), reps, bins + 1))
    out[0, :, 1:] = units
    for i, v in enumerate((x, y, y * y, x * x, x * y), start=1):
        out[i, :, 1:] = np.bincount(idx, weights=v, minlength=reps * bins).reshape(reps, bins)
    return np.cumsum(out, axis=2)


def _ratio(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised delta-method ratio estimate and variance from cumulative sums (as Moments.estimate)."""
    n, sx, sy, syy, sxx, sxy = c[0], c[1], c[2], c[3], c[4], c[5]
    with np.errstate(invalid="ignore", divide="ignore"):
        r = sy / sx
        xbar, ybar = sx / n, sy / n
        vyy = (syy - n * ybar * ybar) / (n - 1)
        vxx = (sxx - n * xbar * xbar) / (n - 1)
        vxy = (sxy - n * xbar * ybar) / (n - 1)
        var = np.maximum(vyy - 2 * r * vxy + r * r * vxx, 0.0) / (n * xbar * xbar)
    return r, var


def _arm_data(c: np.ndarray, i: int, t: int, windows: list[float]) -> ArmData:
    cnt = {}
    for w in windows:
        lo = max(0, t - int(w / BIN))
        cnt[w] = Counts(int(c[0, i, t] - c[0, i, lo]), int(c[1, i, t] - c[1, i, lo]), int(c[2, i, t] - c[2, i, lo]), 0)
    mom = Moments(
        int(c[0, i, t]), float(c[2, i, t]), float(c[1, i, t]), float(c[3, i, t]), float(c[4, i, t]), float(c[5, i, t])
    )
    return ArmData(cnt, mom, Moments(mom.n, 0.0, mom.sx, 0.0, mom.sxx, 0.0))


def simulate(
    reps: int = 1000,
    days: float = 28,
    error_rate: float = 0.03,
    slo: float = 99.5,
    units_per_bin: float = 3.0,
    seed: int = 1,
    check: int = 300,
    chunk: int = 100,
    lab: LabGuardrails | None = None,
    variant_error_rate: float | None = None,
) -> dict[str, Any]:
    """The share of A/A experiments paused at any hourly look during ``days`` days, and how it was measured.

    ``variant_error_rate`` makes it an A/B (the variant fails at that rate): the same machinery measures power.
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    lab = lab or LabGuardrails()
    guard = parse_experiment_guardrails({"error_slo": slo}, "sim", lab)
    bins = int(days * 86400 / BIN)
    per_hour = int(3600 / BIN)
    windows = sorted({w.long for w in lab.windows} | {w.short for w in lab.windows})
    budget = 1.0 - slo / 100.0
    paused_total = env_looks = looks_total = 0
    agreed = 0
    first_pause_hours: list[int] = []
    check_per_chunk = max(1, check // max(1, -(-reps // chunk)))
    for start in range(0, reps, chunk):
        n = min(chunk, reps - start)
        c = _arm_bins(rng, n, bins, units_per_bin, error_rate)
        v = _arm_bins(rng, n, bins, units_per_bin, error_rate if variant_error_rate is None else variant_error_rate)
        live = np.ones(n, dtype=bool)
        hours = int(days * 24)
        sample = set(
            zip(
                rng.integers(0, n, check_per_chunk).tolist(),
                rng.integers(1, hours + 1, check_per_chunk).tolist(),
                strict=True,
            )
        )
        for hour in range(1, hours + 1):
            t = hour * per_hour
            fires = np.zeros(n, dtype=bool)
            cfires = np.zeros(n, dtype=bool)
            for pair in lab.windows:
                ok, cok = np.ones(n, dtype=bool), np.ones(n, dtype=bool)
                for w in (pair.long, pair.short):
                    lo = max(0, t - int(w / BIN))
                    for arr, flag in ((v, ok), (c, cok)):
                        req = arr[1, :, t] - arr[1, :, lo]
                        with np.errstate(invalid="ignore", divide="ignore"):
                            burn = np.where(req > 0, (arr[2, :, t] - arr[2, :, lo]) / req / budget, 0.0)
                        flag &= burn >= pair.burn_rate
                fires |= ok
                cfires |= cok
            rc, vc = _ratio(c[:, :, t])
            rv, vv = _ratio(v[:, :, t])
            nn = c[0, :, t] + v[0, :, t]
            var = vc + vv
            with np.errstate(invalid="ignore", divide="ignore"):
                hw = np.where(var > 0, cs_halfwidth(var, nn, lab.alpha), 0.0)
            low = (rv - rc) - hw
            enough = (c[0, :, t] >= guard.min_units) & (v[0, :, t] >= guard.min_units)
            pause = live & enough & fires & np.isfinite(low) & (low > 0)
            env_looks += int((live & enough & cfires).sum())
            looks_total += int(live.sum())
            todo = set(np.flatnonzero(pause).tolist()) | {i for i, h in sample if h == hour and live[i]}
            for i in sorted(todo):
                ev = evaluate_experiment(
                    ExperimentData(
                        "aa",
                        "control",
                        {"control": _arm_data(c, i, t, windows), "variant": _arm_data(v, i, t, windows)},
                    ),
                    guard,
                    lab,
                )
                real = ev.verdicts[0].outcome == "pause"
                if real != bool(pause[i]):
                    raise AssertionError(
                        f"vectorised rules and evaluate_experiment disagree (rep {start + i}, "
                        f"hour {hour}: {ev.verdicts[0].outcome})"
                    )
                agreed += 1
            if pause.any():
                first_pause_hours += [hour] * int(pause.sum())
                paused_total += int(pause.sum())
                live &= ~pause
    return {
        "reps": reps,
        "days": days,
        "looks_per_experiment": int(days * 24),
        "error_rate": error_rate,
        "slo": slo,
        "units_per_hour_per_arm": units_per_bin * per_hour,
        "paused": paused_total,
        "pause_rate": paused_total / reps,
        "environment_look_share": env_looks / max(1, looks_total),
        "checked_looks": agreed,
        "first_pause_hours": first_pause_hours,
        "seconds": time.perf_counter() - t0,
    }


def main(argv: list[str]) -> None:
    reps = int(argv[0]) if argv else 1000
    days = float(argv[1]) if len(argv) > 1 else 28
    print(
        f"A/A false-pause rate, {reps} experiments x {days:g} days, hourly decisions, defaults "
        "(windows 1h/5m @14.4 and 6h/30m @6, alpha 0.005, min 100 units per arm, 36 new units per arm per hour)"
    )
    for label, p, slo in SCENARIOS:
        r = simulate(reps, days, p, slo)
        print(
            f"  {label:43s} paused {r['paused']:4d}/{reps} = {100 * r['pause_rate']:.2f} %  "
            f"(control fires at {100 * r['environment_look_share']:.0f} % of looks; "
            f"{r['checked_looks']} looks checked against evaluate_experiment; {r['seconds']:.0f} s)"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
