"""The guardrail settings: ``[guardrails]`` (lab-wide) and ``[experiments.guardrails]``, validated.

The input is plain data as a TOML/JSON/YAML loader returns it; the output is
frozen dataclasses the decision functions take. Every problem is a
:class:`~fieldlab.errors.ConfigError` naming the field (``guardrails.windows[1].short``),
what is wrong and the fix; an unknown key names the closest valid one.

Lab-wide::

    [guardrails]
    service_slo = 99.9          # % of requests that succeed; the error budget is the rest
    budget_period = "30d"       # rolling period of the budget
    experiment_share = 25       # % of the budget all experiments together may spend
    windows = [                 # multi-window, multi-burn-rate pairs (these are the defaults)
      { long = "1h", short = "5m", burn_rate = 14.4 },
      { long = "6h", short = "30m", burn_rate = 6 },
    ]
    min_units = 100             # units per arm before any decision about a variant
    alpha = 0.005               # error level of the always-valid comparisons (split over SLIs and metrics)

Per experiment (``[experiments.guardrails]``)::

    error_slo = 99.5                              # defaults to service_slo
    latency_slo = { ms = 800, percent = 99 }      # 99 % of requests under 800 ms
    metrics = [{ name = "app.checkout.completed", kind = "conversion", margin = -2.0 }]
    action = "pause"                              # or "alert"
    min_units = 200                               # overrides the lab-wide minimum

A metric's ``margin`` is the non-inferiority margin in % relative to control:
negative for a metric where higher is better (``-2.0``: at most 2 % lower),
positive where lower is better; ``direction = "higher" | "lower"`` says it
explicitly (needed for a margin of 0). A conversion counts units with at least
one request whose attribute equals ``value`` (default ``"true"``); a numeric
metric is the mean of the attribute over the requests that carry it.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

__all__ = [
    "WindowPair",
    "LatencySLO",
    "GuardrailMetric",
    "LabGuardrails",
    "ExperimentGuardrails",
    "GuardrailsConfig",
    "parse_duration",
    "format_duration",
    "parse_lab_guardrails",
    "parse_experiment_guardrails",
    "parse_guardrails_config",
    "DEFAULT_WINDOWS",
    "DEFAULT_MIN_UNITS",
    "DEFAULT_ALPHA",
    "ACTIONS",
    "METRIC_KINDS",
]

ACTIONS = ("pause", "alert")
METRIC_KINDS = ("conversion", "numeric")
#: Units per arm before the guardrails decide anything about a variant.
DEFAULT_MIN_UNITS = 100
#: Error level of the always-valid comparisons (one-sided false pause at most alpha / 2 over a whole life).
DEFAULT_ALPHA = 0.005

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(value: Any, path: str) -> float:
    """Seconds in a duration such as ``"30d"``, ``"6h"``, ``"5m"``, ``"90s"`` or ``"1h30m"``."""
    fix = 'write a number and a unit: "90s", "5m", "6h", "30d", "1w" (or combined, "1h30m")'
    if not isinstance(value, str):
        raise ConfigError(path, f"{value!r} is not a duration", fix)
    text = value.strip().lower()
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not text or pos != len(text):
        raise ConfigError(path, f"{value!r} is not a duration", fix)
    if total <= 0:
        raise ConfigError(path, f"duration {value!r} is zero", "give a positive duration")
    return total


@functools.lru_cache(maxsize=256)
def format_duration(seconds: float) -> str:
    """The shortest ``parse_duration`` text for ``seconds`` (``3600`` -> ``"1h"``, ``5400`` -> ``"1h30m"``)."""
    out, rest = [], float(seconds)
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if rest >= size:
            n = math.floor(rest / size)
            out.append(f"{n}{unit}")
            rest -= n * size
    if rest > 1e-9 or not out:
        out.append(f"{rest:g}s")
    return "".join(out)


@dataclass(frozen=True)
class WindowPair:
    """A multi-window rule: fire when the burn rate is at/above ``burn_rate`` in both windows."""

    long: float  # seconds
    short: float  # seconds
    burn_rate: float

    @property
    def long_text(self) -> str:
        return format_duration(self.long)

    @property
    def short_text(self) -> str:
        return format_duration(self.short)

    @property
    def name(self) -> str:
        return f"{self.long_text}/{self.short_text}"


#: The Google SRE workbook's page-worthy pairs: 2 % of a 30-day budget in 1 h, 5 % in 6 h.
DEFAULT_WINDOWS = (WindowPair(3600.0, 300.0, 14.4), WindowPair(21600.0, 1800.0, 6.0))


@dataclass(frozen=True)
class LatencySLO:
    """``percent`` % of requests finish under ``ms`` milliseconds."""

    ms: float
    percent: float


@dataclass(frozen=True)
class GuardrailMetric:
    """A non-inferiority guardrail: pause when the always-valid interval of the relative
    difference lies wholly beyond ``margin`` (% relative to control) on the bad side."""

    name: str
    kind: str  # conversion | numeric
    margin: float  # percent, relative to control
    higher_is_better: bool = True
    value: str = "true"  # what a conversion attribute must equal


@dataclass(frozen=True)
class LabGuardrails:
    """The lab-wide ``[guardrails]`` table."""

    service_slo: float = 99.9
    budget_period: float = 30 * 86400.0
    experiment_share: float = 25.0
    windows: tuple[WindowPair, ...] = DEFAULT_WINDOWS
    min_units: int = DEFAULT_MIN_UNITS
    alpha: float = DEFAULT_ALPHA

    @property
    def longest_window(self) -> float:
        return max(w.long for w in self.windows)


@dataclass(frozen=True)
class ExperimentGuardrails:
    """One experiment's ``[experiments.guardrails]`` table, with the lab-wide defaults filled in."""

    error_slo: float
    latency_slo: LatencySLO | None = None
    metrics: tuple[GuardrailMetric, ...] = ()
    action: str = "pause"
    min_units: int = DEFAULT_MIN_UNITS


@dataclass(frozen=True)
class GuardrailsConfig:
    """Everything the controller needs from one config: the lab table and each experiment's table."""

    lab: LabGuardrails = field(default_factory=LabGuardrails)
    experiments: Mapping[str, ExperimentGuardrails] = field(default_factory=dict)


# ----------------------------------------------------------------------------- validation helpers


def _check_keys(doc: Mapping[str, Any], allowed: Sequence[str], path: str) -> None:
    for key in doc:
        if key in allowed:
            continue
        close = difflib.get_close_matches(str(key), list(allowed), n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            f"{path}.{key}" if path else str(key), f"unknown key {key!r}", f"{hint}valid keys are {', '.join(allowed)}"
        )


def _table(value: Any, path: str, example: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(path, f"expected a table, got {type(value).__name__}", f"write {example}")
    return value


def _number(value: Any, path: str, fix: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(path, f"{value!r} is not a number", fix)
    if not math.isfinite(value):
        raise ConfigError(path, f"{value!r} is not finite", fix)
    return float(value)


def _slo(value: Any, path: str) -> float:
    fix = "give a percentage strictly between 0 and 100, e.g. 99.9"
    v = _number(value, path, fix)
    if not 0 < v < 100:
        raise ConfigError(path, f"SLO {v:g} % is impossible (it must leave an error budget and allow success)", fix)
    return v


def _min_units(value: Any, path: str) -> int:
    fix = f"give a whole number of units per arm, at least 2 (default {DEFAULT_MIN_UNITS})"
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ConfigError(path, f"{value!r} is not a unit count of 2 or more", fix)
    return int(value)


def _check_reachable(windows: Sequence[WindowPair], slo: float, slo_path: str) -> None:
    """A burn-rate threshold above a 100 % bad rate can never fire; say so instead of guarding nothing."""
    budget = 100.0 - slo
    for i, w in enumerate(windows):
        if w.burn_rate * budget > 100.0:
            raise ConfigError(
                slo_path,
                f"with an SLO of {slo:g} % the windows[{i}] burn rate {w.burn_rate:g} "
                f"needs {w.burn_rate * budget:g} % bad requests, which can never happen",
                f"raise the SLO above {100 - 100 / w.burn_rate:.4g} % or lower that burn_rate",
            )


# ----------------------------------------------------------------------------- the lab-wide table

_LAB_KEYS = ("service_slo", "budget_period", "experiment_share", "windows", "min_units", "alpha")
_WINDOW_KEYS = ("long", "short", "burn_rate")


def _parse_windows(value: Any, path: str) -> tuple[WindowPair, ...]:
    example = '[{ long = "1h", short = "5m", burn_rate = 14.4 }]'
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(path, f"expected a non-empty list of window pairs, got {value!r}", f"write {example}")
    out = []
    for i, raw in enumerate(value):
        where = f"{path}[{i}]"
        doc = _table(raw, where, '{ long = "1h", short = "5m", burn_rate = 14.4 }')
        _check_keys(doc, _WINDOW_KEYS, where)
        for key in _WINDOW_KEYS:
            if key not in doc:
                raise ConfigError(f"{where}.{key}", "missing", f"every pair needs {', '.join(_WINDOW_KEYS)}")
        long_s = parse_duration(doc["long"], f"{where}.long")
        short_s = parse_duration(doc["short"], f"{where}.short")
        if short_s >= long_s:
            raise ConfigError(
                f"{where}.short",
                f"{doc['short']!r} is not shorter than long {doc['long']!r}",
                "make the short window a fraction of the long one (the workbook uses 1/12)",
            )
        rate = _number(doc["burn_rate"], f"{where}.burn_rate", "give a burn-rate multiple, e.g. 14.4")
        if rate <= 0:
            raise ConfigError(f"{where}.burn_rate", f"{rate:g} is not positive", "give a burn-rate multiple, e.g. 14.4")
        out.append(WindowPair(long_s, short_s, rate))
    return tuple(out)


def parse_lab_guardrails(doc: Any, path: str = "guardrails") -> LabGuardrails:
    """The ``[guardrails]`` table (``None`` or absent: every default)."""
    if doc is None:
        return LabGuardrails()
    doc = _table(doc, path, "[guardrails] with service_slo, budget_period, experiment_share, windows")
    _check_keys(doc, _LAB_KEYS, path)
    d = LabGuardrails()
    slo = _slo(doc["service_slo"], f"{path}.service_slo") if "service_slo" in doc else d.service_slo
    period = d.budget_period
    if "budget_period" in doc:
        period = parse_duration(doc["budget_period"], f"{path}.budget_period")
    share = d.experiment_share
    if "experiment_share" in doc:
        share = _number(doc["experiment_share"], f"{path}.experiment_share", "give a percentage from 0 to 100")
        if not 0 < share <= 100:
            raise ConfigError(
                f"{path}.experiment_share",
                f"{share:g} is outside (0, 100]",
                "give the % of the error budget experiments may spend, e.g. 25",
            )
    windows = _parse_windows(doc["windows"], f"{path}.windows") if "windows" in doc else d.windows
    for i, w in enumerate(windows):
        if w.long > period:
            raise ConfigError(
                f"{path}.windows[{i}].long",
                f"{w.long_text} is longer than the budget period {format_duration(period)}",
                "use windows shorter than budget_period",
            )
    min_units = _min_units(doc["min_units"], f"{path}.min_units") if "min_units" in doc else d.min_units
    alpha = d.alpha
    if "alpha" in doc:
        alpha = _number(doc["alpha"], f"{path}.alpha", "give an error level such as 0.005")
        if not 0 < alpha < 0.5:
            raise ConfigError(f"{path}.alpha", f"{alpha:g} is outside (0, 0.5)", "give an error level such as 0.005")
    _check_reachable(windows, slo, f"{path}.service_slo")
    return LabGuardrails(slo, period, share, windows, min_units, alpha)


# ----------------------------------------------------------------------------- the per-experiment table

_EXP_KEYS = ("error_slo", "latency_slo", "metrics", "action", "min_units")
_LATENCY_KEYS = ("ms", "percent")
_METRIC_KEYS = ("name", "kind", "margin", "direction", "value")


def _parse_metric(raw: Any, where: str) -> GuardrailMetric:
    doc = _table(raw, where, '{ name = "app.checkout.completed", kind = "conversion", margin = -2.0 }')
    _check_keys(doc, _METRIC_KEYS, where)
    name = doc.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(
            f"{where}.name",
            f"{name!r} is not an attribute name",
            'name the span attribute, e.g. "app.checkout.completed"',
        )
    kind = doc.get("kind", "conversion")
    if kind not in METRIC_KINDS:
        close = difflib.get_close_matches(str(kind), METRIC_KINDS, n=1, cutoff=0.5)
        raise ConfigError(
            f"{where}.kind",
            f"unknown metric kind {kind!r}",
            (f"did you mean {close[0]!r}? " if close else "") + "use conversion or numeric",
        )
    if "margin" not in doc:
        raise ConfigError(
            f"{where}.margin",
            "missing",
            "give the non-inferiority margin in % relative to control, e.g. -2.0 (at most 2 % worse)",
        )
    margin = _number(doc["margin"], f"{where}.margin", "give a margin in % relative to control, e.g. -2.0")
    if not -100 < margin < 100:
        raise ConfigError(
            f"{where}.margin", f"{margin:g} % is outside (-100, 100)", "give a relative margin in %, e.g. -2.0"
        )
    direction = doc.get("direction")
    if direction is None:
        if margin == 0:
            raise ConfigError(
                f"{where}.direction",
                "a margin of 0 does not say which way is worse",
                'add direction = "higher" (higher is better) or "lower"',
            )
        higher = margin < 0
    elif direction in ("higher", "lower"):
        higher = direction == "higher"
        if (higher and margin > 0) or (not higher and margin < 0):
            raise ConfigError(
                f"{where}.margin",
                f"margin {margin:g} % allows the variant to be better only, "
                f"not to be slightly worse (direction {direction!r})",
                "use a negative margin where higher is better, a positive one where lower is better",
            )
    else:
        raise ConfigError(f"{where}.direction", f"{direction!r} is not a direction", 'use "higher" or "lower"')
    value = doc.get("value", "true")
    if kind == "numeric" and "value" in doc:
        raise ConfigError(
            f"{where}.value",
            "only a conversion compares the attribute with a value",
            'drop value, or use kind = "conversion"',
        )
    if isinstance(value, bool):
        value = "true" if value else "false"
    if not isinstance(value, (str, int, float)):
        raise ConfigError(f"{where}.value", f"{value!r} is not a scalar", 'give the attribute value, e.g. "true"')
    return GuardrailMetric(name.strip(), kind, margin, higher, str(value))


def parse_experiment_guardrails(
    doc: Any, path: str = "experiments[0].guardrails", lab: LabGuardrails | None = None
) -> ExperimentGuardrails:
    """One experiment's ``guardrails`` table; ``lab`` supplies the defaults (the service SLO, min_units)."""
    lab = lab or LabGuardrails()
    if doc is None:
        return ExperimentGuardrails(error_slo=lab.service_slo, min_units=lab.min_units)
    doc = _table(doc, path, "[experiments.guardrails] with error_slo, latency_slo, metrics, action")
    _check_keys(doc, _EXP_KEYS, path)
    error_slo = _slo(doc["error_slo"], f"{path}.error_slo") if "error_slo" in doc else lab.service_slo
    if "error_slo" in doc:
        _check_reachable(lab.windows, error_slo, f"{path}.error_slo")
    latency = None
    if "latency_slo" in doc:
        where = f"{path}.latency_slo"
        ld = _table(doc["latency_slo"], where, "{ ms = 800, percent = 99 }")
        _check_keys(ld, _LATENCY_KEYS, where)
        for key in _LATENCY_KEYS:
            if key not in ld:
                raise ConfigError(f"{where}.{key}", "missing", "write { ms = 800, percent = 99 }")
        ms = _number(ld["ms"], f"{where}.ms", "give the latency threshold in milliseconds, e.g. 800")
        if ms <= 0:
            raise ConfigError(f"{where}.ms", f"{ms:g} ms is not positive", "give a threshold in milliseconds, e.g. 800")
        pct = _slo(ld["percent"], f"{where}.percent")
        _check_reachable(lab.windows, pct, f"{where}.percent")
        latency = LatencySLO(ms, pct)
    metrics: list[GuardrailMetric] = []
    if "metrics" in doc:
        raw = doc["metrics"]
        if not isinstance(raw, (list, tuple)):
            raise ConfigError(
                f"{path}.metrics",
                f"expected a list, got {type(raw).__name__}",
                'write metrics = [{ name = "app.checkout.completed", kind = "conversion", margin = -2.0 }]',
            )
        seen: set[str] = set()
        for i, m in enumerate(raw):
            metric = _parse_metric(m, f"{path}.metrics[{i}]")
            if metric.name in seen:
                raise ConfigError(
                    f"{path}.metrics[{i}].name", f"{metric.name!r} is listed twice", "list each metric once"
                )
            seen.add(metric.name)
            metrics.append(metric)
    action = doc.get("action", "pause")
    if action not in ACTIONS:
        raise ConfigError(
            f"{path}.action",
            f"unknown action {action!r}",
            "use pause (the variant's units get control) or alert (report only)",
        )
    min_units = _min_units(doc["min_units"], f"{path}.min_units") if "min_units" in doc else lab.min_units
    return ExperimentGuardrails(error_slo, latency, tuple(metrics), str(action), min_units)


def parse_guardrails_config(doc: Mapping[str, Any]) -> GuardrailsConfig:
    """The guardrails of a whole config document (as :func:`fieldlab.config.read_config_file` returns it).

    Experiments without a ``guardrails`` table are guarded by the lab-wide
    service SLO; an experiment without a valid key is left to the experiment
    parser to report.
    """
    lab = parse_lab_guardrails(doc.get("guardrails"))
    exps: dict[str, ExperimentGuardrails] = {}
    for i, e in enumerate(doc.get("experiments") or ()):
        if not isinstance(e, Mapping) or not isinstance(e.get("key"), str):
            continue
        exps[e["key"]] = parse_experiment_guardrails(e.get("guardrails"), f"experiments[{i}].guardrails", lab)
    return GuardrailsConfig(lab, exps)
