"""Decoding the rows of the analysis SQL (:mod:`fieldlab.analysis.sql`) into numpy-backed aggregates.

Whatever ran the query (embedded chdb, a ClickHouse server), its rows arrive as dicts of plain JSON values;
:func:`rows_to_aggregates` turns :func:`~fieldlab.analysis.sql.aggregate_sql` rows into :class:`Aggregates` and
:func:`unit_totals_from_row` the one row of :func:`~fieldlab.analysis.sql.unit_totals_sql` into a unit matrix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .model import Aggregates, ExperimentData, GroupData, Metric, QuerySpec

__all__ = ["rows_to_aggregates", "unit_totals_from_row"]


def unit_totals_from_row(r: Mapping[str, Any], metrics: Sequence[Metric]) -> tuple[list[str], Any, str | None]:
    import numpy as np

    cols = [r["a_requests"], r["a_errors"], r["a_lat_ms"]]
    for i in range(len(metrics)):
        cols += [[float(x) for x in r[f"a_m{i}_s"]], r[f"a_m{i}_n"]]
    ids = [str(u) for u in r["a_ids"]]
    mat = np.asarray(cols, dtype=np.float64).T.reshape(len(ids), 3 + 2 * len(metrics))
    return ids, mat, (str(r["a_hashed_example"]) if int(r["a_hashed"]) else None)


def _hist_pair(x: Any) -> tuple[Any, Any]:
    """A ``sumMap`` result (``[keys, values]`` or a dict) as two int64 numpy arrays sorted by key."""
    import numpy as np

    if isinstance(x, Mapping):
        keys, vals = list(x.get("1", ())), list(x.get("2", ()))
    else:
        keys, vals = (list(x[0]), list(x[1])) if x else ([], [])
    bins = np.asarray(keys, dtype=np.int64)
    counts = np.asarray(vals, dtype=np.int64)
    order = np.argsort(bins, kind="stable")
    return bins[order], counts[order]


def rows_to_aggregates(rows: Iterable[Mapping[str, Any]], spec: QuerySpec) -> Aggregates:
    """Turn :func:`aggregate_sql` rows into numpy-backed :class:`Aggregates`."""
    import numpy as np

    exps: dict[str, ExperimentData] = {}
    holds: dict[str, GroupData] = {}
    out = Aggregates(exps, holds)
    kinds: dict[str, set] = {}
    for r in rows:
        is_h, exp, v = bool(r["is_h"]), str(r["exp"]), str(r["v"])
        out.spans += int(r["a_spans"])
        out.server_spans += int(r["a_server_spans"])
        out.malformed_lines += int(r["a_bad_lines"])
        if not exp:
            continue
        if not is_h:
            e = exps.setdefault(exp, ExperimentData(exp, {}, []))
            e.forced_requests += int(r["a_forced"])
            e.multi_variant_units += int(r["a_multi"])
            kinds.setdefault(exp, set()).update(str(k) for k in r["a_ukinds"] if k)
        if not v or not len(r["a_requests"]):
            continue
        bins, hist_all = _hist_pair(r["a_hist_all"])
        ebins, ecounts = _hist_pair(r["a_hist_exposed"])
        hist_exposed = np.zeros(len(bins), dtype=np.int64)
        if len(ebins):  # the exposed units' bins are a subset of all units' bins
            hist_exposed[np.searchsorted(bins, ebins)] = ecounts
        ms, mc, cv = {}, {}, {}
        for i, m in enumerate(spec.metrics):
            if m.kind == "conversion":
                cv[m.name] = np.asarray(r[f"a_c{i}"], dtype=np.float64)
            else:
                ms[m.name] = np.asarray([0.0 if x is None else x for x in r[f"a_m{i}_s"]], dtype=np.float64)
                mc[m.name] = np.asarray(r[f"a_m{i}_n"], dtype=np.float64)
        gd = GroupData(
            np.asarray(r["a_requests"], dtype=np.float64),
            np.asarray(r["a_errors"], dtype=np.float64),
            np.asarray(r["a_lat_ms"], dtype=np.float64),
            np.asarray(r["a_exposed"], dtype=bool),
            np.asarray(r["a_first_ts"], dtype=np.float64),
            ms,
            mc,
            cv,
            bins,
            hist_all,
            hist_exposed,
            np.asarray(r["a_exposed_requests"], dtype=np.float64),
            guarded_requests=np.asarray(r.get("a_guarded_requests") or [0] * len(r["a_requests"]), dtype=np.float64),
            period=np.asarray(r["a_period"], dtype=np.int64),
        )
        if is_h:
            holds[exp] = gd
        else:
            exps.setdefault(exp, ExperimentData(exp, {}, [])).variants[v] = gd
    for exp, ks in kinds.items():
        exps[exp].unit_kinds = sorted(ks)
    for key in [k for k, e in exps.items() if not e.variants]:
        del exps[key]
    return out
