"""The pure-Python engine: the twin of the analysis SQL over :class:`~.model.Span` s, with the same results.

Used when embedded ClickHouse (chdb) is not installed or cannot read a file safely, and as the reference the
SQL is tested against. :func:`python_aggregate` is :func:`~fieldlab.analysis.sql.aggregate_sql`,
:func:`python_unit_totals` is :func:`~fieldlab.analysis.sql.unit_totals_sql`: same definitions (SERVER spans,
repeated spans once, forced requests and units seen in two variants left out), same numbers.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

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


def python_aggregate(spans: Iterable[Span], spec: QuerySpec) -> Aggregates:
    """The pure-Python twin of :func:`~fieldlab.analysis.sql.aggregate_sql` (same definitions, same results)."""
    import numpy as np

    vp, hp = A.VARIANT_PREFIX, A.HOLDOUT_PREFIX
    cover = {A.holdout_attr(h): set(es) for h, es in spec.holdout_experiments.items()}
    units: dict[tuple[bool, str, str], list] = {}
    forced: dict[str, int] = {}
    kinds: dict[str, set] = {}
    seen: set = set()
    n_spans = n_server = n_bad = 0
    nm = len(spec.metrics)
    for ok, tid, sid, ts, dur, server, status_err, attrs in spans:
        if not ok:
            n_bad += 1
            continue
        if not tid or not _first_sighting(tid, sid, seen):
            continue
        n_spans += 1
        if not server:
            continue
        n_server += 1
        hk = [k for k, v in attrs.items() if k.startswith(hp) and v == "true"]
        covered = set().union(*(cover.get(h, ()) for h in hk)) if hk and cover else ()
        keys = hk + [k for k in attrs if k.startswith(vp) and k[len(vp):] not in covered]
        if not keys:
            continue
        code = attrs.get(A.HTTP_STATUS_CODE) or attrs.get(A.HTTP_STATUS_CODE_OLD) or ""
        is_err = status_err or int64_or_zero(code) >= 500
        b = int(math.floor(math.log10(dur) * HIST_PER_DECADE)) if dur > 0 else -1
        for vk in keys:
            is_h = vk.startswith(hp)
            exp = vk[len(hp):] if is_h else vk[len(vp):]
            variant = "holdout" if is_h else attrs[vk]
            exposed = is_h or attrs.get(A.exposed_attr(exp)) == "true"
            if not is_h and attrs.get(A.forced_attr(exp)) == "true":
                forced[exp] = forced.get(exp, 0) + 1
                continue
            kind = spec.unit_kinds.get(exp) if not is_h else None
            if kind is None:
                kind = next((k for k in UNIT_FALLBACK_ORDER if attrs.get(A.unit_attr(k))), "request")
            uid = (attrs.get(A.unit_attr("request")) or tid) if kind == "request" else attrs.get(A.unit_attr(kind), "")
            if not uid:
                continue
            if not is_h:
                kinds.setdefault(exp, set()).add(kind)
            key = (is_h, exp, uid)
            u = units.get(key)
            if u is None:
                # variants seen, requests, errors, latency ms, exposed, first ts, histogram, metric slots...
                u = units[key] = [{variant}, 0, 0, 0.0, False, ts, {}, *([0.0] * (2 * nm))]
            else:
                u[0].add(variant)
            u[1] += 1
            u[2] += is_err
            u[3] += dur
            u[4] = u[4] or exposed
            u[5] = min(u[5], ts)
            u[6][b] = u[6].get(b, 0) + 1
            _add_metrics(u, 7, spec.metrics, attrs)
    grouped: dict[tuple[bool, str, str], list] = {}
    multi: dict[str, int] = {}
    for (is_h, exp, uid), u in units.items():
        if len(u[0]) > 1:
            multi[exp] = multi.get(exp, 0) + 1
            continue
        v = next(iter(u[0]))
        if v:  # an empty variant value names no arm
            grouped.setdefault((is_h, exp, v), []).append(u)
    exps: dict[str, ExperimentData] = {}
    holds: dict[str, GroupData] = {}
    for (is_h, exp, v), us in sorted(grouped.items()):
        arr = np.asarray([u[1:6] + u[7:] for u in us], dtype=np.float64)
        h_all: dict[int, int] = {}
        h_exp: dict[int, int] = {}
        for u in us:  # the histograms hold the requests of these units: the mean latency's populations
            for b, c in u[6].items():
                h_all[b] = h_all.get(b, 0) + c
                if u[4]:
                    h_exp[b] = h_exp.get(b, 0) + c
        bins = np.asarray(sorted(h_all), dtype=np.int64)
        ms, mc, cv = {}, {}, {}
        for i, m in enumerate(spec.metrics):
            if m.kind == "conversion":
                cv[m.name] = arr[:, 5 + 2 * i]
            else:
                ms[m.name] = arr[:, 5 + 2 * i]
                mc[m.name] = arr[:, 6 + 2 * i]
        gd = GroupData(arr[:, 0], arr[:, 1], arr[:, 2] / 1e6, arr[:, 3].astype(bool), arr[:, 4] / 1e9, ms, mc, cv,
                       bins, np.asarray([h_all[b] for b in bins], dtype=np.int64),
                       np.asarray([h_exp.get(b, 0) for b in bins], dtype=np.int64))
        if is_h:
            holds[exp] = gd
        else:
            e = exps.setdefault(exp, ExperimentData(exp, {}, sorted(kinds.get(exp, ()))))
            e.variants[v] = gd
    for exp, ed in exps.items():
        ed.forced_requests = forced.get(exp, 0)
        ed.multi_variant_units = multi.get(exp, 0)
    return Aggregates(exps, holds, n_spans, n_server, n_bad)



def python_unit_totals(spans: Iterable[Span], kind: str, metrics: Sequence[Metric]) -> tuple[list[str], Any, str | None]:
    """The pure-Python twin of :func:`~fieldlab.analysis.sql.unit_totals_sql`."""
    import numpy as np

    per: dict[str, list[float]] = {}
    hashed = None
    seen: set = set()
    for ok, tid, sid, ts, dur, server, status_err, attrs in spans:
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


def _add_metrics(u: list, offset: int, metrics: Sequence[Metric], attrs: Mapping[str, str]) -> None:
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

