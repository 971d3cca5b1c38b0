"""The arithmetic of guardrails: window counts, burn rates, always-valid comparisons, the experiment budget.

Everything here is a pure function of counts, so the controller, the tests and
the A/A simulation run the same code.

* A **burn rate** is a bad-request rate over the SLO's budget: with an SLO of
  99.5 % the budget is 0.5 % bad requests, and 7 % bad requests burn it 14x.
* **Worse than control** is judged on per-unit aggregates (the unit of
  randomisation, as the analysis does) with the always-valid confidence
  sequences of :mod:`fieldlab.analysis.stats`: the controller looks every
  round, for the whole life of an experiment, and a fixed-horizon test would
  cry wolf. The per-unit data is carried as sufficient statistics
  (:class:`Moments`: n, sums, sums of squares and cross-products), which a SQL
  engine computes without shipping one row per unit.
* The **experimentation budget** is ``experiment_share`` % of the service's
  error budget over ``budget_period``. Each variant is charged its *excess*
  errors: its errors minus what control's error rate predicts for its
  requests (faults included, never negative). The period's budget is
  projected from the traffic observed so far when less than a period has been
  observed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..analysis.stats import RatioEstimate, cs_halfwidth
from .settings import LabGuardrails, WindowPair, format_duration

__all__ = [
    "Counts",
    "Moments",
    "ArmData",
    "burn_rate",
    "PairBurn",
    "pair_burn",
    "Interval",
    "difference_interval",
    "relative_interval",
    "BudgetStatus",
    "budget_status",
    "excess_bad",
    "with_charges",
]


@dataclass(frozen=True)
class Counts:
    """One arm's requests in one trailing window: units seen, requests, errors, requests over the latency SLO."""

    units: int = 0
    requests: int = 0
    errors: int = 0
    slow: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.units + other.units, self.requests + other.requests, self.errors + other.errors, self.slow + other.slow
        )

    def bad(self, sli: str) -> int:
        """Bad requests for an SLI: ``errors`` or ``latency`` (slow requests)."""
        return self.errors if sli == "errors" else self.slow

    def to_json(self) -> dict[str, int]:
        return {"units": self.units, "requests": self.requests, "errors": self.errors, "slow": self.slow}


@dataclass(frozen=True)
class Moments:
    """Sufficient statistics of a per-unit ratio ``sum(y) / sum(x)``: the unit count, sums, squares, products.

    For an error rate ``y`` is a unit's errors and ``x`` its requests; for a
    conversion ``y`` is 0/1 and ``x`` is 1; for a numeric metric ``y`` is the sum
    of the values and ``x`` their count.
    """

    n: int = 0
    sy: float = 0.0
    sx: float = 0.0
    syy: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0

    @classmethod
    def of_units(cls, y: Iterable[float], x: Iterable[float] | None = None) -> Moments:
        """From per-unit values (``x`` None: every unit weighs 1)."""
        ys = [float(v) for v in y]
        xs = [1.0] * len(ys) if x is None else [float(v) for v in x]
        if len(xs) != len(ys):
            raise ValueError("y and x must have one value per unit")
        return cls(
            len(ys),
            sum(ys),
            sum(xs),
            sum(v * v for v in ys),
            sum(v * v for v in xs),
            sum(a * b for a, b in zip(ys, xs, strict=True)),
        )

    def __add__(self, other: Moments) -> Moments:
        return Moments(
            self.n + other.n,
            self.sy + other.sy,
            self.sx + other.sx,
            self.syy + other.syy,
            self.sxx + other.sxx,
            self.sxy + other.sxy,
        )

    @property
    def value(self) -> float:
        return self.sy / self.sx if self.sx else float("nan")

    def estimate(self) -> RatioEstimate:
        """The delta-method ratio estimate, identical to :func:`fieldlab.analysis.stats.ratio_estimate`."""
        n = self.n
        if n == 0 or self.sx == 0:
            return RatioEstimate(float("nan"), float("nan"), n)
        r = self.sy / self.sx
        if n < 2:
            return RatioEstimate(r, float("nan"), n)
        xbar, ybar = self.sx / n, self.sy / n
        syy = (self.syy - n * ybar * ybar) / (n - 1)
        sxx = (self.sxx - n * xbar * xbar) / (n - 1)
        sxy = (self.sxy - n * xbar * ybar) / (n - 1)
        var = max(syy - 2 * r * sxy + r * r * sxx, 0.0) / (n * xbar * xbar)
        return RatioEstimate(r, var, n)

    def to_json(self) -> dict[str, float]:
        return {"n": self.n, "sy": self.sy, "sx": self.sx, "syy": self.syy, "sxx": self.sxx, "sxy": self.sxy}


@dataclass(frozen=True)
class ArmData:
    """What the guardrails know about one arm (variant) of an experiment.

    ``windows`` maps a trailing window length in seconds to its counts (every
    window of every pair, and the budget period). ``errors`` and ``slow`` are the
    per-unit statistics of the error and slow-request rates since the
    experiment started; ``metrics`` those of each guardrail metric by name.
    """

    windows: Mapping[float, Counts] = field(default_factory=dict)
    errors: Moments = Moments()
    slow: Moments = Moments()
    metrics: Mapping[str, Moments] = field(default_factory=dict)

    @property
    def units(self) -> int:
        return self.errors.n

    def window(self, seconds: float) -> Counts:
        return self.windows.get(seconds, Counts())

    def rate(self, sli: str) -> Moments:
        return self.errors if sli == "errors" else self.slow


def burn_rate(bad: int, requests: int, slo: float) -> float:
    """How many times faster than the SLO allows the budget burns: ``(bad / requests) / (1 - slo/100)``."""
    if requests <= 0:
        return 0.0
    return (bad / requests) / (1.0 - slo / 100.0)


@dataclass(frozen=True)
class PairBurn:
    """One window pair for one arm and SLI: the burn rate in each window and whether both reach the threshold."""

    pair: WindowPair
    long: Counts
    short: Counts
    long_burn: float
    short_burn: float
    sli: str

    @property
    def firing(self) -> bool:
        return self.long_burn >= self.pair.burn_rate and self.short_burn >= self.pair.burn_rate

    def to_json(self) -> dict[str, Any]:
        return {
            "pair": self.pair.name,
            "threshold": self.pair.burn_rate,
            "firing": self.firing,
            "long": {
                "window": self.pair.long_text,
                "requests": self.long.requests,
                "bad": self.long.bad(self.sli),
                "units": self.long.units,
                "burn_rate": _r(self.long_burn),
            },
            "short": {
                "window": self.pair.short_text,
                "requests": self.short.requests,
                "bad": self.short.bad(self.sli),
                "units": self.short.units,
                "burn_rate": _r(self.short_burn),
            },
        }


def pair_burn(arm: ArmData, pair: WindowPair, sli: str, slo: float) -> PairBurn:
    """The burn rates of ``arm`` in both windows of ``pair`` for the SLI ``errors`` or ``latency``."""
    lc, sc = arm.window(pair.long), arm.window(pair.short)
    return PairBurn(
        pair, lc, sc, burn_rate(lc.bad(sli), lc.requests, slo), burn_rate(sc.bad(sli), sc.requests, slo), sli
    )


@dataclass(frozen=True)
class Interval:
    """An always-valid interval for variant minus control (absolute or relative), at level ``1 - alpha``."""

    estimate: float
    low: float
    high: float
    alpha: float
    control: float
    variant: float
    n: int

    @property
    def valid(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)

    def to_json(self) -> dict[str, Any]:
        return {
            "estimate": _r(self.estimate),
            "ci_low": _r(self.low),
            "ci_high": _r(self.high),
            "alpha": self.alpha,
            "control": _r(self.control),
            "variant": _r(self.variant),
            "units": self.n,
            "kind": "always-valid confidence sequence",
        }


def _nan_interval(alpha: float, c: RatioEstimate, t: RatioEstimate) -> Interval:
    nan = float("nan")
    return Interval(t.value - c.value, nan, nan, alpha, c.value, t.value, c.n + t.n)


def difference_interval(control: Moments, variant: Moments, alpha: float) -> Interval:
    """Variant minus control of a per-unit ratio, with the always-valid confidence sequence."""
    c, t = control.estimate(), variant.estimate()
    est, var = t.value - c.value, t.variance + c.variance
    if c.n < 2 or t.n < 2 or not (math.isfinite(est) and math.isfinite(var)):
        return _nan_interval(alpha, c, t)
    hw = float(cs_halfwidth(var, c.n + t.n, alpha)) if var > 0 else 0.0
    return Interval(est, est - hw, est + hw, alpha, c.value, t.value, c.n + t.n)


def relative_interval(control: Moments, variant: Moments, alpha: float) -> Interval:
    """Variant over control minus 1 (a relative change), delta-method variance, always-valid sequence."""
    c, t = control.estimate(), variant.estimate()
    if c.n < 2 or t.n < 2 or not (math.isfinite(c.value) and math.isfinite(t.value)) or c.value == 0:
        return _nan_interval(alpha, c, t)
    rel = t.value / c.value - 1.0
    var = t.variance / c.value**2 + t.value**2 * c.variance / c.value**4
    if not math.isfinite(var):
        return _nan_interval(alpha, c, t)
    hw = float(cs_halfwidth(var, c.n + t.n, alpha)) if var > 0 else 0.0
    return Interval(rel, rel - hw, rel + hw, alpha, c.value, t.value, c.n + t.n)


# ----------------------------------------------------------------------------- the experimentation budget


def excess_bad(variant: Counts, control: Counts) -> float:
    """A variant's errors beyond what control's error rate predicts for its requests (never negative)."""
    if control.requests <= 0 or variant.requests <= 0:
        return 0.0
    return max(0.0, variant.errors - variant.requests * control.errors / control.requests)


@dataclass(frozen=True)
class BudgetStatus:
    """How much of the experimentation budget is spent, and by whom."""

    allowed: float  # excess bad requests experiments may cause in the period
    spent: float
    service: Counts  # every request of the service in the period (observed)
    observed_seconds: float
    period: float
    per_experiment: Mapping[str, float]
    per_variant: Mapping[tuple[str, str], float]
    #: Spenders that are not variants (the sick canaries), by key: halting faults stops them.
    others: Mapping[str, float] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        if self.allowed <= 0:
            return math.inf if self.spent > 0 else 0.0
        return self.spent / self.allowed

    @property
    def exhausted(self) -> bool:
        return self.spent > 0 and self.fraction >= 1.0

    def costliest(self) -> list[tuple[tuple[str, str], float]]:
        """Variants by charged excess, costliest first (uncharged ones left out)."""
        return sorted(((k, v) for k, v in self.per_variant.items() if v > 0), key=lambda kv: (-kv[1], kv[0]))

    def spenders(self) -> list[tuple[tuple[str, str | None], float]]:
        """Variants and other spenders (variant None) by charged excess, costliest first."""
        both: list[tuple[tuple[str, str | None], float]] = [(k, x) for k, x in self.per_variant.items() if x > 0]
        both += [((k, None), x) for k, x in self.others.items() if x > 0]
        return sorted(both, key=lambda kx: (-kx[1], kx[0][0], kx[0][1] or ""))

    def to_json(self) -> dict[str, Any]:
        return {
            "allowed": _r(self.allowed),
            "spent": _r(self.spent),
            "used": _r(self.fraction),
            "exhausted": self.exhausted,
            "period": format_duration(self.period),
            "observed": format_duration(max(self.observed_seconds, 1.0)),
            "service": self.service.to_json(),
            "experiments": {k: _r(v) for k, v in sorted(self.per_experiment.items())},
            "variants": {f"{e}/{v}": _r(x) for (e, v), x in sorted(self.per_variant.items())},
        }


def budget_status(
    lab: LabGuardrails,
    service: Counts,
    observed_seconds: float,
    arms: Mapping[str, Mapping[str, Counts]],
    controls: Mapping[str, str],
) -> BudgetStatus:
    """The experimentation budget over the rolling ``lab.budget_period``.

    ``service``: all requests of the service in the period; ``observed_seconds``:
    how much of the period the data covers (the budget is projected to a full
    period from the rate seen); ``arms``: per experiment, per variant, its counts
    in the period; ``controls``: each experiment's control variant.
    """
    covered = min(max(observed_seconds, min(w.short for w in lab.windows)), lab.budget_period)
    projected = service.requests * lab.budget_period / covered if covered > 0 else 0.0
    allowed = projected * (1.0 - lab.service_slo / 100.0) * lab.experiment_share / 100.0
    per_variant: dict[tuple[str, str], float] = {}
    per_exp: dict[str, float] = {}
    for exp, variants in arms.items():
        control = variants.get(controls.get(exp, ""), Counts())
        total = 0.0
        for name, counts in variants.items():
            if name == controls.get(exp):
                continue
            x = excess_bad(counts, control)
            per_variant[(exp, name)] = x
            total += x
        per_exp[exp] = total
    return BudgetStatus(
        allowed, sum(per_exp.values()), service, observed_seconds, lab.budget_period, per_exp, per_variant
    )


def with_charges(budget: BudgetStatus, charges: Mapping[str, float]) -> BudgetStatus:
    """``budget`` with more spenders charged by key (the sick canaries' excess bad requests): they count in
    the spend and in ``per_experiment``, not among the variants a spent budget pauses (a spent budget halts
    every fault, which stops a canary)."""
    extra = {k: x for k, x in charges.items() if x > 0}
    if not extra:
        return budget
    per_exp = dict(budget.per_experiment)
    for k, x in extra.items():
        per_exp[k] = per_exp.get(k, 0.0) + x
    others = dict(budget.others)
    for k, x in extra.items():
        others[k] = others.get(k, 0.0) + x
    return replace(budget, spent=budget.spent + sum(extra.values()), per_experiment=per_exp, others=others)


def _r(x: float) -> float | None:
    """A float for JSON: rounded to 6 significant digits, None when not finite."""
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.6g}")
