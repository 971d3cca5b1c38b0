"""Bandits for ordinary experiments: Thompson sampling, sticky assignment, and an analysis that survives both.

``kind = "bandit"`` experiments move traffic toward the arm that is winning on
a decision metric. Three things must hold for that to be safe:

**Weights** (:func:`thompson_weights`). Each arm's metric has a posterior --
Beta(1 + successes, 1 + failures) for a conversion or an error rate, a normal
approximation ``N(mean, var / n)`` for a numeric metric such as revenue or
latency. The weight of an arm is its probability of being the best, estimated
by Monte Carlo from a seeded generator, so the controller and anyone replaying
its decision get the same weights from the same counts and seed. Then a floor
(at least 1 % per arm: every arm keeps producing evidence, and the analysis
keeps a comparison in every period) and a burn-in (no update before every arm
has ``burn_in`` units, 100 by default: early posteriors are noise). Weights are
published in basis points with a ``version`` (:class:`BanditWeights`).

**Assignment** (:func:`assign_with_weights`). The contract's bucket
(``bucket(salt, unit)``, 0..9999) is cut into consecutive ranges by the
cumulative weights; the bucket decides. Deterministic given the published
weights version, computable in SQL.

**Stickiness for ``user`` units** (:class:`EnrolmentSchedule`). If the ranges
simply moved when the weights change, every user in a moved range would
switch arm: a broken experience, and an analysis that no longer knows what a
user was exposed to. Per-user storage (a table of first assignments, or a
cookie carrying the first-seen period) fixes that at a cost: a write on the
request path, a store every process must reach, state lost with a cookie.
fieldlab's design needs no per-user storage: **enrolment by slices of the
bucket space**. The experiment's traffic is opened in slices; period ``k``
owns the buckets ``[lo_k, hi_k)`` it opened, and a unit whose bucket lies there
is assigned inside that slice by period ``k``'s weights -- forever. A new
weights version opens the *next* slice of still-unenrolled buckets with the
new weights; buckets of earlier periods never change. So a user's arm is
decided by the weights of the period in which their bucket was first opened,
which is the period in which they could first be seen in the experiment.

The tradeoff, stated plainly: adaptation happens only through new
enrolment. Each period adds a slice, so the experiment's traffic grows
period by period (it is a ramp), a user enrolled early never benefits from
later learning, and once the traffic cap is reached the weights are frozen
for ``user`` units (the controller keeps computing posteriors, but only new
slices could use them). Choose slices so that the ramp fits the experiment:
e.g. 10 % of the population per period over ten periods. For ``request`` or
short ``session`` units, where switching does not hurt, use
:func:`assign_with_weights` with the current weights and the full traffic.

**Analysis** (:func:`per_period_effect`, :func:`srm_by_period`). A bandit's
allocation changes over time; if the baseline changes too (weekday vs
weekend, a campaign), pooling all units compares arms whose units come from
different times: Simpson's paradox, up to a reversed sign. Each period is
therefore analysed with its own allocation -- one difference per period --
and the periods are combined (stratified by the period's units, or by
inverse variance); the sample-ratio check runs per period against that
period's weights. :func:`pooled_effect` is the naive estimate, kept to show
the bias.

Pure Python; :func:`srm_by_period` imports :mod:`fieldlab.analysis.stats`
(numpy, scipy) lazily.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

from .._hashing import BUCKETS
from ..errors import ConfigError

__all__ = [
    "DEFAULT_FLOOR",
    "DEFAULT_BURN_IN",
    "DEFAULT_DRAWS",
    "KINDS",
    "ArmStats",
    "ThompsonResult",
    "thompson_weights",
    "to_basis_points",
    "BanditWeights",
    "assign_with_weights",
    "Period",
    "EnrolmentSchedule",
    "PeriodData",
    "per_period_effect",
    "pooled_effect",
    "srm_by_period",
]

#: Minimum weight of any arm (1 %).
DEFAULT_FLOOR = 0.01
#: Units every arm needs before the first update.
DEFAULT_BURN_IN = 100
#: Monte Carlo draws for P(arm is best).
DEFAULT_DRAWS = 10_000
#: Metric kinds: ``conversion`` and ``error`` are rates (Beta posteriors); ``numeric`` is a mean (normal).
KINDS = ("conversion", "error", "numeric")

_Z = NormalDist()


@dataclass(frozen=True)
class ArmStats:
    """One arm's data in one period (or overall): units, and the metric's sufficient statistics.

    For a rate (``conversion``, ``error``): ``successes`` is the count of units
    with the event. For ``numeric``: ``total`` and ``total_sq`` are the sum and
    the sum of squares of the per-unit values.
    """

    units: int
    successes: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    def mean(self, kind: str) -> float:
        """The arm's estimate: a rate or a mean; NaN without units."""
        if self.units <= 0:
            return float("nan")
        return (self.successes if kind != "numeric" else self.total) / self.units

    def variance_of_mean(self, kind: str) -> float:
        """Sampling variance of :meth:`mean` (binomial for rates, sample variance / n for numeric)."""
        n = self.units
        if n <= 1:
            return float("nan")
        if kind != "numeric":
            p = self.successes / n
            return p * (1 - p) / n
        m = self.total / n
        var = max(self.total_sq - n * m * m, 0.0) / (n - 1)
        return var / n


@dataclass(frozen=True)
class ThompsonResult:
    """The outcome of one weights computation: the weights, P(best) per arm, and why."""

    weights: tuple[float, ...]
    p_best: tuple[float, ...] | None
    updated: bool
    reason: str


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError("kind", f"{kind!r} is not a bandit metric kind", f"use one of {', '.join(KINDS)}")


def thompson_weights(
    arms: Sequence[ArmStats],
    *,
    kind: str = "conversion",
    higher_is_better: bool | None = None,
    seed: int = 0,
    draws: int = DEFAULT_DRAWS,
    floor: float = DEFAULT_FLOOR,
    burn_in: int = DEFAULT_BURN_IN,
) -> ThompsonResult:
    """Thompson-sampling weights: ``floor + (1 - k floor) * P(arm is best)``; equal weights during burn-in.

    ``higher_is_better`` defaults to True for ``conversion`` and ``numeric`` and
    False for ``error`` (a lower error rate wins). The Monte Carlo uses
    ``random.Random(seed)``, so the result is a pure function of its inputs.
    """
    _check_kind(kind)
    k = len(arms)
    if k < 2:
        raise ConfigError("variants", f"a bandit needs at least 2 arms, got {k}", "add a variant")
    if not 0 <= floor <= 1.0 / k:
        raise ConfigError("floor", f"{floor} is outside 0..1/{k}", f"use at most {1.0 / k:.4f} for {k} arms")
    if higher_is_better is None:
        higher_is_better = kind != "error"
    short = [i for i, a in enumerate(arms) if a.units < burn_in]
    if short:
        return ThompsonResult(
            tuple(1.0 / k for _ in arms),
            None,
            False,
            f"burn-in: arm {short[0]} has {arms[short[0]].units} units < {burn_in}; equal split kept",
        )
    rng = random.Random(seed)
    sign = 1.0 if higher_is_better else -1.0
    samplers: list[Any] = []
    for a in arms:
        if kind == "numeric":
            m, v = a.mean(kind), a.variance_of_mean(kind)
            sd = math.sqrt(v) if math.isfinite(v) and v > 0 else 0.0
            samplers.append((m, sd))
        else:
            samplers.append((a.successes + 1.0, a.units - a.successes + 1.0))
    wins = [0] * k
    for _ in range(draws):
        best_i, best_v = 0, -math.inf
        for i, (x, y) in enumerate(samplers):
            v = sign * (rng.gauss(x, y) if kind == "numeric" else rng.betavariate(x, y))
            if v > best_v:
                best_i, best_v = i, v
        wins[best_i] += 1
    p_best = tuple(w / draws for w in wins)
    weights = tuple(floor + (1.0 - k * floor) * p for p in p_best)
    lead = max(range(k), key=lambda i: p_best[i])
    return ThompsonResult(
        weights,
        p_best,
        True,
        f"Thompson sampling, {draws} draws, seed {seed}: arm {lead} is best with probability {p_best[lead]:.3f}",
    )


def to_basis_points(weights: Sequence[float], floor: float = 0.0) -> tuple[int, ...]:
    """Weights as integer basis points summing to 10000, none below ``floor`` (largest remainder)."""
    total = float(sum(weights))
    if total <= 0 or any(w < 0 for w in weights):
        raise ConfigError("weights", f"{list(weights)} are not nonnegative with a positive sum", "give shares >= 0")
    raw = [w / total * BUCKETS for w in weights]
    floor_bp = math.ceil(floor * BUCKETS - 1e-9)
    bp = [max(int(x), floor_bp) for x in raw]
    diff = BUCKETS - sum(bp)
    order = sorted(range(len(raw)), key=lambda i: raw[i] - int(raw[i]), reverse=diff > 0)
    i = 0
    while diff != 0 and i < 10 * len(bp) + BUCKETS:
        j = order[i % len(order)]
        if diff > 0:
            bp[j] += 1
            diff -= 1
        elif bp[j] > floor_bp:
            bp[j] -= 1
            diff += 1
        i += 1
    return tuple(bp)


@dataclass(frozen=True)
class BanditWeights:
    """A published weights version: what every process assigns with until the next one."""

    version: int
    weights_bp: tuple[int, ...]
    reason: str = ""
    p_best: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if sum(self.weights_bp) != BUCKETS or any(w < 0 for w in self.weights_bp):
            raise ConfigError("weights_bp", f"{self.weights_bp} do not sum to {BUCKETS}", "publish basis points")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for the state store."""
        return {
            "version": self.version,
            "weights_bp": list(self.weights_bp),
            "reason": self.reason,
            "p_best": list(self.p_best) if self.p_best is not None else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BanditWeights:
        """Inverse of :meth:`to_dict`."""
        pb = data.get("p_best")
        return cls(
            int(data["version"]),
            tuple(int(x) for x in data["weights_bp"]),
            str(data.get("reason", "")),
            tuple(float(x) for x in pb) if pb is not None else None,
        )


def assign_with_weights(bucket: int, weights: Sequence[int]) -> int:
    """The arm index of ``bucket`` (0..9999) under basis-point ``weights``: consecutive ranges, in arm order.

    Arm ``i`` owns ``[C_i, C_i + w_i)`` with ``C_i`` the sum of the weights
    before it. In SQL: the first ``i`` with ``bucket < C_(i+1)``.
    """
    if not 0 <= bucket < BUCKETS:
        raise ValueError(f"bucket {bucket} is outside 0..{BUCKETS - 1}")
    acc = 0
    for i, w in enumerate(weights):
        acc += w
        if bucket < acc:
            return i
    raise ValueError(f"weights {list(weights)} sum to {acc}, not {BUCKETS}")


@dataclass(frozen=True)
class Period:
    """One enrolment period: its weights version, the bucket slice it opened, and its weights."""

    version: int
    lo: int
    hi: int
    weights_bp: tuple[int, ...]

    def arm_of(self, bucket: int) -> int:
        """The arm of a bucket inside this slice: the slice is cut by the period's cumulative weights."""
        width = self.hi - self.lo
        pos = bucket - self.lo
        acc = 0
        for i, w in enumerate(self.weights_bp):
            acc += w
            if pos < width * acc // BUCKETS:
                return i
        return len(self.weights_bp) - 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"version": self.version, "lo": self.lo, "hi": self.hi, "weights_bp": list(self.weights_bp)}


@dataclass(frozen=True)
class EnrolmentSchedule:
    """Sticky assignment without per-user storage: slices of the bucket space, each with its period's weights.

    ``cap`` is the experiment's traffic in basis points (the share of the
    population that may ever be enrolled); ``periods`` are consecutive, the
    first starting at 0. A bucket in period ``k``'s slice gets period ``k``'s
    weights forever; a bucket beyond the last slice is not (yet) enrolled.
    """

    cap: int
    periods: tuple[Period, ...] = field(default_factory=tuple)

    @property
    def enrolled(self) -> int:
        """Buckets opened so far."""
        return self.periods[-1].hi if self.periods else 0

    def assign(self, bucket: int) -> tuple[int, int] | None:
        """``(arm, period index)`` of a bucket, or None when its slice has not been opened."""
        for k, p in enumerate(self.periods):
            if p.lo <= bucket < p.hi:
                return p.arm_of(bucket), k
        return None

    def open_period(self, weights: BanditWeights, slice_bp: int) -> EnrolmentSchedule:
        """A new schedule with the next ``slice_bp`` buckets (up to ``cap``) opened under ``weights``.

        Earlier slices are untouched, which is the whole point. When the cap is
        reached the schedule is returned unchanged: ``user`` units cannot adapt
        any further (see the module's tradeoff).
        """
        if slice_bp <= 0:
            raise ConfigError(
                "slice", f"{slice_bp} basis points is not positive", "open at least 1 basis point per period"
            )
        lo = self.enrolled
        hi = min(lo + slice_bp, self.cap)
        if hi <= lo:
            return self
        return EnrolmentSchedule(self.cap, self.periods + (Period(weights.version, lo, hi, weights.weights_bp),))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for the state store."""
        return {"cap": self.cap, "periods": [p.to_dict() for p in self.periods]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EnrolmentSchedule:
        """Inverse of :meth:`to_dict`."""
        return cls(
            int(data["cap"]),
            tuple(
                Period(int(p["version"]), int(p["lo"]), int(p["hi"]), tuple(int(x) for x in p["weights_bp"]))
                for p in data["periods"]
            ),
        )


# ------------------------------------------------------------------------------------------------
# Analysis
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeriodData:
    """One period's allocation (weights, any scale) and each arm's data in that period."""

    weights: tuple[float, ...]
    arms: tuple[ArmStats, ...]


def per_period_effect(
    periods: Sequence[PeriodData],
    *,
    treatment: int = 1,
    control: int = 0,
    kind: str = "conversion",
    method: str = "stratified",
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Treatment minus control, estimated within each period and then combined: no Simpson's paradox.

    ``method="stratified"`` weighs each period's difference by its share of
    units (the effect averaged over the experiment's own time mix);
    ``"inverse_variance"`` by ``1 / (1/n_t + 1/n_c)``, the inverse variance of
    the period's difference up to the per-unit variance, which is assumed equal
    across periods (Mantel-Haenszel's weights: the most precise if the effect is
    the same in every period; the weights use no outcome, because weights from
    estimated variances correlate with the estimates and bias the result when an
    arm holds few units, as a bandit's floor arms do). Periods where either arm has fewer than two
    units are skipped and listed. The interval is a normal (fixed-horizon) one.
    """
    _check_kind(kind)
    if method not in ("stratified", "inverse_variance"):
        raise ConfigError("method", f"{method!r} is not a combination method", "use stratified or inverse_variance")
    rows: list[dict[str, Any]] = []
    skipped: list[int] = []
    for k, p in enumerate(periods):
        c, t = p.arms[control], p.arms[treatment]
        if c.units < 2 or t.units < 2:
            skipped.append(k)
            continue
        d = t.mean(kind) - c.mean(kind)
        v = t.variance_of_mean(kind) + c.variance_of_mean(kind)
        rows.append(
            {
                "period": k,
                "difference": d,
                "variance": v,
                "units": sum(a.units for a in p.arms),
                "precision": 1.0 / (1.0 / t.units + 1.0 / c.units),
            }
        )
    if not rows:
        return {
            "estimate": None,
            "variance": None,
            "ci_low": None,
            "ci_high": None,
            "periods": rows,
            "skipped": skipped,
            "method": method,
        }
    if method == "stratified":
        total = float(sum(r["units"] for r in rows))
        ws = [r["units"] / total for r in rows]
    else:
        inv = [r["precision"] for r in rows]
        s = sum(inv)
        ws = [x / s for x in inv]
    est = sum(w * r["difference"] for w, r in zip(ws, rows, strict=False))
    var = sum(w * w * r["variance"] for w, r in zip(ws, rows, strict=False))
    z = _Z.inv_cdf(1 - alpha / 2)
    hw = z * math.sqrt(var) if var >= 0 else float("nan")
    for w, r in zip(ws, rows, strict=False):
        r["weight"] = w
    return {
        "estimate": est,
        "variance": var,
        "ci_low": est - hw,
        "ci_high": est + hw,
        "periods": rows,
        "skipped": skipped,
        "method": method,
    }


def pooled_effect(
    periods: Sequence[PeriodData], *, treatment: int = 1, control: int = 0, kind: str = "conversion"
) -> float:
    """The naive estimate: all periods' units pooled per arm, then differenced. Biased when allocation and baseline both move."""
    _check_kind(kind)

    def pool(i: int) -> ArmStats:
        return ArmStats(
            sum(p.arms[i].units for p in periods),
            sum(p.arms[i].successes for p in periods),
            sum(p.arms[i].total for p in periods),
            sum(p.arms[i].total_sq for p in periods),
        )

    return pool(treatment).mean(kind) - pool(control).mean(kind)


def srm_by_period(periods: Sequence[PeriodData], alpha: float | None = None) -> list[dict[str, Any]]:
    """The sample-ratio check of each period against that period's own weights (chi-square, stats.srm_test)."""
    from ..analysis.stats import SRM_ALPHA, srm_test

    out = []
    for k, p in enumerate(periods):
        res = srm_test([a.units for a in p.arms], list(p.weights), SRM_ALPHA if alpha is None else alpha)
        res["period"] = k
        out.append(res)
    return out
