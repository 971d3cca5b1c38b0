"""Fault entries and the fault plan: parsing, validation and the blast-radius check.

This module has no runtime state and imports nothing that imports the Lab, so
:mod:`fieldlab.lab` can call :func:`compile_plan` each time it builds a
configuration state. The runtime (deciding and injecting) is :mod:`fieldlab.faults`.

A fault entry is a plain mapping, the same in TOML, JSON, YAML and Python::

    {point = "db.query", latency_ms = 300, jitter_ms = 50, rate = 20}
    {point = "db.query", median_ms = 80, p99_ms = 900}            # lognormal
    {point = "db.query", min_ms = 100, max_ms = 400}              # uniform
    {point = "payments.charge", exception = "db_timeout"}         # registered class
    {point = "http", status = 503, body = "try again"}            # abort

``kind`` may be given explicitly (``latency``, ``exception``, ``abort``);
otherwise it follows from the keys. Every error names the field path and a fix.
"""

from __future__ import annotations

import math
import os
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

from .config import check_settings
from .errors import ConfigError
from .experiments import Experiment, Holdout, _check_percent

__all__ = [
    "FaultSpec",
    "FaultEntry",
    "FaultPlan",
    "compile_plan",
    "parse_fault",
    "blast_radius",
    "variant_shares",
    "KINDS",
    "HTTP_POINT",
    "POINT_NAME_RE",
    "EXCEPTION_NAME_RE",
    "DEFAULT_MAX_BLAST_RADIUS",
    "DEFAULT_MAX_ACTIVE",
    "MAX_MAX_ACTIVE",
    "MAX_LATENCY_MS",
    "FAULT_SETTINGS_KEYS",
    "state_path",
]

KINDS = ("latency", "exception", "abort")
#: The point of aborts: answered by the web adapter before the app runs.
HTTP_POINT = "http"
DEFAULT_MAX_BLAST_RADIUS = 5.0
DEFAULT_MAX_ACTIVE = 100
#: Upper bound of ``[faults] max_active`` (faults in progress at once in one process).
MAX_MAX_ACTIVE = 1_000_000
#: Upper bound of any single injected delay (configured or drawn).
MAX_LATENCY_MS = 60_000.0
FAULT_SETTINGS_KEYS = frozenset({"enabled", "max_blast_radius", "max_active"})

_COMMON = frozenset({"point", "kind", "rate", "salt", "description"})
_LATENCY_KEYS = frozenset({"latency_ms", "jitter_ms", "min_ms", "max_ms", "median_ms", "p99_ms", "distribution"})
_KEYS = {
    "latency": _COMMON | _LATENCY_KEYS,
    "exception": _COMMON | {"exception", "message"},
    "abort": _COMMON | {"status", "body"},
}
_DISTRIBUTIONS = ("fixed", "uniform", "lognormal")
POINT_NAME_RE = re.compile(r"^[A-Za-z0-9_.:/\-]{1,128}$")
EXCEPTION_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$")
_MAX_BODY = 65536


@dataclass(frozen=True)
class FaultSpec:
    """One validated fault: what happens at which point, for which share of traces.

    ``rate_bp`` is the rate in basis points (10000 = every request of the
    variant). Latency is ``fixed`` (``latency_ms``), ``uniform`` (``min_ms`` to
    ``max_ms``) or ``lognormal`` (``median_ms`` and ``p99_ms``, capped at
    ``max_ms`` when given), plus a symmetric uniform ``jitter_ms``.
    """

    kind: str
    point: str
    rate_bp: int = 10000
    salt: str | None = None
    distribution: str = "fixed"
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    min_ms: float = 0.0
    max_ms: float = MAX_LATENCY_MS
    median_ms: float = 0.0
    p99_ms: float = 0.0
    exception: str | None = None
    message: str | None = None
    status: int = 0
    body: str | None = None


def _number(entry: Mapping[str, Any], key: str, path: str, *, positive: bool = False) -> float:
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(
            f"{path}.{key}", f"{value!r} is not a number", f"write {key} as milliseconds, e.g. {key} = 300"
        )
    if value < 0 or (positive and value == 0):
        raise ConfigError(
            f"{path}.{key}",
            f"{value} is {'not positive' if value == 0 else 'negative'}",
            f"use a {'positive' if positive else 'non-negative'} number of milliseconds",
        )
    if value > MAX_LATENCY_MS:
        raise ConfigError(
            f"{path}.{key}",
            f"{value} ms is above the {MAX_LATENCY_MS:g} ms limit of one delay",
            "use a shorter delay, or an abort (status = 503) to simulate an outage",
        )
    return float(value)


def _infer_kind(entry: Mapping[str, Any], path: str) -> str:
    kind = entry.get("kind")
    if kind is not None:
        if kind not in KINDS:
            raise ConfigError(f"{path}.kind", f"unknown fault kind {kind!r}", f"use one of {', '.join(KINDS)}")
        return str(kind)
    if "status" in entry or "body" in entry:
        return "abort"
    if "exception" in entry or "message" in entry:
        return "exception"
    if set(entry) & _LATENCY_KEYS:
        return "latency"
    raise ConfigError(
        path,
        "cannot tell the fault kind",
        'give latency_ms (latency), exception = "name" (exception) or status = 503 (abort), or set kind explicitly',
    )


def parse_fault(entry: Any, path: str) -> FaultSpec:
    """Validate one fault entry; raises :class:`ConfigError` naming ``path`` and the fix."""
    if not isinstance(entry, Mapping):
        raise ConfigError(
            path, f"expected a table/object, got {type(entry).__name__}", 'write {point = "db.query", latency_ms = 300}'
        )
    kind = _infer_kind(entry, path)
    unknown = set(entry) - _KEYS[kind]
    if unknown:
        raise ConfigError(
            path,
            f"unknown keys {sorted(unknown)} for a {kind} fault",
            f"a {kind} fault has {', '.join(sorted(_KEYS[kind]))}",
        )
    point = entry.get("point", HTTP_POINT if kind == "abort" else None)
    if point is None:
        raise ConfigError(f"{path}.point", "is missing", 'name the fault point from the code, e.g. point = "db.query"')
    if not isinstance(point, str) or not POINT_NAME_RE.match(point):
        raise ConfigError(
            f"{path}.point",
            f"{point!r} is not a valid point name",
            "use 1-128 letters, digits, '.', '_', '-', ':' or '/'",
        )
    if kind == "abort" and point != HTTP_POINT:
        raise ConfigError(
            f"{path}.point",
            f"an abort answers the HTTP request before the app runs, so its point is {HTTP_POINT!r}, not {point!r}",
            f'write point = "{HTTP_POINT}" (or leave it out), or use an exception fault at {point!r}',
        )
    if kind != "abort" and point == HTTP_POINT:
        raise ConfigError(
            f"{path}.point",
            f"point {HTTP_POINT!r} is reserved for aborts",
            'name a fault point from the code, e.g. point = "db.query"',
        )
    rate = entry.get("rate", 100)
    rate = _check_percent(rate, f"{path}.rate", "rate")
    salt = entry.get("salt")
    if salt is not None and (not isinstance(salt, str) or not salt):
        raise ConfigError(
            f"{path}.salt",
            f"salt {salt!r} must be a non-empty string",
            "give a string, or leave it out to use '<experiment>:<variant>:fault'",
        )
    desc = entry.get("description")
    if desc is not None and not isinstance(desc, str):
        raise ConfigError(f"{path}.description", "must be a string", 'write description = "..."')
    common: dict[str, Any] = {"kind": kind, "point": point, "rate_bp": int(round(rate * 100)), "salt": salt}
    if kind == "latency":
        return FaultSpec(**common, **_parse_latency(entry, path))
    if kind == "exception":
        name = entry.get("exception", "InjectedFault")
        if not isinstance(name, str) or not EXCEPTION_NAME_RE.match(name):
            raise ConfigError(
                f"{path}.exception",
                f"{name!r} is not a valid exception name",
                "use the name the app registered with fieldlab.faults.register_exception, or InjectedFault",
            )
        message = entry.get("message")
        if message is not None and not isinstance(message, str):
            raise ConfigError(f"{path}.message", "must be a string", 'write message = "..."')
        return FaultSpec(**common, exception=name, message=message)
    status = entry.get("status", 503)
    if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
        raise ConfigError(
            f"{path}.status",
            f"{status!r} is not an HTTP error status",
            "use a status from 400 to 599, e.g. status = 503",
        )
    body = entry.get("body")
    if body is not None and (not isinstance(body, str) or len(body) > _MAX_BODY):
        raise ConfigError(f"{path}.body", "must be a string of at most 64 KiB", 'write body = "service unavailable"')
    return FaultSpec(**common, status=status, body=body)


def _parse_latency(entry: Mapping[str, Any], path: str) -> dict[str, Any]:
    has = {k for k in ("latency_ms", "min_ms", "max_ms", "median_ms", "p99_ms") if k in entry}
    if "median_ms" in has or "p99_ms" in has:
        inferred = "lognormal"
    elif "min_ms" in has:
        inferred = "uniform"
    elif "latency_ms" in has:
        inferred = "fixed"
    else:
        raise ConfigError(
            path,
            "a latency fault needs a delay",
            "write latency_ms = 300, or min_ms and max_ms, or median_ms and p99_ms",
        )
    dist = entry.get("distribution", inferred)
    if dist not in _DISTRIBUTIONS:
        raise ConfigError(
            f"{path}.distribution", f"unknown distribution {dist!r}", f"use one of {', '.join(_DISTRIBUTIONS)}"
        )
    if dist != inferred:
        raise ConfigError(
            f"{path}.distribution",
            f"distribution {dist!r} does not match the keys given ({sorted(has)})",
            "fixed takes latency_ms; uniform takes min_ms and max_ms; lognormal takes median_ms and "
            "p99_ms (and max_ms as a cap)",
        )
    allowed = {
        "fixed": {"latency_ms"},
        "uniform": {"min_ms", "max_ms"},
        "lognormal": {"median_ms", "p99_ms", "max_ms"},
    }[dist]
    extra = has - allowed
    if extra:
        raise ConfigError(
            path,
            f"{sorted(extra)} do not go with a {dist} latency",
            "fixed takes latency_ms; uniform takes min_ms and max_ms; lognormal takes median_ms and "
            "p99_ms (and max_ms as a cap)",
        )
    out: dict[str, Any] = {"distribution": dist}
    if "jitter_ms" in entry:
        out["jitter_ms"] = _number(entry, "jitter_ms", path)
    if dist == "fixed":
        out["latency_ms"] = _number(entry, "latency_ms", path)
    elif dist == "uniform":
        for key in ("min_ms", "max_ms"):
            if key not in entry:
                raise ConfigError(f"{path}.{key}", "is missing", "a uniform latency needs min_ms and max_ms")
        lo, hi = _number(entry, "min_ms", path), _number(entry, "max_ms", path)
        if lo > hi:
            raise ConfigError(f"{path}.min_ms", f"min_ms {lo:g} is above max_ms {hi:g}", "write min_ms <= max_ms")
        out.update(min_ms=lo, max_ms=hi)
    else:
        for key in ("median_ms", "p99_ms"):
            if key not in entry:
                raise ConfigError(f"{path}.{key}", "is missing", "a lognormal latency needs median_ms and p99_ms")
        median = _number(entry, "median_ms", path, positive=True)
        p99 = _number(entry, "p99_ms", path, positive=True)
        if p99 < median:
            raise ConfigError(
                f"{path}.p99_ms", f"p99_ms {p99:g} is below median_ms {median:g}", "write p99_ms >= median_ms"
            )
        out.update(median_ms=median, p99_ms=p99)
        if "max_ms" in entry:
            out["max_ms"] = _number(entry, "max_ms", path)
    return out


def _experiment_factor(exp: Experiment, holdouts: Sequence[Holdout]) -> float:
    """The share of units an experiment's split sees: layer range share x (1 - share of each covering holdout)."""
    share = 1.0
    if exp.layer_range is not None:
        share *= (exp.layer_range[1] - exp.layer_range[0]) / 10000
    for h in holdouts:
        if exp.key in h.experiments:
            share *= 1 - h.threshold / 10000
    return share


def variant_shares(exp: Experiment, holdouts: Sequence[Holdout]) -> dict[str, float]:
    """Share of units (0-1) that can land in each variant of ``exp`` by the split.

    traffic x weight share (the variant's bucket range) x layer range share x
    (1 - holdout share) for every holdout covering the experiment. Targeting
    is not counted, so this is an upper bound. Linear in the number of variants.
    """
    factor = _experiment_factor(exp, holdouts)
    return {v.name: (hi - lo) / 10000 * factor for v, (lo, hi) in zip(exp.variants, exp._ranges, strict=False)}


def blast_radius(experiments: Sequence[Experiment], holdouts: Sequence[Holdout] = ()) -> dict[tuple[str, str], float]:
    """Share of units (0-1) each fault variant of a running experiment can reach."""
    out: dict[tuple[str, str], float] = {}
    for exp in experiments:
        if exp.status != "running":
            continue  # paused, draft and concluded experiments split nobody; overrides need a signed token
        if any(v.faults for v in exp.variants):
            shares = variant_shares(exp, holdouts)
            for v in exp.variants:
                if v.faults:
                    out[(exp.key, v.name)] = shares[v.name]
    return out


def state_path(source: str | None, settings: Mapping[str, Any]) -> str | None:
    """Where the kill-switch state file lives: ``lab.state`` (or its older name ``lab.state_file``) relative to
    the config, else ``<config>.state.json``; None for a Redis store (followed by the lab's state poller)."""
    explicit = settings.get("state", settings.get("state_file"))
    if isinstance(explicit, str) and "://" in explicit:
        scheme, _, rest = explicit.partition("://")
        if scheme.lower() != "file":
            return None
        explicit = urllib.parse.unquote(urllib.parse.urlsplit(explicit).path)
    if explicit:
        explicit = os.fspath(explicit)
        if os.path.isabs(explicit) or not source or source.startswith("<"):
            return os.path.abspath(explicit)
        return os.path.abspath(os.path.join(os.path.dirname(source), explicit))
    if source and not source.startswith("<"):
        return os.path.abspath(source) + ".state.json"
    return None


class FaultEntry(NamedTuple):
    """One fault variant's fault at a point: where the decision path looks it up (``FaultPlan.by_point``)."""

    experiment: str
    variant: str
    spec: FaultSpec
    #: salt of the fault's own draws (rate, delay), independent of the variant split
    salt: str


class FaultPlan:
    """The faults of one configuration state, indexed for the decision path.

    ``by_point`` maps a point name to its :class:`FaultEntry` tuple, in config order. Immutable once built; swapped whole on reload with
    the rest of the state.
    """

    __slots__ = (
        "enabled",
        "max_blast_radius",
        "max_active",
        "by_point",
        "radius",
        "total_radius",
        "shares",
        "state_file",
        "reload_interval",
        "code_admitted",
    )

    def __init__(
        self,
        enabled: bool,
        max_blast_radius: float,
        max_active: int,
        by_point: Mapping[str, tuple[FaultEntry, ...]],
        radius: Mapping[tuple[str, str], float],
        shares: Mapping[tuple[str, str], float],
        state_file: str | None,
        reload_interval: float | None,
    ) -> None:
        self.enabled = enabled
        self.max_blast_radius = max_blast_radius
        self.max_active = max_active
        self.by_point = by_point
        self.radius = radius
        self.total_radius = sum(radius.values())
        self.shares = shares
        self.state_file = state_file
        self.reload_interval = reload_interval
        #: (number of code-defined variants seen, those admitted under the cap); filled by fieldlab.faults.
        self.code_admitted: tuple[int, frozenset[tuple[str, str]]] | None = None


def _settings(faults: Mapping[str, Any]) -> tuple[bool, float, int]:
    unknown = set(faults) - FAULT_SETTINGS_KEYS
    if unknown:
        raise ConfigError(
            "faults", f"unknown settings {sorted(unknown)}", f"use only {', '.join(sorted(FAULT_SETTINGS_KEYS))}"
        )
    enabled = faults.get("enabled", False)
    if not isinstance(enabled, bool):
        raise ConfigError("faults.enabled", f"{enabled!r} is not true or false", "write enabled = true")
    cap = faults.get("max_blast_radius", DEFAULT_MAX_BLAST_RADIUS)
    cap = _check_percent(cap, "faults.max_blast_radius", "max_blast_radius")
    max_active = faults.get("max_active", DEFAULT_MAX_ACTIVE)
    if isinstance(max_active, bool) or not isinstance(max_active, int) or not 1 <= max_active <= MAX_MAX_ACTIVE:
        raise ConfigError(
            "faults.max_active",
            f"{max_active!r} is not a whole number from 1 to {MAX_MAX_ACTIVE:,}",
            f"write max_active = {DEFAULT_MAX_ACTIVE} (faults in progress at once, per process)",
        )
    return enabled, cap, max_active


def compile_plan(
    experiments: Sequence[Experiment],
    holdouts: Sequence[Holdout],
    settings: Mapping[str, Any],
    faults: Mapping[str, Any] | None,
    source: str | None,
) -> FaultPlan:
    """Validate every fault entry and the blast radius, and index the faults by point.

    Raises :class:`ConfigError` naming the field path (or, for the blast
    radius, the experiments and variants) and the fix.
    """
    check_settings(settings)
    enabled, cap, max_active = _settings(faults or {})
    by_point: dict[str, list[FaultEntry]] = {}
    for exp in experiments:
        base = getattr(exp, "_path", None) or f"experiment {exp.key!r}"
        for vi, v in enumerate(exp.variants):
            for fi, entry in enumerate(v.faults):
                path = f"{base}.variants[{vi}].faults[{fi}]"
                try:
                    spec = parse_fault(entry, path)
                except ConfigError as exc:
                    raise ConfigError(exc.path, f"(variant {v.name!r}) {exc.problem}", exc.fix) from None
                salt = spec.salt or f"{exp.key}:{v.name}:fault"
                by_point.setdefault(spec.point, []).append(FaultEntry(exp.key, v.name, spec, salt))
    radius = blast_radius(experiments, holdouts)
    total = sum(radius.values())
    if total * 100 > cap + 1e-9:
        parts = ", ".join(
            f"{e}/{v} {share * 100:.4g}%" for (e, v), share in sorted(radius.items(), key=lambda x: -x[1])
        )
        raise ConfigError(
            "faults.max_blast_radius",
            f"fault variants could reach {total * 100:.4g}% of units, above the cap of {cap:g}% (experiments: {parts})",
            "lower the traffic or weight of those fault variants, or raise [faults] max_blast_radius",
        )
    shares = {
        (e.key, name): share
        for e in experiments
        if e.status == "running"
        for name, share in variant_shares(e, holdouts).items()
    }
    interval = settings.get("reload_interval")
    return FaultPlan(
        enabled,
        cap,
        max_active,
        MappingProxyType({p: tuple(x) for p, x in by_point.items()}),
        MappingProxyType(radius),
        MappingProxyType(shares),
        state_path(source, settings),
        float(interval) if isinstance(interval, (int, float)) and not isinstance(interval, bool) else None,
    )
