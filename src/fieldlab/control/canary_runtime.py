"""The sick canary at request time: which arm a request is in, from the state store's published weights.

The controller (:mod:`fieldlab.control.canary_controller`) writes each
canary's state (doses, weights, bracket, history) under ``canaries.<key>`` of
the lab state document; every process follows that document with the Lab's
:class:`~fieldlab.control.state.StatePoller`, and :func:`arms_at` turns the
poller's snapshot and the config's ``[[canaries]]`` into the arms of one
request at one fault point:

* the arm comes from :func:`fieldlab.control.canary.choose_arm`: the bucket of
  ``<key>:canary`` and the trace id (``unit = "request"``, the default) or the
  unit id, through the contract's ``variant_boundaries`` and the canary's
  ``traffic``; every service on a trace, and a replay, decide alike;
* nothing is decided (no arm, no attribute) when the state was never read or
  is broken (``halt_faults``), when the store halts faults for everything or
  for the canary's key (``fieldlab kill <canary>``), or when the canary is
  finished or has no weights yet.

The other rails (``[faults] enabled``, ``FIELDLAB_FAULTS=off``, the kill
switch's state file, ``max_active``) are the fault path's own
(:mod:`fieldlab.faults`), which calls :func:`arms_at` and injects the doses.

Which store: the one the Lab follows for the guardrails (``[lab] state``, a
JSON file by default beside the config, or Redis), through the Lab's own
poller (:func:`snapshot_of`): a canary needs no other connection.

This module needs neither numpy nor a framework (it runs in every worker).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from .._hashing import bucket, traffic_basis_points, variant_boundaries
from .canary import CONTROL, dose_of, weight_table
from .state import Snapshot

__all__ = ["CanaryArm", "arms_at", "snapshot_of", "weight_tables"]

# (the LabState object the tables were computed from, the tables): recomputed only when the state changes
_tables: tuple[Any, dict[str, tuple[tuple[str, ...], tuple[int, ...]]]] = (None, {})


class CanaryArm(NamedTuple):
    """A request's arm of one canary: ``label`` is ``control`` or a dose label; ``dose_ms`` None for control."""

    key: str
    label: str
    dose_ms: float | None


def snapshot_of(lab: Any) -> Snapshot | None:
    """The snapshot of the state store ``lab`` follows (``[lab] state``; by default the state file beside
    the config), as its poller last published it; None when the Lab follows no store (no canary then)."""
    snapshot: Snapshot | None = lab.state_snapshot
    return snapshot


def weight_tables(state: Any) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """Per canary key, the published weights as :func:`~fieldlab.control.canary.weight_table` s.

    A canary that is finished (done or stopped) or has no weights has no table: it injects nothing.
    Cached per state document, so a request pays a dict lookup.
    """
    global _tables
    cached_state, tables = _tables
    if state is cached_state:
        return tables
    tables = {}
    docs = getattr(state, "canaries", None) or {}
    for key, doc in docs.items():
        if not isinstance(doc, Mapping) or doc.get("phase") in ("done", "stopped"):
            continue
        weights = doc.get("weights")
        if not isinstance(weights, Mapping) or not weights:
            continue
        try:
            table = weight_table({str(k): float(v) for k, v in weights.items()})
        except (TypeError, ValueError):
            continue  # a hand-edited document: this canary injects nothing
        if table[0]:
            tables[str(key)] = table
    _tables = (state, tables)
    return tables


def arms_at(lab: Any, point: str, trace_key: str | None, units: Mapping[str, str | None]) -> list[CanaryArm]:
    """The canary arms of a request at ``point``: one per canary of the point the request is in.

    ``trace_key``: the trace id as 32 hex digits (None when unknown: a
    ``request``-unit canary then skips the request). Raises nothing the
    caller has not guarded (:mod:`fieldlab.faults` counts internal errors).
    """
    canaries = lab._state.canaries
    here = [c for c in canaries if c.point == point]
    if not here:
        return []
    snap = snapshot_of(lab)
    if snap is None or snap.halt_faults or snap.state is None:
        return []
    tables = weight_tables(snap.state)
    out = []
    for c in here:
        table = tables.get(c.key)
        if table is None or snap.faults_halted(c.key):
            continue
        uid = trace_key if c.unit == "request" else units.get(c.unit)
        if not uid:
            continue
        b = bucket(c.key + ":canary", uid)
        for lo, hi, label, dose in _ranges(table, c.traffic):
            if lo <= b < hi:
                out.append(CanaryArm(c.key, label, dose))
                break
    return out


def _ranges(table: tuple[tuple[str, ...], tuple[int, ...]], traffic: float) -> tuple[tuple[int, int, str, Any], ...]:
    """Bucket ranges of the arms (outside-the-canary left out), as :func:`~fieldlab.control.canary.choose_arm`
    draws them; cached per published table and traffic, so a request pays one hash and a short scan."""
    key = (table, traffic)
    got = _range_cache.get(key)
    if got is None:
        labels, bp = table
        got = tuple(
            (lo, hi, label, None if label == CONTROL else dose_of(label))
            for label, (lo, hi) in zip(labels, variant_boundaries(list(bp), traffic_basis_points(traffic)), strict=True)
            if label
        )
        if len(_range_cache) > 256:
            _range_cache.clear()
        _range_cache[key] = got
    return got


_range_cache: dict[Any, tuple[tuple[int, int, str, Any], ...]] = {}
