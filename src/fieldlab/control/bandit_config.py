"""``kind = "bandit"`` experiments: the ``[experiments.bandit]`` table, and the assignment table of a weights version.

::

    [[experiments]]
    key = "hero-banner"
    kind = "bandit"
    unit = "user"
    variants = [{ name = "control" }, { name = "bold" }, { name = "calm" }]
    [experiments.bandit]
    metric = "app.cart.added"     # a span attribute, or "error" / "latency"
    metric_kind = "conversion"    # conversion | numeric | error | latency
    interval = "1h"               # how often the controller may publish new weights
    floor = 1                     # % of the experiment's traffic every arm keeps (>= 1)
    burn_in = 100                 # units per arm before the first update (100 at least)
    slice = 10                    # sticky units: % of the bucket space each period opens

:func:`parse_bandit` validates the table (every problem a
:class:`~fieldlab.errors.ConfigError` naming the field and the fix).

**Versions and periods.** Version 0 is the config's own split and is in force
until the controller (:mod:`fieldlab.control.bandit_controller`) publishes
version 1 under ``bandits.<key>`` of the lab state document (its format:
``BANDIT_FORMAT`` in the docs, :func:`initial_entry`, :func:`next_entry`).

**Who is sticky.** Units that come back (``user``, ``visitor`` and custom
kinds such as ``account``) keep the arm of the period that enrolled them:
each period opens the next ``slice`` of the bucket space under its own weights
(:class:`~fieldlab.control.bandit.EnrolmentSchedule`), buckets not opened yet
are outside the experiment. ``request`` and ``session`` units are not sticky:
the weights in force cut the experiment's whole traffic.

**The assignment table** (:class:`BanditView`) of one version is a list of
consecutive bucket ranges from 0, each with its arm and the period (version)
that decided it; a bucket beyond the last range is outside the traffic. For a
period with slice ``[lo, hi)`` and basis-point weights ``w``, arm ``i`` owns
``[lo + (hi - lo) * C_i // 10000, lo + (hi - lo) * C_(i+1) // 10000)`` with
``C_i`` the sum of the weights before arm ``i`` (exactly
:meth:`~fieldlab.control.bandit.Period.arm_of`); non-sticky units have one
slice, ``[0, traffic)``, which with 100 % traffic is
:func:`~fieldlab.control.bandit.assign_with_weights`. The table is a pure
function of the published version, so every process, a replay and a SQL query
agree.

This module needs neither numpy nor a framework: every worker imports it.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._hashing import BUCKETS, traffic_basis_points
from ..errors import ConfigError, suggest_names
from .bandit import BanditWeights, EnrolmentSchedule, Period, to_basis_points
from .settings import format_duration, parse_duration
from .state import iso_time

__all__ = [
    "EXPERIMENT_KINDS",
    "BANDIT_KEYS",
    "METRIC_KINDS",
    "NOT_STICKY",
    "DEFAULT_INTERVAL",
    "DEFAULT_SLICE",
    "BanditConfig",
    "parse_bandit",
    "is_sticky",
    "initial_weights",
    "BanditView",
    "view_of",
    "EntryError",
    "check_entry",
    "initial_entry",
    "next_entry",
]

#: ``kind`` of an experiment: a fixed split (``ab``, the default) or a bandit.
EXPERIMENT_KINDS = ("ab", "bandit")
#: The keys of an ``[experiments.bandit]`` table.
BANDIT_KEYS = ("metric", "metric_kind", "interval", "floor", "burn_in", "slice", "value", "direction")
#: Decision metrics: a conversion or numeric span attribute, or the request's error / latency (lower is better).
METRIC_KINDS = ("conversion", "numeric", "error", "latency")
#: Unit kinds whose units are not kept in their first arm (a request never comes back; a session is short).
NOT_STICKY = ("request", "session")
DEFAULT_INTERVAL = "1h"
#: % of the bucket space a period opens for sticky units.
DEFAULT_SLICE = 10.0
_DEFAULT_FLOOR = 1.0
_DEFAULT_BURN_IN = 100
_EXAMPLE = '[experiments.bandit] with metric = "app.cart.added", metric_kind = "conversion", interval = "1h"'


def is_sticky(unit: str) -> bool:
    """True when units of this kind keep the arm of the period that enrolled them (see the module docstring)."""
    return unit not in NOT_STICKY


@dataclass(frozen=True)
class BanditConfig:
    """A validated ``[experiments.bandit]`` table.

    ``floor`` and ``slice`` are percentages (``slice`` None for units that are not sticky);
    ``interval`` is in seconds; ``higher_is_better`` is False for error and latency.
    """

    metric: str
    metric_kind: str
    interval: float
    floor: float
    burn_in: int
    slice: float | None
    value: str = "true"
    higher_is_better: bool = True

    @property
    def floor_fraction(self) -> float:
        """The floor as a share of the experiment's traffic (what :func:`~fieldlab.control.bandit.thompson_weights` takes)."""
        return self.floor / 100.0

    @property
    def slice_bp(self) -> int:
        """The slice in basis points of the bucket space (0 for units that are not sticky)."""
        return traffic_basis_points(self.slice) if self.slice is not None else 0

    @property
    def thompson_kind(self) -> str:
        """The posterior family: ``conversion`` and ``error`` are rates; ``numeric`` and ``latency`` means."""
        return {"conversion": "conversion", "error": "error", "numeric": "numeric", "latency": "numeric"}[
            self.metric_kind
        ]

    def to_dict(self) -> dict[str, Any]:
        """The table form (for ``Experiment.to_dict`` and the config version)."""
        out: dict[str, Any] = {
            "metric": self.metric,
            "metric_kind": self.metric_kind,
            "interval": format_duration(self.interval),
            "floor": self.floor,
            "burn_in": self.burn_in,
        }
        if self.slice is not None:
            out["slice"] = self.slice
        if self.metric_kind == "conversion":
            out["value"] = self.value
        if self.metric_kind in ("conversion", "numeric"):
            out["direction"] = "higher" if self.higher_is_better else "lower"
        return out


def _percent(value: Any, path: str, what: str, fix: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(path, f"{what} {value!r} is not a number", fix)
    return float(value)


def parse_bandit(table: Any, path: str, *, unit: str, weights: Sequence[tuple[str, int]]) -> BanditConfig:
    """Validate one ``[experiments.bandit]`` table of an experiment with ``unit`` and variant ``weights``.

    Checks the variants too: at least two arms, each with a config share at or
    above the floor (version 0 is the config's split, and no arm may ever hold
    less than the floor).
    """
    if isinstance(table, BanditConfig):
        cfg = table
    else:
        cfg = _parse_table(table, path, unit)
    k = len(weights)
    if k < 2:
        raise ConfigError(
            path.rsplit(".", 1)[0] + ".variants",
            f"a bandit needs at least 2 arms, got {k}",
            "list the control and at least one alternative",
        )
    if cfg.floor * k > 100 + 1e-9:
        raise ConfigError(
            f"{path}.floor",
            f"a floor of {cfg.floor:g} % for {k} arms reserves {cfg.floor * k:g} % of the traffic",
            f"use a floor of at most {100 / k:.4g} % with {k} arms",
        )
    total = sum(w for _, w in weights)
    for i, (name, w) in enumerate(weights):
        share = 100.0 * w / total if total else 0.0
        if share + 1e-9 < cfg.floor:
            raise ConfigError(
                path.rsplit(".", 1)[0] + f".variants[{i}].weight",
                f"variant {name!r} starts with {share:.4g} % of the traffic, below the bandit's floor of {cfg.floor:g} %",
                "give every arm a starting weight at or above the floor (equal weights are the usual start)",
            )
    return cfg


def _parse_table(table: Any, path: str, unit: str) -> BanditConfig:
    if not isinstance(table, Mapping):
        raise ConfigError(path, f"expected a table, got {type(table).__name__}", f"write {_EXAMPLE}")
    unknown = sorted((str(k) for k in table if k not in BANDIT_KEYS), key=str)
    if unknown:
        raise ConfigError(
            f"{path}.{unknown[0]}",
            f"unknown key {unknown[0]!r}",
            suggest_names(unknown, BANDIT_KEYS, "a bandit table's keys"),
        )
    metric = table.get("metric")
    kind = table.get("metric_kind")
    if kind is None:
        kind = metric if metric in ("error", "latency") else "conversion"
    if kind not in METRIC_KINDS:
        raise ConfigError(
            f"{path}.metric_kind", f"unknown metric kind {kind!r}", f"use one of {', '.join(METRIC_KINDS)}"
        )
    if kind in ("error", "latency"):
        if metric is not None and metric != kind:
            raise ConfigError(
                f"{path}.metric",
                f"metric {metric!r} does not go with metric_kind {kind!r}",
                f'write metric = "{kind}" (or leave metric out) for the request\'s own {kind}',
            )
        metric = kind
    else:
        if metric is None:
            raise ConfigError(
                f"{path}.metric",
                "is missing",
                'name the decision metric: a span attribute (metric = "app.cart.added"), or "error" / "latency"',
            )
        if not isinstance(metric, str) or not metric.strip() or metric in ("error", "latency"):
            raise ConfigError(
                f"{path}.metric",
                f"{metric!r} is not a span attribute for a {kind} metric",
                'name the SERVER-span attribute, e.g. metric = "app.cart.added"',
            )
        metric = metric.strip()
    value = table.get("value", "true")
    if "value" in table and kind != "conversion":
        raise ConfigError(f"{path}.value", "only a conversion compares the attribute with a value", "drop value")
    if isinstance(value, bool):
        value = "true" if value else "false"
    if not isinstance(value, (str, int, float)):
        raise ConfigError(f"{path}.value", f"{value!r} is not a scalar", 'give the attribute value, e.g. "true"')
    direction = table.get("direction")
    if direction is None:
        higher = kind in ("conversion", "numeric")
    elif direction not in ("higher", "lower"):
        raise ConfigError(f"{path}.direction", f"{direction!r} is not a direction", 'use "higher" or "lower"')
    elif kind in ("error", "latency") and direction == "higher":
        raise ConfigError(
            f"{path}.direction", f"a higher {kind} is never better", "drop direction (lower is better for it)"
        )
    else:
        higher = direction == "higher"
    interval = parse_duration(table.get("interval", DEFAULT_INTERVAL), f"{path}.interval")
    floor = _percent(table.get("floor", _DEFAULT_FLOOR), f"{path}.floor", "floor", "give a percentage, at least 1")
    if floor < 1:
        raise ConfigError(
            f"{path}.floor",
            f"a floor of {floor:g} % is below 1 %",
            "give every arm at least 1 % (floor = 1): an arm without traffic can never recover or be measured",
        )
    burn_in = table.get("burn_in", _DEFAULT_BURN_IN)
    if isinstance(burn_in, float) and burn_in.is_integer():
        burn_in = int(burn_in)
    if isinstance(burn_in, bool) or not isinstance(burn_in, int):
        raise ConfigError(
            f"{path}.burn_in",
            f"{burn_in!r} is not a whole number of units",
            f"give the units every arm needs before the first update (default {_DEFAULT_BURN_IN})",
        )
    if burn_in < _DEFAULT_BURN_IN:
        raise ConfigError(
            f"{path}.burn_in",
            f"{burn_in} units per arm is below the minimum burn-in of {_DEFAULT_BURN_IN}",
            f"give at least {_DEFAULT_BURN_IN} units: a posterior from fewer is noise, and the first weights "
            "it publishes would move traffic on it",
        )
    slice_: float | None
    if is_sticky(unit):
        slice_ = _percent(
            table.get("slice", DEFAULT_SLICE),
            f"{path}.slice",
            "slice",
            "give the % of units each period opens, e.g. 10",
        )
        if not 0 < slice_ <= 100:
            raise ConfigError(
                f"{path}.slice",
                f"slice {slice_:g} is outside (0, 100]",
                "give the % of the population each weights version opens to new units, e.g. 10",
            )
        if traffic_basis_points(slice_) < 1:
            raise ConfigError(f"{path}.slice", f"slice {slice_:g} % is below one bucket", "use at least 0.01")
    else:
        if "slice" in table:
            raise ConfigError(
                f"{path}.slice",
                f"{unit!r} units are not sticky, so nothing is opened in slices",
                "drop slice: request and session units follow the weights in force over the whole traffic",
            )
        slice_ = None
    return BanditConfig(metric, str(kind), interval, floor, int(burn_in), slice_, str(value), higher)


def initial_weights(weights: Sequence[int]) -> tuple[int, ...]:
    """Version 0's weights in basis points: the config's split (equal weights unless the variants give weights)."""
    return to_basis_points([float(w) for w in weights])


# ----------------------------------------------------------------------------- the assignment table


@dataclass(frozen=True)
class BanditView:
    """The assignment table of one published weights version of one experiment (see the module docstring).

    ``ends[i]`` is the end of range ``i`` (range ``i`` is ``[ends[i-1], ends[i])``,
    the first starts at 0); ``arms[i]`` its arm index and ``periods[i]`` the
    version that decided it. ``source`` is ``config`` (version 0 from the
    config alone) or ``store``.
    """

    key: str
    names: tuple[str, ...]
    version: int
    weights_bp: tuple[int, ...]
    ends: tuple[int, ...]
    arms: tuple[int, ...]
    periods: tuple[int, ...]
    source: str = "config"
    at: str | None = None
    p_best: tuple[float, ...] | None = None

    def assign(self, b: int) -> tuple[int, int] | None:
        """``(arm index, period)`` of bucket ``b``, or None when ``b`` is outside the enrolled traffic."""
        i = bisect.bisect_right(self.ends, b)
        if i >= len(self.ends):
            return None
        return self.arms[i], self.periods[i]

    def ranges(self) -> list[tuple[int, int, str, int]]:
        """``(lo, hi, arm name, period)`` of every non-empty range, in bucket order (for SQL and the CLI)."""
        out, lo = [], 0
        for hi, arm, period in zip(self.ends, self.arms, self.periods, strict=True):
            out.append((lo, hi, self.names[arm], period))
            lo = hi
        return out

    @property
    def enrolled(self) -> int:
        """Buckets in the experiment under this version (the end of the last range)."""
        return self.ends[-1] if self.ends else 0


def _table_of(slices: Sequence[tuple[int, int, int, Sequence[int]]], cap: int) -> tuple[tuple[int, ...], ...]:
    """Ranges of consecutive ``(version, lo, hi, weights)`` slices from 0, clipped at ``cap``."""
    ends: list[int] = []
    arms: list[int] = []
    periods: list[int] = []
    for version, lo, hi, weights in slices:
        width = hi - lo
        acc = 0
        for i, w in enumerate(weights):
            start = lo + width * acc // BUCKETS
            acc += w
            end = min(lo + width * acc // BUCKETS, cap)
            if end > start and end > (ends[-1] if ends else 0):
                ends.append(end)
                arms.append(i)
                periods.append(version)
        if hi >= cap:
            break
    return tuple(ends), tuple(arms), tuple(periods)


class EntryError(ValueError):
    """A ``bandits.<key>`` entry of the state that does not fit the experiment (the message says why)."""


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        raise EntryError(f"{what} is not a list of integers")
    return tuple(value)


def check_entry(entry: Any, names: Sequence[str], sticky: bool) -> tuple[int, tuple[int, ...], list[Period]]:
    """Validate a stored entry against the experiment's arms: ``(version, weights_bp, periods)``.

    For sticky units the periods' slices must be consecutive from bucket 0.
    Raises :class:`EntryError` with the reason.
    """
    if not isinstance(entry, Mapping):
        raise EntryError(f"expected an object, got {type(entry).__name__}")
    arms = entry.get("arms")
    if not isinstance(arms, (list, tuple)) or list(arms) != list(names):
        raise EntryError(
            f"its arms {arms!r} are not the config's variants {list(names)} (in order); a bandit whose arms "
            "change is a new experiment: give it a new key or salt"
        )
    version = entry.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise EntryError(f"version {version!r} is not a whole number")
    weights = _ints(entry.get("weights_bp"), "weights_bp")
    if len(weights) != len(names) or sum(weights) != BUCKETS or min(weights) < 0:
        raise EntryError(f"weights_bp {list(weights)} are not {len(names)} basis points summing to {BUCKETS}")
    raw = entry.get("periods")
    if not isinstance(raw, (list, tuple)) or not raw:
        raise EntryError("periods is not a non-empty list")
    periods: list[Period] = []
    for j, p in enumerate(raw):
        if not isinstance(p, Mapping):
            raise EntryError(f"periods[{j}] is not an object")
        pv = p.get("version")
        pw = _ints(p.get("weights_bp"), f"periods[{j}].weights_bp")
        if not isinstance(pv, int) or len(pw) != len(names) or sum(pw) != BUCKETS or min(pw) < 0:
            raise EntryError(f"periods[{j}] has no version or its weights_bp are not basis points of every arm")
        if sticky:
            lo, hi = p.get("lo"), p.get("hi")
            expected = periods[-1].hi if periods else 0
            if not isinstance(lo, int) or not isinstance(hi, int) or lo != expected or not lo < hi <= BUCKETS:
                raise EntryError(f"periods[{j}] slice [{lo}, {hi}) does not follow the previous one (from {expected})")
            periods.append(Period(pv, lo, hi, pw))
        else:
            periods.append(Period(pv, 0, BUCKETS, pw))
    if periods[-1].version != version:
        raise EntryError(f"the last period is version {periods[-1].version}, not the version in force {version}")
    return version, weights, periods


def view_of(exp: Any, entry: Any = None) -> BanditView:
    """The assignment table of bandit experiment ``exp`` under a stored entry (None: version 0, from the config).

    Raises :class:`EntryError` when ``entry`` does not fit the experiment.
    """
    cfg: BanditConfig = exp.bandit
    names = tuple(exp.variant_names)
    cap = traffic_basis_points(exp.traffic)
    sticky = is_sticky(exp.unit)
    if entry is None:
        w0 = initial_weights([v.weight for v in exp.variants])
        hi = min(cfg.slice_bp, cap) if sticky else cap
        ends, arms, periods = _table_of([(0, 0, hi, w0)], cap)
        return BanditView(exp.key, names, 0, w0, ends, arms, periods, "config")
    version, weights, stored = check_entry(entry, names, sticky)
    if sticky:
        slices = [(p.version, p.lo, p.hi, p.weights_bp) for p in stored]
    else:
        slices = [(version, 0, cap, weights)]
    ends, arms, periods = _table_of(slices, cap)
    pb = entry.get("p_best")
    p_best = tuple(float(x) for x in pb) if isinstance(pb, (list, tuple)) and len(pb) == len(names) else None
    at = entry.get("at") if isinstance(entry.get("at"), str) else None
    return BanditView(exp.key, names, version, weights, ends, arms, periods, "store", at, p_best)


# ----------------------------------------------------------------------------- the stored entry


def initial_entry(exp: Any, at: float) -> dict[str, Any]:
    """The ``bandits.<key>`` entry of version 0 (the config's split), as the controller first writes it."""
    w0 = initial_weights([v.weight for v in exp.variants])
    period: dict[str, Any] = {"version": 0, "at": iso_time(at), "weights_bp": list(w0)}
    if is_sticky(exp.unit):
        period["lo"], period["hi"] = 0, min(exp.bandit.slice_bp, traffic_basis_points(exp.traffic))
    return {
        "arms": list(exp.variant_names),
        "version": 0,
        "weights_bp": list(w0),
        "at": iso_time(at),
        "reason": "version 0: the config's split, in force until the first update",
        "p_best": None,
        "periods": [period],
    }


def next_entry(
    exp: Any, entry: Mapping[str, Any], weights: BanditWeights, at: float, evidence: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """The entry with ``weights`` (the next version) in force, or None when sticky enrolment has reached
    the experiment's traffic (new weights could reach no unit: they stay frozen)."""
    version, _, periods = check_entry(entry, exp.variant_names, is_sticky(exp.unit))
    if weights.version != version + 1:
        raise ValueError(f"version {weights.version} does not follow {version}")
    record: dict[str, Any] = {"version": weights.version, "at": iso_time(at), "weights_bp": list(weights.weights_bp)}
    if is_sticky(exp.unit):
        schedule = EnrolmentSchedule(traffic_basis_points(exp.traffic), tuple(periods))
        opened = schedule.open_period(weights, exp.bandit.slice_bp)
        if opened is schedule:
            return None
        last = opened.periods[-1]
        record["lo"], record["hi"] = last.lo, last.hi
    out = {
        "arms": list(exp.variant_names),
        "version": weights.version,
        "weights_bp": list(weights.weights_bp),
        "at": iso_time(at),
        "reason": weights.reason,
        "p_best": list(weights.p_best) if weights.p_best is not None else None,
        "periods": [*entry["periods"], record],
    }
    if evidence:
        out["evidence"] = dict(evidence)
    return out
