"""The pure-Python engine: the twin of the analysis SQL over :class:`~.model.Span` s, with the same results.

Used when embedded ClickHouse (chdb) is not installed or cannot read a file safely, and as the reference the
SQL is tested against. :func:`python_aggregate` is :func:`~fieldlab.analysis.sql.aggregate_sql`,
:func:`python_unit_totals` is :func:`~fieldlab.analysis.sql.unit_totals_sql`: same definitions (SERVER spans,
repeated spans once, forced requests and units seen in two variants left out), same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .. import attributes as A
from .model import HIST_PER_DECADE, UNIT_FALLBACK_ORDER, Aggregates, ExperimentData, GroupData, Metric, QuerySpec, Span
from .reader import int64_or_zero

__all__ = ["python_aggregate", "python_unit_totals"]


def _first_sighting(tid: str, sid: str, seen: set) -> bool:
    """True the first time a (trace id, span id) is seen; spans without both ids are always new.

    ``seen`` holds 64-bit hashes, not the ids: the one part of the Python reader's memory that grows with
    the number of spans (about 60 bytes per span).
    """
    if not (tid and sid):
        return True
    h = hash((tid, sid))
    if h in seen:
        return False
    seen.add(h)
    return True


class _Unit:
    """One unit's running totals in one experiment (or holdout): the per-unit row of the SQL."""

    __slots__ = (
        "variants",
        "requests",
        "exposed_requests",
        "guarded_requests",
        "errors",
        "latency_ns",
        "exposed",
        "first_ts",
        "hist",
        "metrics",
        "period",
    )

    def __init__(self, variant: str, ts: int, n_metrics: int) -> None:
        self.variants = {variant}
        self.requests = self.exposed_requests = self.guarded_requests = self.errors = 0
        self.latency_ns = 0.0
        self.exposed = False
        self.first_ts = ts
        self.hist: dict[int, int] = {}
        #: per metric: sum (or 1.0 once converted) and count, as in :func:`python_unit_totals`
        self.metrics = [0.0] * (2 * n_metrics)
        #: the lowest bandit weights version on the unit's requests (``fieldlab.bandit.<key>``); None: none has one
        self.period: int | None = None

    def add(self, dur: float, ts: int, hist_bin: int, is_error: bool, exposed: bool, guarded: bool = False) -> None:
        """Count one request of this unit (``guarded``: served control because its variant was paused)."""
        self.requests += 1
        self.exposed_requests += exposed
        self.guarded_requests += guarded
        self.errors += is_error
        self.latency_ns += dur
        self.exposed = self.exposed or exposed
        self.first_ts = min(self.first_ts, ts)
        self.hist[hist_bin] = self.hist.get(hist_bin, 0) + 1


class _Fold:
    """Everything :func:`python_aggregate` accumulates while it reads the spans once."""

    def __init__(self) -> None:
        self.units: dict[tuple[bool, str, str], _Unit] = {}
        self.forced: dict[str, int] = {}
        self.kinds: dict[str, set[str]] = {}
        self.seen: set[int] = set()
        self.spans = self.server_spans = self.bad_lines = 0


def python_aggregate(spans: Iterable[Span], spec: QuerySpec) -> Aggregates:
    """The pure-Python twin of :func:`~fieldlab.analysis.sql.aggregate_sql` (same definitions, same results)."""
    fold = _Fold()
    cover = {A.holdout_attr(h): set(es) for h, es in spec.holdout_experiments.items()}
    for span in spans:
        _fold_span(fold, span, spec, cover)
    exps: dict[str, ExperimentData] = {}
    holds: dict[str, GroupData] = {}
    grouped, multi = _group_units(fold.units)
    for (is_h, exp, v), us in sorted(grouped.items()):
        gd = _group_data(us, spec.metrics)
        if is_h:
            holds[exp] = gd
        else:
            exps.setdefault(exp, ExperimentData(exp, {}, sorted(fold.kinds.get(exp, ())))).variants[v] = gd
    for exp, ed in exps.items():
        ed.forced_requests = fold.forced.get(exp, 0)
        ed.multi_variant_units = multi.get(exp, 0)
    return Aggregates(exps, holds, fold.spans, fold.server_spans, fold.bad_lines)


def _fold_span(fold: _Fold, span: Span, spec: QuerySpec, cover: Mapping[str, set[str]]) -> None:
    """Add one span to the running totals of every unit it counts for (one per experiment and holdout)."""
    ok, tid, sid, ts, dur, server, status_err, attrs = span
    if not ok:
        fold.bad_lines += 1
        return
    if spec.window is not None and not spec.window.contains(ts):
        return  # --since / --until: not read at all (the SQL filters before counting, too)
    if not tid or not _first_sighting(tid, sid, fold.seen):
        return
    fold.spans += 1
    if not server:
        return
    fold.server_spans += 1
    if spec.filters and not all(f.matches(attrs) for f in spec.filters):
        return
    keys = _group_keys(attrs, cover)
    if not keys:
        return
    code = attrs.get(A.HTTP_STATUS_CODE) or attrs.get(A.HTTP_STATUS_CODE_OLD) or ""
    is_err = bool(status_err or int64_or_zero(code) >= 500)
    b = int(math.floor(math.log10(dur) * HIST_PER_DECADE)) if dur > 0 else -1
    hp, vp = A.HOLDOUT_PREFIX, A.VARIANT_PREFIX
    for vk in keys:
        is_h = vk.startswith(hp)
        exp = vk[len(hp) :] if is_h else vk[len(vp) :]
        if not is_h and attrs.get(A.forced_attr(exp)) == "true":
            fold.forced[exp] = fold.forced.get(exp, 0) + 1
            continue
        kind = _unit_kind(spec, exp, is_h, attrs)
        uid = (attrs.get(A.unit_attr("request")) or tid) if kind == "request" else attrs.get(A.unit_attr(kind), "")
        if not uid:
            continue
        if not is_h:
            fold.kinds.setdefault(exp, set()).add(kind)
        u = fold.units.get((is_h, exp, uid))
        # intent-to-treat: served control during a pause (fieldlab.guardrail.<key>), assigned the paused variant
        paused = "" if is_h else attrs.get(A.guardrail_attr(exp), "")
        variant = "holdout" if is_h else (paused or attrs[vk])
        if u is None:
            u = fold.units[(is_h, exp, uid)] = _Unit(variant, ts, len(spec.metrics))
        else:
            u.variants.add(variant)
        u.add(dur, ts, b, is_err, is_h or attrs.get(A.exposed_attr(exp)) == "true", bool(paused))
        _add_period(u, exp, is_h, attrs)
        _add_metrics(u.metrics, 0, spec.metrics, attrs)


def _add_period(u: _Unit, exp: str, is_h: bool, attrs: Mapping[str, str]) -> None:
    """Keep the lowest bandit weights version among the unit's requests that carry one (the SQL's
    ``minIf(bver, nf AND has_bver)``); a unit none of whose requests carries one is in period 0."""
    raw = "" if is_h else attrs.get(A.bandit_attr(exp), "")
    if raw:
        p = int64_or_zero(raw)
        u.period = p if u.period is None else min(u.period, p)


def _group_keys(attrs: Mapping[str, str], cover: Mapping[str, set[str]]) -> list[str]:
    """The span's holdout attributes that are true, then its variant attributes of experiments those
    holdouts do not cover: one group (holdout or experiment) per key."""
    vp, hp = A.VARIANT_PREFIX, A.HOLDOUT_PREFIX
    hk = [k for k, v in attrs.items() if k.startswith(hp) and v == "true"]
    covered = set().union(*(cover.get(h, ()) for h in hk)) if hk and cover else ()
    return hk + [k for k in attrs if k.startswith(vp) and k[len(vp) :] not in covered]


def _unit_kind(spec: QuerySpec, exp: str, is_h: bool, attrs: Mapping[str, str]) -> str:
    """The configured unit kind of ``exp``; else (and for holdouts) the first kind the span carries."""
    kind = spec.unit_kinds.get(exp) if not is_h else None
    if kind is None:
        kind = next((k for k in UNIT_FALLBACK_ORDER if attrs.get(A.unit_attr(k))), "request")
    return kind


def _group_units(
    units: Mapping[tuple[bool, str, str], _Unit],
) -> tuple[dict[tuple[bool, str, str], list[_Unit]], dict[str, int]]:
    """Units by (holdout?, experiment, variant); a unit seen in two variants is left out and counted."""
    grouped: dict[tuple[bool, str, str], list[_Unit]] = {}
    multi: dict[str, int] = {}
    for (is_h, exp, _uid), u in units.items():
        if len(u.variants) > 1:
            multi[exp] = multi.get(exp, 0) + 1
            continue
        v = next(iter(u.variants))
        if v:  # an empty variant value names no arm
            grouped.setdefault((is_h, exp, v), []).append(u)
    return grouped, multi


def _group_data(us: Sequence[_Unit], metrics: Sequence[Metric]) -> GroupData:
    """One variant's units as numpy arrays, with the request histograms of all and of exposed units."""
    import numpy as np

    def col(values: Iterable[float]) -> Any:
        return np.fromiter(values, dtype=np.float64, count=len(us))

    h_all: dict[int, int] = {}
    h_exp: dict[int, int] = {}
    for u in us:  # the histograms hold the requests of these units: the mean latency's populations
        for b, c in u.hist.items():
            h_all[b] = h_all.get(b, 0) + c
            if u.exposed:
                h_exp[b] = h_exp.get(b, 0) + c
    bins = np.asarray(sorted(h_all), dtype=np.int64)
    ms, mc, cv = {}, {}, {}
    for i, m in enumerate(metrics):
        if m.kind == "conversion":
            cv[m.name] = col(u.metrics[2 * i] for u in us)
        else:
            ms[m.name] = col(u.metrics[2 * i] for u in us)
            mc[m.name] = col(u.metrics[2 * i + 1] for u in us)
    return GroupData(
        col(u.requests for u in us),
        col(u.errors for u in us),
        col(u.latency_ns for u in us) / 1e6,
        np.fromiter((u.exposed for u in us), dtype=bool, count=len(us)),
        col(u.first_ts for u in us) / 1e9,
        ms,
        mc,
        cv,
        bins,
        np.asarray([h_all[b] for b in bins], dtype=np.int64),
        np.asarray([h_exp.get(b, 0) for b in bins], dtype=np.int64),
        col(u.exposed_requests for u in us),
        guarded_requests=col(u.guarded_requests for u in us),
        period=np.fromiter((u.period or 0 for u in us), dtype=np.int64, count=len(us)),
    )


def python_unit_totals(
    spans: Iterable[Span], kind: str, metrics: Sequence[Metric]
) -> tuple[list[str], Any, str | None]:
    """The pure-Python twin of :func:`~fieldlab.analysis.sql.unit_totals_sql`."""
    import numpy as np

    per: dict[str, list[float]] = {}
    hashed = None
    seen: set = set()
    for ok, tid, sid, _ts, dur, server, status_err, attrs in spans:
        if not (ok and tid and server) or not _first_sighting(tid, sid, seen):
            continue
        uid = (attrs.get(A.unit_attr("request")) or tid) if kind == "request" else attrs.get(A.unit_attr(kind), "")
        if not uid:
            continue
        if hashed is None and uid.startswith("h1:"):
            hashed = uid
        u = per.get(uid)
        if u is None:
            u = per[uid] = [0.0] * (3 + 2 * len(metrics))
        code = attrs.get(A.HTTP_STATUS_CODE) or attrs.get(A.HTTP_STATUS_CODE_OLD) or ""
        u[0] += 1
        u[1] += status_err or int64_or_zero(code) >= 500
        u[2] += dur / 1e6
        _add_metrics(u, 3, metrics, attrs)
    ids = list(per)
    return ids, np.asarray([per[i] for i in ids], dtype=np.float64).reshape(len(ids), 3 + 2 * len(metrics)), hashed


def _add_metrics(u: list[float], offset: int, metrics: Sequence[Metric], attrs: Mapping[str, str]) -> None:
    """Fold one span's custom metrics into a unit's running totals, from column ``offset`` on.

    A conversion sets its column to 1 when the attribute has the value; a
    numeric metric adds its value and a count (non-numbers and NaN are skipped).
    """
    for i, m in enumerate(metrics):
        raw = attrs.get(m.attr, "")
        col = offset + 2 * i
        if m.kind == "conversion":
            if raw == m.value:
                u[col] = 1.0
            continue
        try:
            val = float(raw)
        except ValueError:
            continue
        if not math.isnan(val):
            u[col] += val
            u[col + 1] += 1
