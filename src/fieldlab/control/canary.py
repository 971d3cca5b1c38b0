"""The sick canary: find the latency dose a service breaks at, with few requests, inside the rails.

A canary is a small share of traffic (``traffic`` percent of units) split into
the canary's own *control* (no fault) and a few *dose arms*, each injecting a
fixed latency at a fault point. The controller calls :func:`advance` once a
round with the cumulative counts of every arm (requests, errors, requests over
the latency SLO) and gets back a new :class:`CanaryState`: which doses run,
with which weights, what has been learnt, and why.

The search, in the order a phase-I dose-finding trial runs it:

1. **Escalation.** The smallest ladder dose opens first. A dose is *probably
   safe* once it has ``min_units`` requests, no breach, and a Beta posterior
   (Jeffreys) that puts less than ``escalate_below`` probability above the SLO
   allowance; then the next ladder dose opens and the probably-safe one is
   retired unconfirmed: it is confirmed later only if the bracket needs it
   (a larger safe dose implies it).
2. **Decisions, always valid.** Against each allowance (errors: ``1 -
   error_slo``; slow requests: ``1 - latency_slo.percent``) a dose carries two
   mixture likelihood ratios (:func:`slo_evidence`): exact, valid at any
   number of requests and under continuous monitoring (Ville's inequality). A
   dose is *broken* when the "above" evidence reaches ``1/alpha_break`` for a
   rate **and** it is worse than the canary's control by the always-valid
   confidence sequence of :func:`fieldlab.analysis.stats.compare` (a dose is
   never blamed for what the environment does). It is *safe* when the "below"
   evidence reaches ``1/alpha`` for every rate. The levels are asymmetric on
   purpose: a false "safe" escalates into harm (``alpha`` 0.1), a false
   "broken" only stops the search lower (``alpha_break`` 0.3). Monotonicity
   does the rest: a safe dose makes every smaller dose safe, a broken dose
   makes every larger dose broken, and no traffic ever goes above a known
   failure.
3. **Refinement.** Between the largest safe dose ``lo`` (or the largest
   probably-safe one, provisionally) and the smallest broken dose ``hi`` the
   canary bisects in log-dose (``sqrt(lo * hi)``) until ``hi / lo <= (1 +
   accuracy) / (1 - accuracy)``; the breaking point is then ``2 lo hi / (lo +
   hi)``, which lies within ``accuracy`` of every point of the bracket. A dose
   still undecided after ``stall_units`` requests sits near the breaking point
   by definition: the canary flanks it with doses ``sqrt(target)`` below and
   above, whose rates are further from the allowance and decide sooner (if
   they do, the bracket is closed without the stalled dose). A dose undecided
   after ``max_units_per_dose`` is classified by its point estimate, with that
   reason in the history.

Allocation is a bandit whose reward is *information about the threshold*, not
health (:func:`_reweigh`): each undecided dose scores the expected evidence a
request adds toward its decision (the Kullback-Leibler divergence of its
estimated rate from the allowance), times the probability that the decision
matters (a lower dose only matters if the next larger one breaks), divided
by its expected bad rate (information per unit of budget). Every active dose
keeps a floor, the control a fixed share, a new dose starts at its floor and
its requests at most double per round (slow start), and what is not
allocated stays outside the canary. Decided doses get nothing.

A breach of the SLO by the canary's control (the environment, not the dose)
stops the canary at once; so does :func:`halt` (kill switch, ``FIELDLAB_FAULTS=off``,
a spent experimentation budget), which the controller calls.

Per request, :func:`choose_arm` decides the arm from the trace id and the
published weights through the assignment contract (``bucket`` and
``variant_boundaries``), so every service on a request's path agrees and a
replay reproduces it.

Everything here is pure: no I/O, no clock, no framework. numpy/scipy are
needed only by :func:`advance` (through :mod:`fieldlab.analysis.stats`), and
imported there lazily; :func:`choose_arm` needs only the hashing contract.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .._hashing import BUCKETS, bucket, traffic_basis_points, variant_boundaries
from ..errors import ConfigError

__all__ = [
    "CONTROL",
    "SteadyState",
    "CanarySpec",
    "ArmCounts",
    "DoseArm",
    "Decision",
    "CanaryState",
    "parse_doses",
    "parse_steady_state",
    "dose_label",
    "start",
    "advance",
    "halt",
    "weight_table",
    "choose_arm",
    "dose_of",
    "beta_tail",
    "probability_breaks",
    "slo_evidence",
    "dose_response",
]

#: Label of the canary's own control arm (no fault).
CONTROL = "control"

# Statuses of a dose arm.
ACTIVE, SAFE, BROKEN, RETIRED = "active", "safe", "broken", "retired"
# Phases of a canary.
ESCALATING, REFINING, DONE, STOPPED = "escalating", "refining", "done", "stopped"

_MAX_LADDER = 64


@dataclass(frozen=True)
class SteadyState:
    """The steady-state criteria a dose must keep: an error SLO and, optionally, a latency SLO.

    ``error_slo`` is the percent of requests that must succeed (99.5 allows
    0.5 % errors); ``latency_ms``/``latency_percent`` say that ``latency_percent``
    percent of requests finish under ``latency_ms``.
    """

    error_slo: float = 99.5
    latency_ms: float | None = None
    latency_percent: float = 99.0

    @property
    def error_allowance(self) -> float:
        """The share of requests that may fail (``1 - error_slo / 100``)."""
        return (100.0 - self.error_slo) / 100.0

    @property
    def slow_allowance(self) -> float | None:
        """The share of requests that may be over ``latency_ms``; None without a latency SLO."""
        return None if self.latency_ms is None else (100.0 - self.latency_percent) / 100.0

    def to_dict(self) -> dict[str, Any]:
        """The table form (``latency_slo`` nested as in the config)."""
        out: dict[str, Any] = {"error_slo": self.error_slo}
        if self.latency_ms is not None:
            out["latency_slo"] = {"ms": self.latency_ms, "percent": self.latency_percent}
        return out


@dataclass(frozen=True)
class CanarySpec:
    """A validated canary: the ladder, the criteria and the search's tuning.

    The defaults are the ones ``benchmarks/bench_canary.py`` measures; change
    them there first.
    """

    key: str
    doses: tuple[float, ...]
    steady: SteadyState = field(default_factory=SteadyState)
    #: Relative precision of the breaking point: the search stops when every point of the bracket is within it.
    accuracy: float = 0.10
    #: Level of the always-valid test that calls a dose safe (an error here escalates into harm).
    alpha: float = 0.1
    #: Level of the test that calls a dose broken (an error here only stops lower: safe, at some accuracy).
    alpha_break: float = 0.3
    #: Level of the test that stops the whole canary because its control breaks the SLO (a false stop wastes the run).
    alpha_environment: float = 0.01
    #: Tuning ``n*`` of the confidence sequence comparing a dose with control: the request count where it is
    #: tightest. Small, because a breaking dose should be blamed after a few dozen requests.
    tuning: float = 200.0
    #: Share of the canary's traffic that stays fault-free, as the comparison for every dose.
    control_share: float = 0.1
    #: Minimum share of the canary's traffic per active dose.
    floor: float = 0.03
    #: How many doses may run at once.
    max_active: int = 3
    #: Requests a dose needs before it can be confirmed safe or let the next dose open.
    min_units: int = 200
    #: Requests a dose needs before it can be declared broken (the tests are asymptotic).
    min_break_units: int = 3
    #: Posterior probability of breaking below which a dose lets the next one open.
    escalate_below: float = 0.2
    #: Requests after which an undecided dose is classified by its point estimate.
    max_units_per_dose: int = 3000
    #: Requests after which an undecided dose inside the bracket gets neighbours at +-``accuracy``.
    stall_units: int = 1000
    #: Where the refinement probes the bracket ``[lo, hi]``, in log-dose: 0.5 bisects; lower probes spend less budget.
    bisect_at: float = 0.5
    #: Smallest dose the search may try when the first ladder dose already breaks.
    min_dose_ms: float = 1.0

    def __post_init__(self) -> None:
        if not self.doses:
            raise ConfigError("doses", "the ladder is empty", "give at least one dose")
        if not 0 < self.accuracy < 1:
            raise ConfigError("accuracy", f"{self.accuracy} is outside (0, 1)", "use e.g. 0.1 for +-10 %")
        if not 0 < self.control_share < 1:
            raise ConfigError("control_share", f"{self.control_share} is outside (0, 1)", "use e.g. 0.2")
        if not 0 <= self.floor * self.max_active < 1 - self.control_share:
            raise ConfigError(
                "floor",
                f"{self.floor} x {self.max_active} doses leaves no room for allocation",
                "lower the floor or max_active",
            )

    @property
    def target_ratio(self) -> float:
        """The bracket ratio ``hi / lo`` at which the breaking point is known to ``accuracy``."""
        return (1.0 + self.accuracy) / (1.0 - self.accuracy)

    @classmethod
    def from_table(cls, table: Mapping[str, Any], path: str = "canaries[0]", **tuning: Any) -> CanarySpec:
        """Build from a ``[[canaries]]`` table (``key``, ``doses``, ``steady_state``); other keys are the caller's."""
        key = table.get("key")
        if not isinstance(key, str) or not key:
            raise ConfigError(
                f"{path}.key", "is missing or not a string", 'give the canary a name, e.g. key = "inventory-latency"'
            )
        if "doses" not in table:
            raise ConfigError(
                f"{path}.doses",
                "is missing",
                "give doses = { latency_ms = [25, 50, 100] } or { start = 25, factor = 2, max = 1600 }",
            )
        doses = parse_doses(table["doses"], f"{path}.doses")
        steady = parse_steady_state(table.get("steady_state", {}), f"{path}.steady_state")
        return cls(key=key, doses=doses, steady=steady, **tuning)


@dataclass(frozen=True)
class ArmCounts:
    """Cumulative counts of one arm: requests, errors, requests over the latency SLO, and bad requests.

    ``bad`` (error or slow, each request once) defaults to ``min(errors + slow, requests)``
    when the source cannot say which errors were also slow.
    """

    requests: int
    errors: int = 0
    slow: int = 0
    bad: int | None = None

    @property
    def bad_requests(self) -> int:
        """Requests that were an error or over the latency SLO."""
        return self.bad if self.bad is not None else min(self.errors + self.slow, self.requests)


@dataclass
class DoseArm:
    """One dose of the search: its counts, its status and why it has that status."""

    dose: float
    status: str = ACTIVE
    requests: int = 0
    errors: int = 0
    slow: int = 0
    bad: int = 0
    reason: str = "opened"
    opened_round: int = 0

    @property
    def label(self) -> str:
        """The arm's name on spans and in the state store."""
        return dose_label(self.dose)


@dataclass
class Decision:
    """One thing the canary did, with the reason a person reads and the evidence behind it."""

    round: int
    action: str
    reason: str
    dose: float | None = None
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "round": self.round,
            "action": self.action,
            "dose": self.dose,
            "reason": self.reason,
            "evidence": dict(self.evidence),
        }


@dataclass
class CanaryState:
    """Everything the canary knows; :meth:`to_dict` is what the state store keeps.

    ``weights`` maps arm labels (``control`` and ``"<dose>ms"``) to shares of the
    canary's traffic summing to 1, ``weights_version`` changes whenever they do.
    ``bracket`` is ``[lo, hi]``: the largest dose confirmed safe (0 if none) and
    the smallest confirmed broken (None if none).
    """

    key: str
    phase: str = ESCALATING
    round: int = 0
    arms: list[DoseArm] = field(default_factory=list)
    control: ArmCounts = field(default_factory=lambda: ArmCounts(0))
    weights: dict[str, float] = field(default_factory=dict)
    weights_version: int = 0
    bracket: list[float | None] = field(default_factory=lambda: [0.0, None])
    breaking_point: float | None = None
    outcome: str | None = None
    history: list[Decision] = field(default_factory=list)
    #: Requests the canary's traffic share brings per round (measured; sets how fast a dose's share may grow).
    per_round: float | None = None

    # -- derived ------------------------------------------------------------------------------
    @property
    def requests_spent(self) -> int:
        """Requests of the canary so far (its control included)."""
        return self.control.requests + sum(a.requests for a in self.arms)

    @property
    def bad_spent(self) -> int:
        """Bad requests of the dose arms so far: what the canary cost in errors and slow requests."""
        return sum(a.bad for a in self.arms)

    @property
    def excess_bad(self) -> float:
        """Bad requests of the dose arms beyond what the control's rate predicts for them (the budget charge)."""
        c = self.control
        rate = c.bad_requests / c.requests if c.requests else 0.0
        return max(0.0, sum(a.bad - rate * a.requests for a in self.arms))

    @property
    def finished(self) -> bool:
        """True once the canary is done or stopped: it injects nothing any more."""
        return self.phase in (DONE, STOPPED)

    def arm(self, dose: float) -> DoseArm | None:
        """The arm of ``dose`` (after rounding to the ladder's resolution), if opened."""
        d = _round_dose(dose)
        for a in self.arms:
            if a.dose == d:
                return a
        return None

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict: what the state store keeps and ``fieldlab status --json`` shows."""
        return {
            "key": self.key,
            "phase": self.phase,
            "round": self.round,
            "arms": [
                {
                    "dose": a.dose,
                    "label": a.label,
                    "status": a.status,
                    "requests": a.requests,
                    "errors": a.errors,
                    "slow": a.slow,
                    "bad": a.bad,
                    "reason": a.reason,
                    "opened_round": a.opened_round,
                }
                for a in self.arms
            ],
            "control": {
                "requests": self.control.requests,
                "errors": self.control.errors,
                "slow": self.control.slow,
                "bad": self.control.bad_requests,
            },
            "weights": dict(self.weights),
            "weights_version": self.weights_version,
            "bracket": list(self.bracket),
            "breaking_point": self.breaking_point,
            "outcome": self.outcome,
            "requests_spent": self.requests_spent,
            "bad_spent": self.bad_spent,
            "excess_bad": self.excess_bad,
            "history": [d.to_dict() for d in self.history],
            "per_round": self.per_round,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CanaryState:
        """The inverse of :meth:`to_dict` (derived fields are recomputed, not read)."""
        c = data.get("control", {})
        return cls(
            key=str(data["key"]),
            phase=str(data.get("phase", ESCALATING)),
            round=int(data.get("round", 0)),
            arms=[
                DoseArm(
                    dose=float(a["dose"]),
                    status=str(a["status"]),
                    requests=int(a["requests"]),
                    errors=int(a["errors"]),
                    slow=int(a["slow"]),
                    bad=int(a["bad"]),
                    reason=str(a.get("reason", "")),
                    opened_round=int(a.get("opened_round", 0)),
                )
                for a in data.get("arms", [])
            ],
            control=ArmCounts(
                int(c.get("requests", 0)),
                int(c.get("errors", 0)),
                int(c.get("slow", 0)),
                int(c["bad"]) if c.get("bad") is not None else None,
            ),
            weights={str(k): float(v) for k, v in data.get("weights", {}).items()},
            weights_version=int(data.get("weights_version", 0)),
            bracket=[_opt_float(x) for x in data.get("bracket", [0.0, None])],
            breaking_point=_opt_float(data.get("breaking_point")),
            outcome=data.get("outcome"),
            history=[
                Decision(
                    round=int(d["round"]),
                    action=str(d["action"]),
                    reason=str(d["reason"]),
                    dose=_opt_float(d.get("dose")),
                    evidence=dict(d.get("evidence", {})),
                )
                for d in data.get("history", [])
            ],
            per_round=_opt_float(data.get("per_round")),
        )


def _opt_float(x: Any) -> float | None:
    return None if x is None else float(x)


# ------------------------------------------------------------------------------------------------
# Config pieces
# ------------------------------------------------------------------------------------------------


def _round_dose(x: float) -> float:
    """Doses live on a 0.1 ms grid: bisection points must compare equal across rounds and processes."""
    return round(float(x), 1)


def dose_label(dose: float) -> str:
    """The arm label of a dose: ``"100ms"``, ``"141.4ms"``."""
    return f"{_round_dose(dose):g}ms"


def _positive(value: Any, path: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(
            path, f"{value!r} is not a positive number", f"give {what} as a number of milliseconds above 0"
        )
    return float(value)


def parse_doses(value: Any, path: str = "doses") -> tuple[float, ...]:
    """The dose ladder from ``{latency_ms = [...]}`` or ``{start, factor, max}``, ascending, in ms.

    Errors name the field and the fix (:class:`~fieldlab.errors.ConfigError`).
    """
    from .._fault_kinds import MAX_LATENCY_MS

    if not isinstance(value, Mapping):
        raise ConfigError(
            path,
            f"{value!r} is not a table",
            "use { latency_ms = [25, 50, 100] } or { start = 25, factor = 2, max = 1600 }",
        )
    keys = set(value)
    if keys == {"latency_ms"}:
        raw = value["latency_ms"]
        if not isinstance(raw, (list, tuple)) or not raw:
            raise ConfigError(
                f"{path}.latency_ms", f"{raw!r} is not a non-empty list", "list the doses in ms, e.g. [25, 50, 100]"
            )
        ladder = [_positive(x, f"{path}.latency_ms[{i}]", "each dose") for i, x in enumerate(raw)]
        if any(b <= a for a, b in zip(ladder, ladder[1:], strict=False)):
            raise ConfigError(
                f"{path}.latency_ms",
                "the doses are not strictly increasing",
                "list them from the smallest up, without repeats",
            )
    elif keys == {"start", "factor", "max"}:
        lo = _positive(value["start"], f"{path}.start", "start")
        top = _positive(value["max"], f"{path}.max", "max")
        factor = value["factor"]
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 1:
            raise ConfigError(
                f"{path}.factor", f"{factor!r} is not a number above 1", "use e.g. factor = 2 (each dose doubles)"
            )
        if top < lo:
            raise ConfigError(f"{path}.max", f"{top:g} is below start {lo:g}", "make max at least start")
        ladder = []
        d = lo
        while d <= top * (1 + 1e-9) and len(ladder) < _MAX_LADDER:
            ladder.append(d)
            d *= float(factor)
    else:
        raise ConfigError(
            path, f"has keys {sorted(keys)}", "give either latency_ms = [...] or all of start, factor, max"
        )
    if len(ladder) > _MAX_LADDER:
        raise ConfigError(path, f"has {len(ladder)} doses", f"use at most {_MAX_LADDER}")
    if ladder[-1] > MAX_LATENCY_MS:
        raise ConfigError(path, f"the largest dose {ladder[-1]:g} ms is above {MAX_LATENCY_MS:g} ms", "lower it")
    out = tuple(_round_dose(x) for x in ladder)
    if len(set(out)) != len(out):
        raise ConfigError(path, "two doses are equal at 0.1 ms resolution", "space the doses further apart")
    return out


def _percent(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 100:
        raise ConfigError(path, f"{value!r} is not a percentage strictly between 0 and 100", "use e.g. 99.5")
    return float(value)


def parse_steady_state(value: Any, path: str = "steady_state") -> SteadyState:
    """The ``steady_state`` table: ``error_slo``, optional ``latency_slo = {ms, percent}``, ``metrics`` (kept by the caller)."""
    if not isinstance(value, Mapping):
        raise ConfigError(
            path, f"{value!r} is not a table", "use { error_slo = 99.5, latency_slo = { ms = 1000, percent = 99 } }"
        )
    unknown = set(value) - {"error_slo", "latency_slo", "metrics"}
    if unknown:
        raise ConfigError(
            f"{path}.{min(unknown)}", "is not a steady-state key", "use error_slo, latency_slo or metrics"
        )
    error_slo = _percent(value.get("error_slo", 99.5), f"{path}.error_slo")
    lat = value.get("latency_slo")
    if lat is None:
        return SteadyState(error_slo=error_slo)
    if not isinstance(lat, Mapping) or set(lat) - {"ms", "percent"} or "ms" not in lat:
        raise ConfigError(
            f"{path}.latency_slo", f"{lat!r} is not {{ ms, percent }}", "use latency_slo = { ms = 1000, percent = 99 }"
        )
    return SteadyState(
        error_slo=error_slo,
        latency_ms=_positive(lat["ms"], f"{path}.latency_slo.ms", "ms"),
        latency_percent=_percent(lat.get("percent", 99.0), f"{path}.latency_slo.percent"),
    )


# ------------------------------------------------------------------------------------------------
# Posterior tails (pure Python: the regularised incomplete beta function)
# ------------------------------------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-12:
            break
    return h


def beta_tail(a: float, b: float, x: float) -> float:
    """``P(p > x)`` for ``p ~ Beta(a, b)``: one minus the regularised incomplete beta function."""
    if x <= 0:
        return 1.0
    if x >= 1:
        return 0.0
    ln_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(ln_front)
    if x < (a + 1.0) / (a + b + 2.0):
        cdf = front * _betacf(a, b, x) / a
    else:
        cdf = 1.0 - front * _betacf(b, a, 1.0 - x) / b
    return min(1.0, max(0.0, 1.0 - cdf))


def probability_breaks(spec: CanarySpec, requests: int, errors: int, slow: int) -> float:
    """Posterior probability (Jeffreys' Beta prior per rate) that a dose breaks the error or the latency SLO."""
    ok = 1.0 - beta_tail(errors + 0.5, requests - errors + 0.5, spec.steady.error_allowance)
    slow_allow = spec.steady.slow_allowance
    if slow_allow is not None:
        ok *= 1.0 - beta_tail(slow + 0.5, requests - slow + 0.5, slow_allow)
    return 1.0 - ok


# ------------------------------------------------------------------------------------------------
# The always-valid tests
# ------------------------------------------------------------------------------------------------


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def slo_evidence(n: int, k: int, allowance: float) -> tuple[float, float]:
    """Always-valid evidence that a rate is above / below ``allowance``: two mixture likelihood ratios (log).

    ``k`` bad among ``n`` requests, against the boundary rate ``a``. "Below"
    mixes the Bernoulli likelihood ratio over ``p`` uniform on ``[0, a]``;
    "above" over ``p`` on ``[a, 1]`` with density proportional to ``1/p^2``, which
    puts its mass near the allowance, where a breaking dose is hardest to tell
    apart. Each mixture is a nonnegative (super)martingale under every rate on
    the other side of ``a``, so by Ville's inequality it ever reaches
    ``1/alpha`` with probability at most ``alpha``, however often it is read.
    It is exact for the rare events an SLO counts (the asymptotic sequence of
    :mod:`fieldlab.analysis.stats` needs about twice the requests to clear a
    0.5 % allowance with no failure); the comparison with control still uses
    :func:`fieldlab.analysis.stats.compare`.
    """
    if n <= 0:
        return -math.inf, -math.inf
    a = allowance
    log_l0 = k * math.log(a) + (n - k) * math.log1p(-a)
    below_mass = 1.0 - beta_tail(k + 1, n - k + 1, a)  # P(p < a) under Beta(k+1, n-k+1)
    log_below = (
        _log_beta(k + 1, n - k + 1) + math.log(below_mass) - math.log(a) - log_l0 if below_mass > 0 else -math.inf
    )
    log_above = -math.inf
    if k >= 2:
        above_mass = beta_tail(k - 1, n - k + 1, a)  # P(p > a) under Beta(k-1, n-k+1)
        if above_mass > 0:
            norm = math.log(1.0 / a - 1.0)  # the prior's normaliser: integral of p^-2 over [a, 1]
            log_above = _log_beta(k - 1, n - k + 1) + math.log(above_mass) - norm - log_l0
    return log_above, log_below


def _slo_test(spec: CanarySpec, n: int, k: int, allowance: float) -> tuple[bool, bool, float]:
    """(above, below, log-evidence): is the rate ``k/n`` above (level ``alpha_break``) / below (``alpha``) ``allowance``?"""
    up, down = slo_evidence(n, k, allowance)
    return up >= -math.log(spec.alpha_break), down >= -math.log(spec.alpha), max(up, down)


def _rate_estimate(n: int, k: int) -> Any:
    """A rate ``k/n`` for :func:`fieldlab.analysis.stats.compare`. An arm with no failures, or only failures,
    has no variance; it then takes the variance of the rate smoothed by half a request each way, so a dose
    that fails every request against a control that fails none is still compared (with both variances zero
    there is no interval, and the dose could never be called broken)."""
    from ..analysis.stats import RatioEstimate

    if not n:
        return RatioEstimate(float("nan"), float("nan"), 0)
    p = k / n
    if 0 < k < n:
        return RatioEstimate(p, p * (1 - p) / n, n)
    q = (k + 0.5) / (n + 1.0)
    return RatioEstimate(p, q * (1 - q) / n, n)


def _worse_than_control(spec: CanarySpec, arm: DoseArm, control: ArmCounts) -> tuple[bool, dict[str, Any]]:
    """Is the dose's bad rate above the control's? Always-valid difference of rates (stats.compare)."""
    from ..analysis.stats import compare

    est = _rate_estimate

    res = compare(
        est(control.requests, control.bad_requests),
        est(arm.requests, arm.bad),
        alpha=spec.alpha_break,
        sequential=True,
        tuning=spec.tuning,
    )
    low = res.get("ci_low")
    worse = low is not None and low > 0
    if control.requests < 2:
        worse = False
    return worse, {"difference": res.get("estimate"), "ci_low": low, "ci_high": res.get("ci_high")}


def _judge(spec: CanarySpec, arm: DoseArm, control: ArmCounts) -> tuple[str | None, str, dict[str, Any]]:
    """The verdict on one active dose: ``broken``, ``safe`` or None (keep collecting), with reason and evidence."""
    n = arm.requests
    ev: dict[str, Any] = {
        "requests": n,
        "errors": arm.errors,
        "slow": arm.slow,
        "error_rate": arm.errors / n if n else None,
    }
    if n == 0:
        return None, "", ev
    ea = spec.steady.error_allowance
    e_above, e_below, e_ev = _slo_test(spec, n, arm.errors, ea)
    ev.update(error_allowance=ea, error_log_evidence=e_ev)
    above, below = [e_above], [e_below]
    sa = spec.steady.slow_allowance
    if sa is not None:
        s_above, s_below, s_ev = _slo_test(spec, n, arm.slow, sa)
        ev.update(slow_rate=arm.slow / n, slow_allowance=sa, slow_log_evidence=s_ev)
        above.append(s_above)
        below.append(s_below)
    what = "error rate" if above[0] else "slow rate"
    if any(above) and n >= spec.min_break_units:
        worse, cmp = _worse_than_control(spec, arm, control)
        ev["vs_control"] = cmp
        if worse:
            rate = arm.errors / n if above[0] else arm.slow / n
            allow = ea if above[0] else (sa or 0.0)
            return (
                BROKEN,
                (
                    f"{what} {rate:.2%} is above the allowance {allow:.2%} and above control "
                    f"(always-valid, alpha {spec.alpha:g}, {n} requests)"
                ),
                ev,
            )
    if all(below) and n >= spec.min_units:
        return SAFE, (f"every rate is below its allowance (always-valid, alpha {spec.alpha:g}, {n} requests)"), ev
    if n >= spec.max_units_per_dose:
        rates = [arm.errors / n > ea] + ([arm.slow / n > sa] if sa is not None else [])
        verdict = BROKEN if any(rates) else SAFE
        return (
            verdict,
            (
                f"undecided after {n} requests: its rate is within the test's resolution of the "
                f"allowance, so it sits at the breaking point; classified {verdict} by its point estimate"
            ),
            ev,
        )
    return None, "", ev


# ------------------------------------------------------------------------------------------------
# The search
# ------------------------------------------------------------------------------------------------


def start(spec: CanarySpec) -> CanaryState:
    """A fresh canary: the smallest dose open, weights published, the decision recorded."""
    state = CanaryState(key=spec.key)
    _open(spec, state, spec.doses[0], f"start at the smallest dose of the ladder {list(spec.doses)}")
    _reweigh(spec, state)
    return state


def halt(state: CanaryState, reason: str) -> CanaryState:
    """Stop the canary now (kill switch, faults off, budget spent): no dose gets traffic any more."""
    new = copy.deepcopy(state)
    if new.finished:
        return new
    new.phase = STOPPED
    new.outcome = "halted"
    new.history.append(Decision(new.round, "stop", reason))
    _publish(new, {})
    return new


def advance(spec: CanarySpec, state: CanaryState, counts: Mapping[str, ArmCounts]) -> CanaryState:
    """One controller round: read the cumulative ``counts`` (by arm label), decide, reweigh; a new state.

    ``counts`` maps ``"control"`` and dose labels (:func:`dose_label`) to their
    cumulative :class:`ArmCounts`; arms missing from it keep their last counts.
    """
    new = copy.deepcopy(state)
    if new.finished:
        return new
    new.round += 1
    r = new.round
    before = new.requests_spent
    if CONTROL in counts:
        new.control = counts[CONTROL]
    for a in new.arms:
        c = counts.get(a.label)
        if c is not None:
            a.requests, a.errors, a.slow, a.bad = c.requests, c.errors, c.slow, c.bad_requests

    share = sum(state.weights.values())
    if share > 0 and new.requests_spent > before:
        new.per_round = (new.requests_spent - before) / share

    # 1. The environment: the canary's control itself breaks the SLO -> stop at once.
    ctl = new.control
    bar = -math.log(spec.alpha_environment)
    if ctl.requests >= spec.min_break_units:
        c_above = slo_evidence(ctl.requests, ctl.errors, spec.steady.error_allowance)[0] >= bar
        s_above = False
        if spec.steady.slow_allowance is not None:
            s_above = slo_evidence(ctl.requests, ctl.slow, spec.steady.slow_allowance)[0] >= bar
        if c_above or s_above:
            new.phase, new.outcome = STOPPED, "environment"
            new.history.append(
                Decision(
                    r,
                    "stop",
                    "the canary's control breaks the service's SLO: the environment "
                    f"changed, not the dose (always-valid, alpha {spec.alpha_environment:g}); "
                    "fault injection stops",
                    evidence={"control_requests": ctl.requests, "control_errors": ctl.errors, "control_slow": ctl.slow},
                )
            )
            _publish(new, {})
            return new

    # 2. Verdicts on the active doses, then what monotonicity implies.
    for a in sorted((a for a in new.arms if a.status == ACTIVE), key=lambda a: a.dose):
        verdict, why, ev = _judge(spec, a, ctl)
        if verdict is not None:
            a.status, a.reason = verdict, why
            new.history.append(Decision(r, "broken" if verdict == BROKEN else "safe", f"{a.label}: {why}", a.dose, ev))
    _implications(new, r)
    lo, hi = _bracket(new)
    new.bracket = [lo, hi]

    # 3. What next: escalate, refine, or conclude.
    if hi is None:
        _escalate(spec, new, r)
    else:
        _refine(spec, new, r, lo, hi)
    if not new.finished:
        _reweigh(spec, new)
    return new


def _implications(state: CanaryState, r: int) -> None:
    """Monotone dose-response: safe below a safe dose, broken above a broken one; retire what is implied."""
    safe = [a.dose for a in state.arms if a.status == SAFE]
    broken = [a.dose for a in state.arms if a.status == BROKEN]
    top_safe = max(safe) if safe else None
    low_broken = min(broken) if broken else None
    for a in state.arms:
        if a.status not in (ACTIVE, RETIRED):
            continue
        if low_broken is not None and a.dose > low_broken:
            a.status, a.reason = BROKEN, f"above the broken dose {dose_label(low_broken)}"
            state.history.append(Decision(r, "retire", f"{a.label}: {a.reason}; no more traffic", a.dose))
        elif top_safe is not None and a.dose < top_safe:
            a.status, a.reason = SAFE, f"below the safe dose {dose_label(top_safe)}"
            state.history.append(Decision(r, "retire", f"{a.label}: {a.reason}; no more traffic needed", a.dose))


def _bracket(state: CanaryState) -> tuple[float, float | None]:
    broken = [a.dose for a in state.arms if a.status == BROKEN]
    hi = min(broken) if broken else None
    safe = [a.dose for a in state.arms if a.status == SAFE and (hi is None or a.dose < hi)]
    return (max(safe) if safe else 0.0), hi


def _open(spec: CanarySpec, state: CanaryState, dose: float, reason: str) -> None:
    d = _round_dose(dose)
    near = [a for a in state.arms if abs(math.log(a.dose / d)) < 0.01]  # within 1 %: the same dose, in effect
    existing = near[0] if near else None
    d = existing.dose if existing else d
    if existing is not None:
        existing.status, existing.reason = ACTIVE, reason
    else:
        state.arms.append(DoseArm(dose=d, reason=reason, opened_round=state.round))
        state.arms.sort(key=lambda a: a.dose)
    state.history.append(Decision(state.round, "open", f"{dose_label(d)}: {reason}", d))


def _make_room(spec: CanarySpec, state: CanaryState, r: int, keep: float) -> bool:
    """Retire the lowest active dose (other than ``keep``) when ``max_active`` doses already run."""
    active = sorted((a for a in state.arms if a.status == ACTIVE), key=lambda a: a.dose)
    if len(active) < spec.max_active:
        return True
    for a in active:
        if a.dose != keep:
            a.status, a.reason = RETIRED, "superseded by a larger dose (reopened if the bracket needs it)"
            state.history.append(Decision(r, "retire", f"{a.label}: {a.reason}", a.dose))
            return True
    return False


def _escalate(spec: CanarySpec, state: CanaryState, r: int) -> None:
    opened = [a for a in state.arms if a.status in (ACTIVE, SAFE)]
    top = max(opened, key=lambda a: a.dose) if opened else None
    if top is None:  # nothing open (all retired): restart from the smallest unsettled ladder dose
        _open(spec, state, spec.doses[0], "resume the ladder")
        return
    nxt = [d for d in spec.doses if d > top.dose]
    if top.status == SAFE and not nxt:
        state.phase, state.outcome, state.breaking_point = DONE, "survived", None
        state.history.append(
            Decision(
                r,
                "conclude",
                f"the largest dose {top.label} keeps steady state: no breaking point on the ladder",
                top.dose,
            )
        )
        _publish(state, {})
        return
    if not nxt:
        return
    p_break = probability_breaks(spec, top.requests, top.errors, top.slow)
    ready = top.status == SAFE or (top.requests >= spec.min_units and p_break < spec.escalate_below)
    if ready:
        why = (
            "the dose below is confirmed safe"
            if top.status == SAFE
            else f"{top.label} survived {top.requests} requests, P(breaks) = {p_break:.2f} < {spec.escalate_below:g}"
        )
        if top.status == ACTIVE:  # probably safe: confirmed later only if the bracket needs it
            top.status, top.reason = (
                RETIRED,
                "probably safe, superseded by the next dose (reopened if the bracket needs it)",
            )
            state.history.append(Decision(r, "retire", f"{top.label}: {top.reason}", top.dose))
        _make_room(spec, state, r, top.dose)
        _open(spec, state, nxt[0], f"escalate: {why}")


def _refine(spec: CanarySpec, state: CanaryState, r: int, lo: float, hi: float) -> None:
    state.phase = REFINING
    if lo > 0 and hi / lo <= spec.target_ratio * (1 + 1e-9):
        bp = 2.0 * lo * hi / (lo + hi)
        state.phase, state.outcome, state.breaking_point = DONE, "found", bp
        state.history.append(
            Decision(
                r,
                "conclude",
                f"breaking point {bp:.1f} ms: between {dose_label(lo)} (safe) and "
                f"{dose_label(hi)} (broken), within +-{spec.accuracy:.0%}",
                evidence={"bracket": [lo, hi], "requests": state.requests_spent, "bad": state.bad_spent},
            )
        )
        _publish(state, {})
        return
    if lo <= 0 and hi <= spec.min_dose_ms * (1 + 1e-9):
        state.phase, state.outcome, state.breaking_point = DONE, "below_min", hi
        state.history.append(
            Decision(r, "conclude", f"the service breaks already at {dose_label(hi)}, the smallest dose allowed", hi)
        )
        _publish(state, {})
        return
    inside = [a for a in state.arms if a.status == ACTIVE and lo < a.dose < hi]
    if inside:
        _flank(spec, state, r, lo, hi, inside)
        return
    # The largest dose that looked safe when the ladder moved past it: a provisional lower end.
    plo = max((a.dose for a in state.arms if a.status == RETIRED and lo < a.dose < hi), default=lo)
    if plo > lo and hi / plo <= spec.target_ratio * (1 + 1e-9):
        _make_room(spec, state, r, plo)
        _open(spec, state, plo, f"confirm the lower end of the bracket [{dose_label(plo)}, {dose_label(hi)}]")
        return
    if plo > 0:
        m = plo * (hi / plo) ** spec.bisect_at
        why = f"bisect the bracket [{dose_label(plo)}, {dose_label(hi)}] in log-dose"
    else:
        below = [d for d in spec.doses if d < hi]
        factor = (spec.doses[1] / spec.doses[0]) if len(spec.doses) > 1 else 2.0
        m = max(below[-1] if below else hi / factor, spec.min_dose_ms)
        why = f"{dose_label(hi)} breaks with no safe dose below: step down"
    m = _round_dose(m)
    if m <= lo or m >= hi:  # the grid cannot split the bracket further
        bp = 2.0 * lo * hi / (lo + hi) if lo > 0 else hi
        state.phase, state.outcome, state.breaking_point = DONE, "found", bp
        state.history.append(
            Decision(r, "conclude", f"breaking point {bp:.1f} ms: the bracket is at the dose grid's resolution")
        )
        _publish(state, {})
        return
    _make_room(spec, state, r, m)
    _open(spec, state, m, why)


def _flank(spec: CanarySpec, state: CanaryState, r: int, lo: float, hi: float, inside: list[DoseArm]) -> None:
    """A dose that stalls near the allowance is near the breaking point: open its neighbours at ``sqrt(target)``.

    If the lower neighbour proves safe and the upper one broken, the bracket is
    closed at the target ratio without deciding the stalled dose at all; their
    rates are further from the allowance, so they decide sooner.
    """
    stalled = [a for a in inside if a.requests >= spec.stall_units]
    if not stalled or len(inside) >= spec.max_active:
        return
    m = stalled[0].dose
    step = math.sqrt(spec.target_ratio)
    for d in (_round_dose(m / step), _round_dose(m * step)):
        existing = state.arm(d)
        if not lo < d < hi or (existing is not None and existing.status == ACTIVE):
            continue
        if sum(1 for a in state.arms if a.status == ACTIVE) >= spec.max_active:
            return
        _open(
            spec,
            state,
            d,
            f"{stalled[0].label} is undecided after {stalled[0].requests} requests, so it sits "
            f"near the breaking point: flank it at x{step:.3f}",
        )


def _kl(p: float, q: float) -> float:
    """Kullback-Leibler divergence of Bernoulli(p) from Bernoulli(q): the expected log-evidence per request."""
    p = min(max(p, 1e-12), 1 - 1e-12)
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def _drift(spec: CanarySpec, a: DoseArm) -> float:
    """Expected log-evidence per request toward this dose's decision (the binding metric's)."""
    n = a.requests
    pe = (a.errors + 0.5) / (n + 1.0)
    ea = spec.steady.error_allowance
    rates = [(pe, ea)]
    sa = spec.steady.slow_allowance
    if sa is not None:
        rates.append(((a.slow + 0.5) / (n + 1.0), sa))
    above = [_kl(p, q) for p, q in rates if p > q]
    if above:
        return max(above)
    return min(_kl(p, q) for p, q in rates)


def _reweigh(spec: CanarySpec, state: CanaryState) -> None:
    """Traffic where it tells most about the threshold, at the least cost in bad requests.

    Each undecided dose scores ``relevance * drift / cost``: ``drift`` the
    expected log-evidence a request adds toward its decision (the Kullback-
    Leibler divergence of its estimated rate from the allowance: large for a
    dose that will decide soon, small for one that sits on the threshold),
    ``relevance`` the probability that the next larger active dose breaks
    (confirming a dose is wasted if a larger one is confirmed safe; 1 for the
    largest), ``cost`` its expected bad rate plus the allowance. The doses
    share what the control and the floors leave in proportion to their
    scores. A dose on probation (fewer than ``min_break_units`` requests) gets
    only its floor, and a dose's requests at most double from one round to
    the next (slow start); what they leave stays outside the canary, so a new,
    possibly broken dose is tried on a few requests before many.
    """
    active = sorted((a for a in state.arms if a.status == ACTIVE), key=lambda a: a.dose)
    if not active:
        _publish(state, {CONTROL: 1.0})
        return
    probs = [probability_breaks(spec, a.requests, a.errors, a.slow) for a in active]
    scores: list[float | None] = []
    for i, a in enumerate(active):
        if a.requests < spec.min_break_units:
            scores.append(None)
            continue
        relevance = probs[i + 1] if i + 1 < len(active) else 1.0
        cost = (a.bad + 0.5) / (a.requests + 1.0) + spec.steady.error_allowance
        scores.append(max(_drift(spec, a) * relevance, 1e-9) / cost)
    room = 1.0 - spec.control_share - spec.floor * len(active)
    total = sum(x for x in scores if x is not None)
    weights = {CONTROL: spec.control_share}
    for a, sc in zip(active, scores, strict=False):
        w = spec.floor + (room * sc / total if sc is not None else 0.0)
        if state.per_round:  # slow start: a dose's requests at most double per round
            w = min(w, max(spec.floor, a.requests / state.per_round))
        weights[a.label] = w
    _publish(state, weights)


def _publish(state: CanaryState, weights: dict[str, float]) -> None:
    if not weights:  # finished: nothing runs any more, and the arms say so
        for a in state.arms:
            if a.status == ACTIVE:
                a.status, a.reason = RETIRED, f"undecided when the canary ended ({state.outcome})"
    rounded = {k: round(v, 4) for k, v in weights.items()}
    if rounded != state.weights:
        state.weights = rounded
        state.weights_version += 1


def dose_response(spec: CanarySpec, state: CanaryState) -> list[dict[str, Any]]:
    """The dose-response table ``fieldlab status``/``analyze`` show: one row per dose, control first.

    Each row: dose, status and why, requests, error and slow rates, the bad
    rate's difference from control with its always-valid interval
    (:func:`fieldlab.analysis.stats.compare`, at ``alpha_break``, the level
    that blames a dose), and the
    posterior probability that the dose breaks steady state.
    """
    from ..analysis.stats import compare

    est = _rate_estimate

    c = state.control
    rows: list[dict[str, Any]] = [
        {
            "arm": CONTROL,
            "dose_ms": 0.0,
            "status": "control",
            "reason": "",
            "requests": c.requests,
            "error_rate": c.errors / c.requests if c.requests else None,
            "slow_rate": c.slow / c.requests if c.requests else None,
            "bad_rate": c.bad_requests / c.requests if c.requests else None,
            "vs_control": None,
            "p_breaks": None,
        }
    ]
    for a in sorted(state.arms, key=lambda a: a.dose):
        n = a.requests
        cmp = (
            compare(
                est(c.requests, c.bad_requests),
                est(n, a.bad),
                alpha=spec.alpha_break,
                sequential=True,
                tuning=spec.tuning,
            )
            if n >= 2 and c.requests >= 2
            else None
        )
        rows.append(
            {
                "arm": a.label,
                "dose_ms": a.dose,
                "status": a.status,
                "reason": a.reason,
                "requests": n,
                "error_rate": a.errors / n if n else None,
                "slow_rate": a.slow / n if n else None,
                "bad_rate": a.bad / n if n else None,
                "vs_control": None
                if cmp is None
                else dict({k: cmp[k] for k in ("estimate", "ci_low", "ci_high")}, alpha=spec.alpha_break),
                "p_breaks": probability_breaks(spec, n, a.errors, a.slow),
            }
        )
    return rows


# ------------------------------------------------------------------------------------------------
# The request side
# ------------------------------------------------------------------------------------------------


def weight_table(weights: Mapping[str, float]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Arm labels (control first, then doses ascending) and integer weights in basis points.

    Shares are of the canary's traffic; when they sum to less than 1 the rest
    stays outside the canary (label ``""``, no fault). Largest-remainder
    rounding, so the published shares and the buckets agree to one basis point.
    """

    def order(label: str) -> tuple[int, float]:
        return (0, 0.0) if label == CONTROL else (1, float(label[:-2]))

    labels = [k for k in sorted((k for k, v in weights.items() if v > 0), key=order)]
    shares = [float(weights[k]) for k in labels]
    total = sum(shares)
    if not labels or total <= 0:
        return (), ()
    if total < 1.0 - 1e-9:
        labels.append("")
        shares.append(1.0 - total)
        total = 1.0
    raw = [w / total * BUCKETS for w in shares]
    bp = [int(x) for x in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - bp[i], reverse=True)[: BUCKETS - sum(bp)]:
        bp[i] += 1
    return tuple(labels), tuple(bp)


def dose_of(label: str | None) -> float | None:
    """The latency in ms an arm label injects: None for the control or outside the canary."""
    if not label or label == CONTROL:
        return None
    return float(label[:-2])


def choose_arm(
    key: str,
    trace_id: str,
    weights: Mapping[str, float] | tuple[tuple[str, ...], tuple[int, ...]],
    traffic: float = 100.0,
) -> str | None:
    """The canary arm of a request: ``"control"``, a dose label, or None (not in the canary).

    ``bucket(key + ":canary", trace_id)`` decides through the contract's
    ``variant_boundaries(weights, traffic)``: the same trace id gives the same
    arm in every service and every replay, and the canary takes ``traffic``
    percent of requests. Pass a precomputed :func:`weight_table` on hot paths.
    """
    labels, bp = weight_table(weights) if isinstance(weights, Mapping) else weights
    if not labels:
        return None
    b = bucket(f"{key}:canary", trace_id)
    for label, (lo, hi) in zip(labels, variant_boundaries(list(bp), traffic_basis_points(traffic)), strict=False):
        if lo <= b < hi:
            return label or None
    return None
