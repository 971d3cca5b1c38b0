"""The experiment model: experiments, layers and holdouts, validated on construction.

Objects here are immutable descriptions. Evaluation lives in :mod:`fieldlab.lab`.
Every validation error names the field path and the fix, so the same checks
serve the Python API and the config files.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ._hashing import traffic_basis_points, variant_boundaries
from .errors import ConfigError, suggest_names
from .targeting import Predicate, compile_condition

__all__ = [
    "Variant",
    "Experiment",
    "Layer",
    "Holdout",
    "STATUSES",
    "UNIT_KINDS",
    "KEY_PATTERN",
    "MAX_VARIANTS",
    "MAX_WEIGHT",
]

KEY_PATTERN = re.compile(r"^[a-z0-9_-]{1,64}$")
STATUSES = ("draft", "running", "paused", "concluded")
#: Built-in unit kinds; any other name matching KEY_PATTERN is a custom kind.
UNIT_KINDS = ("user", "session", "visitor", "request")
_EXPOSURE_MODES = ("on_read", "on_assign")
#: Most variants one experiment may have (10,000 buckets: more arms than this could not all get units).
MAX_VARIANTS = 1000
#: Largest weight of one variant (weights are relative: 1 and 1 is 50/50).
MAX_WEIGHT = 1_000_000
_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _check_key(value: Any, path: str, what: str) -> str:
    if not isinstance(value, str) or not KEY_PATTERN.match(value):
        raise ConfigError(
            path, f"{value!r} is not a valid {what} key", "use 1-64 lowercase letters, digits, '_' or '-'"
        )
    return value


def _check_salt(value: Any, default: str, path: str) -> str:
    if value is None:
        return default
    if not isinstance(value, str) or not value:
        raise ConfigError(
            path, f"salt {value!r} must be a non-empty string", "give a string salt, or leave it out to use the key"
        )
    return value


def _check_percent(value: Any, path: str, what: str = "traffic") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(path, f"{what} {value!r} is not a number", f"set {what} to a percentage from 0 to 100")
    if not math.isfinite(value):
        raise ConfigError(path, f"{what} {value!r} is not a finite number", f"set {what} to a percentage from 0 to 100")
    if not 0 <= value <= 100:
        raise ConfigError(path, f"{what} {value} is outside 0-100", f"set {what} to a percentage from 0 to 100")
    if abs(value * 100 - round(value * 100)) > 1e-6:
        raise ConfigError(
            path, f"{what} {value} has more than two decimals", f"round {what} to two decimals (one bucket is 0.01%)"
        )
    return float(value)


@dataclass(frozen=True)
class Variant:
    """One arm of an experiment: a name, an integer weight and optional parameters."""

    name: str
    weight: int = 1
    params: Mapping[str, Any] = field(default_factory=dict)
    faults: tuple = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", MappingProxyType(dict(self.params or {})))


def _coerce_variants(variants: Any, params: Mapping[str, Mapping[str, Any]] | None, path: str) -> tuple[Variant, ...]:
    items: list[Variant] = []
    if isinstance(variants, Mapping):
        raw: Sequence[Any] = list(variants.items())
    elif isinstance(variants, (list, tuple)):
        raw = variants
    else:
        raise ConfigError(
            path,
            f"expected an ordered mapping or a list, got {type(variants).__name__}",
            'pass {"control": 1, "treatment": 1} or [("control", 1), ("treatment", 1)]',
        )
    if len(raw) > MAX_VARIANTS:
        raise ConfigError(
            path,
            f"{len(raw):,} variants, above the limit of {MAX_VARIANTS:,} per experiment",
            "use fewer variants (each needs enough units to measure), or split the experiment",
        )
    for i, item in enumerate(raw):
        where = f"{path}[{i}]"
        if isinstance(item, Variant):
            items.append(item)
            continue
        if isinstance(item, Mapping):
            unknown = set(item) - {"name", "weight", "params", "faults"}
            if unknown:
                raise ConfigError(
                    where,
                    f"unknown keys {sorted(unknown, key=str)}",
                    suggest_names(sorted(unknown, key=str), ("name", "weight", "params", "faults"), "a variant has"),
                )
            name, weight = item.get("name"), item.get("weight", 1)
            vparams, vfaults = item.get("params") or {}, tuple(item.get("faults") or ())
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            name, weight = item
            vparams, vfaults = {}, ()
        elif isinstance(item, str):
            name, weight, vparams, vfaults = item, 1, {}, ()
        else:
            raise ConfigError(where, f"cannot read variant {item!r}", "write (name, weight) or {name=..., weight=...}")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}.name", f"variant name {name!r} must be a non-empty string", "name the variant")
        if isinstance(weight, bool) or not isinstance(weight, int):
            if isinstance(weight, float) and weight.is_integer():
                weight = int(weight)
            else:
                raise ConfigError(
                    f"{where}.weight",
                    f"weight {weight!r} is not an integer",
                    "use whole-number weights, e.g. 1 and 1 for 50/50, or 9 and 1 for 90/10",
                )
        if weight < 0:
            raise ConfigError(f"{where}.weight", f"weight {weight} is negative", "use a weight of 0 or more")
        if weight > MAX_WEIGHT:
            raise ConfigError(
                f"{where}.weight",
                f"weight {weight:,} is above the limit of {MAX_WEIGHT:,}",
                "weights are relative: use small whole numbers, e.g. 9 and 1 for 90/10",
            )
        if not isinstance(vparams, Mapping):
            raise ConfigError(f"{where}.params", "params must be a table/object", "write params = {page_size = 20}")
        items.append(Variant(name, weight, vparams, vfaults))
    if params:
        names = {v.name for v in items}
        for vname in params:
            if vname not in names:
                raise ConfigError(
                    f"{path}", f"params given for unknown variant {vname!r}", f"use one of {sorted(names)}"
                )
        items = [Variant(v.name, v.weight, {**v.params, **dict(params.get(v.name) or {})}, v.faults) for v in items]
    if len(items) < 1:
        raise ConfigError(path, "an experiment needs at least one variant", "list the control and its alternatives")
    seen: set[str] = set()
    for i, v in enumerate(items):
        if v.name in seen:
            raise ConfigError(f"{path}[{i}].name", f"duplicate variant {v.name!r}", "give each variant its own name")
        seen.add(v.name)
    if sum(v.weight for v in items) <= 0:
        raise ConfigError(path, "all weights are zero", "give at least one variant a positive weight")
    return tuple(items)


class Experiment:
    """An experiment: ordered, weighted variants, and who may take part.

    ``kind`` is ``"ab"`` (a fixed split, the default) or ``"bandit"``: the
    weights then follow the versions the controller publishes, and ``bandit``
    (the ``[experiments.bandit]`` table, validated into a
    :class:`fieldlab.control.bandit_config.BanditConfig`) names the decision
    metric, cadence, floor, burn-in and enrolment slice (``docs/bandits.md``).

    >>> Experiment("checkout-redesign", {"control": 1, "treatment": 1}, traffic=10)
    Experiment('checkout-redesign', variants=['control', 'treatment'], traffic=10.0)
    """

    __slots__ = (
        "key",
        "variants",
        "traffic",
        "salt",
        "unit",
        "control",
        "layer",
        "layer_range",
        "targeting",
        "status",
        "winner",
        "owner",
        "description",
        "exposure",
        "faults",
        "guardrails",
        "kind",
        "bandit",
        "_predicate",
        "_ranges",
        "_path",
    )

    def __init__(
        self,
        key: str,
        variants: Mapping[str, int] | Sequence[Any],
        traffic: float = 100,
        salt: str | None = None,
        unit: str = "user",
        *,
        control: str | None = None,
        params: Mapping[str, Mapping[str, Any]] | None = None,
        layer: str | None = None,
        layer_range: Sequence[float] | None = None,
        targeting: Mapping[str, Any] | None = None,
        status: str = "running",
        winner: str | None = None,
        owner: str | None = None,
        description: str | None = None,
        exposure: str = "on_read",
        faults: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
        guardrails: Mapping[str, Any] | None = None,
        kind: str = "ab",
        bandit: Any = None,
        _path: str | None = None,
    ) -> None:
        path = _path or f"experiment {key!r}"
        self._path = path
        self.key = _check_key(key, f"{path}.key", "experiment")
        self.variants = _coerce_variants(variants, params, f"{path}.variants")
        if faults:
            if not isinstance(faults, Mapping):
                raise ConfigError(
                    f"{path}.faults",
                    "faults must map a variant name to a list of faults",
                    'write faults = {slow = [{point = "db.query", latency_ms = 300}]}',
                )
            by_name = {v.name: v for v in self.variants}
            for vname, vfaults in faults.items():
                if vname not in by_name:
                    raise ConfigError(
                        f"{path}.faults", f"faults given for unknown variant {vname!r}", f"use one of {sorted(by_name)}"
                    )
                v = by_name[vname]
                by_name[vname] = Variant(v.name, v.weight, v.params, tuple(v.faults) + tuple(vfaults))
            self.variants = tuple(by_name[v.name] for v in self.variants)
        self.faults = {v.name: v.faults for v in self.variants if v.faults}
        if guardrails is not None and not isinstance(guardrails, Mapping):
            raise ConfigError(
                f"{path}.guardrails",
                f"expected a table, got {type(guardrails).__name__}",
                "write [experiments.guardrails] with error_slo, latency_slo, metrics, action",
            )
        #: The ``[experiments.guardrails]`` table as given; the Lab validates it with the lab-wide
        #: ``[guardrails]`` defaults (see :mod:`fieldlab.control.settings`).
        self.guardrails: Mapping[str, Any] | None = MappingProxyType(dict(guardrails)) if guardrails else None
        self.traffic = _check_percent(traffic, f"{path}.traffic")
        self.salt = _check_salt(salt, self.key, f"{path}.salt")
        if not isinstance(unit, str) or not KEY_PATTERN.match(unit):
            raise ConfigError(
                f"{path}.unit",
                f"unit kind {unit!r} is not valid",
                f"use one of {', '.join(UNIT_KINDS)} or a custom lowercase name",
            )
        self.unit = unit
        names = [v.name for v in self.variants]
        self.control = control if control is not None else names[0]
        if self.control not in names:
            raise ConfigError(f"{path}.control", f"unknown control variant {self.control!r}", f"use one of {names}")
        if status not in STATUSES:
            raise ConfigError(f"{path}.status", f"unknown status {status!r}", f"use one of {', '.join(STATUSES)}")
        self.status = status
        if status == "concluded":
            if winner is None:
                raise ConfigError(
                    f"{path}.winner", "a concluded experiment needs a winner", f"set winner to one of {names}"
                )
        if winner is not None and winner not in names:
            raise ConfigError(f"{path}.winner", f"unknown winner {winner!r}", f"use one of {names}")
        self.winner = winner
        if exposure not in _EXPOSURE_MODES:
            raise ConfigError(f"{path}.exposure", f"unknown exposure mode {exposure!r}", "use 'on_read' or 'on_assign'")
        self.exposure = exposure
        self.owner = owner
        self.description = description
        if (layer is None) != (layer_range is None):
            raise ConfigError(
                f"{path}.layer_range" if layer else f"{path}.layer",
                "layer and layer_range go together",
                'set both: layer = "checkout" and layer_range = [0, 50]',
            )
        self.layer = _check_key(layer, f"{path}.layer", "layer") if layer is not None else None
        if layer_range is not None:
            if not isinstance(layer_range, (list, tuple)) or len(layer_range) != 2:
                raise ConfigError(
                    f"{path}.layer_range", f"{layer_range!r} is not [start, end)", "write layer_range = [0, 50]"
                )
            start = _check_percent(layer_range[0], f"{path}.layer_range[0]", "layer_range start")
            end = _check_percent(layer_range[1], f"{path}.layer_range[1]", "layer_range end")
            if start >= end:
                raise ConfigError(
                    f"{path}.layer_range",
                    f"start {start} is not below end {end}",
                    "write [start, end) with start < end",
                )
            self.layer_range: tuple[int, int] | None = (traffic_basis_points(start), traffic_basis_points(end))
        else:
            self.layer_range = None
        self.kind, self.bandit = _check_kind(kind, bandit, self, path)
        self.targeting = targeting
        self._predicate: Predicate | None = compile_condition(targeting, f"{path}.targeting") if targeting else None
        self._ranges = variant_boundaries([v.weight for v in self.variants], traffic_basis_points(self.traffic))

    @property
    def variant_names(self) -> list[str]:
        return [v.name for v in self.variants]

    @property
    def weights(self) -> dict[str, int]:
        return {v.name: v.weight for v in self.variants}

    def ranges(self) -> dict[str, tuple[int, int]]:
        """Bucket range ``[lo, hi)`` of each variant at the current traffic."""
        return {v.name: r for v, r in zip(self.variants, self._ranges, strict=False)}

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "key": self.key,
            "variants": [
                {
                    "name": v.name,
                    "weight": v.weight,
                    **({"params": dict(v.params)} if v.params else {}),
                    **({"faults": [dict(f) for f in v.faults]} if v.faults else {}),
                }
                for v in self.variants
            ],
            "traffic": self.traffic,
            "salt": self.salt,
            "unit": self.unit,
            "control": self.control,
            "status": self.status,
            "exposure": self.exposure,
        }
        for name in ("layer", "targeting", "winner", "owner", "description"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.guardrails is not None:
            out["guardrails"] = dict(self.guardrails)
        if self.kind != "ab":
            out["kind"] = self.kind
        if self.bandit is not None:
            out["bandit"] = self.bandit.to_dict()
        if self.layer_range is not None:
            out["layer_range"] = [self.layer_range[0] / 100, self.layer_range[1] / 100]
        return out

    def __repr__(self) -> str:
        return f"Experiment({self.key!r}, variants={self.variant_names}, traffic={self.traffic})"


def _check_kind(kind: Any, bandit: Any, exp: Experiment, path: str) -> tuple[str, Any]:
    """``kind`` and the ``bandit`` table: validated together (:mod:`fieldlab.control.bandit_config`)."""
    if kind not in ("ab", "bandit"):
        raise ConfigError(
            f"{path}.kind", f"unknown experiment kind {kind!r}", 'use "ab" (a fixed split, the default) or "bandit"'
        )
    if kind != "bandit":
        if bandit is not None:
            raise ConfigError(
                f"{path}.kind",
                f"an [experiments.bandit] table is given but kind is {kind!r}",
                'set kind = "bandit", or remove the bandit table',
            )
        return kind, None
    if bandit is None:
        raise ConfigError(
            f"{path}.bandit",
            'is missing: a kind = "bandit" experiment needs its decision metric',
            'add [experiments.bandit] with metric = "app.cart.added" (or "error" / "latency")',
        )
    if exp.faults:
        raise ConfigError(
            f"{path}.faults",
            "a bandit cannot inject faults: its weights move traffic between arms, so the blast-radius cap "
            "computed from the config's split would not hold",
            'use [[canaries]] to search for a breaking point, or a kind = "ab" experiment for a fixed fault split',
        )
    from .control.bandit_config import parse_bandit

    cfg = parse_bandit(bandit, f"{path}.bandit", unit=exp.unit, weights=[(v.name, v.weight) for v in exp.variants])
    return kind, cfg


class Layer:
    """A set of mutually exclusive experiments: each owns a slice of the layer's buckets."""

    __slots__ = ("key", "salt", "description")

    def __init__(
        self, key: str, salt: str | None = None, description: str | None = None, *, _path: str | None = None
    ) -> None:
        path = _path or f"layer {key!r}"
        self.key = _check_key(key, f"{path}.key", "layer")
        self.salt = _check_salt(salt, self.key, f"{path}.salt")
        self.description = description

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "salt": self.salt, **({"description": self.description} if self.description else {})}

    def __repr__(self) -> str:
        return f"Layer({self.key!r}, salt={self.salt!r})"


class Holdout:
    """Units kept out of a set of experiments, to measure their combined long-run effect."""

    __slots__ = ("key", "salt", "percent", "experiments", "description", "threshold")

    def __init__(
        self,
        key: str,
        percent: float,
        experiments: Sequence[str],
        salt: str | None = None,
        description: str | None = None,
        *,
        _path: str | None = None,
    ) -> None:
        path = _path or f"holdout {key!r}"
        self.key = _check_key(key, f"{path}.key", "holdout")
        self.salt = _check_salt(salt, self.key, f"{path}.salt")
        self.percent = _check_percent(percent, f"{path}.percent", "percent")
        if isinstance(experiments, str) or not isinstance(experiments, (list, tuple)) or not experiments:
            raise ConfigError(
                f"{path}.experiments",
                "expected a non-empty list of experiment keys",
                'write experiments = ["checkout-redesign"]',
            )
        self.experiments = tuple(experiments)
        self.description = description
        self.threshold = traffic_basis_points(self.percent)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "salt": self.salt,
            "percent": self.percent,
            "experiments": list(self.experiments),
            **({"description": self.description} if self.description else {}),
        }

    def __repr__(self) -> str:
        return f"Holdout({self.key!r}, percent={self.percent}, experiments={list(self.experiments)})"
