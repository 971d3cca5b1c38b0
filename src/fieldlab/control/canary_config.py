"""The ``[[canaries]]`` tables: validated into :class:`CanaryConfig` s, and their share of the blast radius.

::

    [[canaries]]
    key = "inventory-latency"
    point = "inventory.reserve"             # the fault point the doses are injected at
    unit = "request"                        # default; user, session or any unit kind allowed
    traffic = 2                             # % of units in the canary; counted in [faults] max_blast_radius
    doses = { latency_ms = [25, 50, 100, 200, 400, 800, 1600] }   # or { start = 25, factor = 2, max = 1600 }
    steady_state = { error_slo = 99.5, latency_slo = { ms = 1000, percent = 99 }, metrics = [] }

The dose ladder and the steady-state criteria are parsed by
:mod:`fieldlab.control.canary` (:func:`~fieldlab.control.canary.parse_doses`,
:func:`~fieldlab.control.canary.parse_steady_state`); this module adds the
keys the request side and the controller need, and checks that the canaries'
traffic fits under the blast-radius cap together with the fault variants
(the whole canary share counts, its control included: a conservative bound).
Every error is a :class:`~fieldlab.errors.ConfigError` naming the field.

This module needs neither numpy nor a framework: the Lab imports it in every process.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._fault_kinds import POINT_NAME_RE
from ..errors import ConfigError, suggest_names
from .canary import CanarySpec

__all__ = ["CANARY_KEYS", "CanaryConfig", "parse_canaries", "check_canary_radius", "canaries_of", "CanarySet"]

#: The keys a ``[[canaries]]`` table may have.
CANARY_KEYS = frozenset({"key", "point", "unit", "traffic", "doses", "steady_state", "description"})

_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


@dataclass(frozen=True)
class CanaryConfig:
    """One canary: its search (:class:`~fieldlab.control.canary.CanarySpec`), where and on whom it injects."""

    spec: CanarySpec
    point: str
    unit: str = "request"
    traffic: float = 1.0
    description: str = ""

    @property
    def key(self) -> str:
        """The canary's name: the state store's key, the span attribute's suffix and the kill switch's name."""
        return self.spec.key

    def to_dict(self) -> dict[str, Any]:
        """The table form, for ``fieldlab canary status --json`` and the config version."""
        return {
            "key": self.key,
            "point": self.point,
            "unit": self.unit,
            "traffic": self.traffic,
            "doses": list(self.spec.doses),
            "steady_state": self.spec.steady.to_dict(),
        }


def _key(value: Any, path: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 64 or set(value) - _KEY_CHARS:
        raise ConfigError(
            path,
            f"{value!r} is not a canary key",
            'use 1-64 lowercase letters, digits, "-" or "_", e.g. key = "inventory-latency"',
        )
    return value


def _traffic(value: Any, path: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 < value <= 100
    ):
        raise ConfigError(
            path,
            f"{value!r} is not a percentage above 0 and at most 100",
            "give the canary's share of units in percent, e.g. traffic = 2",
        )
    return float(value)


def _one(table: Any, path: str) -> CanaryConfig:
    if not isinstance(table, Mapping):
        raise ConfigError(
            path, f"expected a table, got {type(table).__name__}", "write each canary as a [[canaries]] table"
        )
    unknown = sorted(set(table) - CANARY_KEYS, key=str)
    if unknown:
        raise ConfigError(
            f"{path}.{unknown[0]}",
            f"unknown key {unknown[0]!r}",
            suggest_names(unknown, CANARY_KEYS, "a canary's keys"),
        )
    _key(table.get("key"), f"{path}.key")
    if "point" not in table:
        raise ConfigError(
            f"{path}.point", "is missing", 'name the fault point the doses go to, e.g. point = "db.query"'
        )
    point = table["point"]
    if not isinstance(point, str) or not POINT_NAME_RE.match(point) or point == "http":
        raise ConfigError(
            f"{path}.point",
            f"{point!r} is not a fault point name",
            "use the name given to fieldlab.fault_point(...) in the code (letters, digits, . _ : / -)",
        )
    unit = table.get("unit", "request")
    if not isinstance(unit, str) or not 1 <= len(unit) <= 64 or set(unit) - _KEY_CHARS:
        raise ConfigError(
            f"{path}.unit",
            f"{unit!r} is not a unit kind",
            'use "request" (default: doses drawn per trace id), "user", "session" or a custom kind',
        )
    traffic = _traffic(table.get("traffic", 1.0), f"{path}.traffic")
    desc = table.get("description", "")
    if not isinstance(desc, str):
        raise ConfigError(f"{path}.description", f"{desc!r} is not text", "write description as a string")
    spec = CanarySpec.from_table(table, path)
    return CanaryConfig(spec, point, unit, traffic, desc)


def parse_canaries(value: Any) -> tuple[CanaryConfig, ...]:
    """Every ``[[canaries]]`` table of a config document (``doc.get("canaries")``), validated, in order.

    Keys must be unique; two canaries may share a point (their traffic does
    not overlap only by chance, so each has its own hash salt).
    """
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise ConfigError("canaries", f"expected a list, got {type(value).__name__}", "write [[canaries]] tables")
    out: list[CanaryConfig] = []
    seen: dict[str, int] = {}
    for i, table in enumerate(value):
        c = _one(table, f"canaries[{i}]")
        if c.key in seen:
            raise ConfigError(
                f"canaries[{i}].key",
                f"{c.key!r} is also canaries[{seen[c.key]}]'s key",
                "give every canary its own key",
            )
        seen[c.key] = i
        out.append(c)
    return tuple(out)


def check_canary_radius(
    canaries: Sequence[CanaryConfig], fault_radius_percent: float, cap: float, experiment_keys: Sequence[str] = ()
) -> None:
    """Refuse canaries whose traffic takes the blast radius above ``cap`` (percent) with the fault variants.

    ``fault_radius_percent``: the config's fault variants' reach (``FaultPlan.total_radius * 100``).
    A canary key equal to an experiment key is refused too: the kill switch and the span attributes
    name both by key.
    """
    exps = set(experiment_keys)
    for i, c in enumerate(canaries):
        if c.key in exps:
            raise ConfigError(
                f"canaries[{i}].key",
                f"{c.key!r} is also an experiment's key",
                "give the canary a name of its own (fieldlab kill names either by key)",
            )
    total = fault_radius_percent + sum(c.traffic for c in canaries)
    if canaries and total > cap + 1e-9:
        parts = ", ".join(f"canary {c.key} {c.traffic:g}%" for c in canaries)
        raise ConfigError(
            "faults.max_blast_radius",
            f"fault variants ({fault_radius_percent:.4g}%) and canaries ({parts}) could reach "
            f"{total:.4g}% of units, above the cap of {cap:g}%",
            "lower the canaries' traffic, or raise [faults] max_blast_radius",
        )


class CanarySet(tuple):
    """The config's canaries (a tuple of :class:`CanaryConfig`) and ``points``, the fault points they dose:
    the fault path tests a point against the set before anything else."""

    points: frozenset[str]

    def __new__(cls, canaries: Sequence[CanaryConfig] = ()) -> CanarySet:
        self = super().__new__(cls, canaries)
        self.points = frozenset(c.point for c in canaries)
        return self


def canaries_of(value: Any, plan: Any, experiment_keys: Sequence[str] = ()) -> CanarySet:
    """The Lab's hook: parse ``doc["canaries"]`` and check it against the compiled
    :class:`~fieldlab._fault_kinds.FaultPlan` (its blast radius and cap)."""
    canaries = parse_canaries(value)
    if canaries:
        check_canary_radius(canaries, plan.total_radius * 100, plan.max_blast_radius, experiment_keys)
    return CanarySet(canaries)
