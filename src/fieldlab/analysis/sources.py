"""Where spans come from, and the one aggregation every source performs.

fieldlab never needs individual spans for an analysis: it needs, per experiment
and per *unit of randomisation*, how many requests the unit made, how many
failed, their summed latency, whether the unit was exposed, when it was first
seen and its custom-metric sums; plus, per variant, a latency histogram. That
is :class:`Aggregates`, and every source produces exactly it:

* :class:`FileSource` -- OTLP JSON-lines files (the ``opentelemetry-exporter-
  otlp-json-file`` exporter and the Collector's file exporter; plain or gzip;
  files, directories, globs). The default engine is embedded ClickHouse
  (``chdb``): it streams the files and runs the same SQL as a server, and it was
  the fastest engine measured (see ``docs/statistics.md``). Without chdb, a
  streaming pure-Python reader computes identical aggregates, more slowly.
* :class:`ClickHouseSource` -- the Collector's ClickHouse exporter table
  (``otel_traces``) on a server (``clickhouse://`` URL, via clickhouse-connect)
  or on an embedded chdb session. All grouping happens in the database.

Both engines read spans into the same normalised shape (trace id, start time,
duration, server flag, error flag, attribute map) and then run one SQL text
(:func:`aggregate_sql`), so files and tables give the same numbers for the same
spans. Memory is bounded by the per-unit aggregates, never by the span count.
"""

from __future__ import annotations

import glob as _glob
import json
import math
import os
import re
import sys
import time
import urllib.parse
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from .. import attributes as A
from ..errors import FieldLabError

__all__ = [
    "Metric", "parse_metric", "QuerySpec", "GroupData", "ExperimentData", "Aggregates",
    "Source", "FileSource", "ClickHouseSource", "open_source", "aggregate_sql", "file_spans_sql",
    "otel_traces_spans_sql", "unit_totals_sql", "SourceError", "HIST_PER_DECADE", "MAX_LINE_BYTES", "hist_value_ms", "UNIT_FALLBACK_ORDER",
]

#: Latency histogram resolution: bins per factor of ten (200 -> bins 1.16 % wide).
HIST_PER_DECADE = 200
#: Without a configuration the unit kind is unknown: the first of these found on the span is used,
#: and the trace id (kind ``request``) when none is.
UNIT_FALLBACK_ORDER = ("user", "visitor", "session")


class SourceError(FieldLabError):
    """A source cannot be read; the message names the source and the fix."""


def hist_value_ms(bin_index: Any) -> Any:
    """Representative latency in milliseconds (geometric bin centre) of a histogram bin."""
    return 10.0 ** ((bin_index + 0.5) / HIST_PER_DECADE) / 1e6


# --------------------------------------------------------------------------- what to compute


@dataclass(frozen=True)
class Metric:
    """A custom metric read from a SERVER-span attribute.

    ``kind == "mean"``: the attribute's numeric value, averaged over the
    requests that carry it (a ratio metric per unit, analysed with the delta
    method). ``kind == "conversion"``: the share of units with at least one
    request whose attribute equals ``value`` (e.g. ``app.checkout.completed=true``).
    """

    name: str
    attr: str
    kind: str
    value: str | None = None
    higher_is_better: bool = True


def parse_metric(text: str) -> Metric:
    """Parse ``--metric``: ``ATTR`` (numeric mean), ``ATTR=VALUE`` (conversion); a leading ``-``
    means lower is better (``-app.queue.wait_ms``)."""
    raw = text.strip()
    higher = True
    if raw.startswith("-"):
        higher, raw = False, raw[1:]
    if not raw:
        raise ValueError(f"--metric {text!r}: empty attribute name; write --metric app.checkout.completed=true "
                         "or --metric app.cart.value")
    if "=" in raw:
        attr, value = raw.split("=", 1)
        attr, value = attr.strip(), value.strip()
        if not attr or not value:
            raise ValueError(f"--metric {text!r}: a conversion needs ATTR=VALUE, e.g. app.checkout.completed=true")
        return Metric(name=f"{attr}={value}", attr=attr, kind="conversion", value=value, higher_is_better=higher)
    return Metric(name=raw, attr=raw, kind="mean", higher_is_better=higher)


@dataclass(frozen=True)
class QuerySpec:
    """What the aggregation needs: unit kind per experiment (from a config) and custom metrics."""

    unit_kinds: Mapping[str, str] = field(default_factory=dict)
    metrics: tuple[Metric, ...] = ()
    #: holdout key -> the experiments it covers (from a config). A unit held out by a holdout leaves only the
    #: experiments that holdout covers; without a config a variant attribute on the span is taken as an assignment.
    holdout_experiments: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


# --------------------------------------------------------------------------- the aggregates


@dataclass
class GroupData:
    """Per-unit aggregates of one variant (or one holdout group), as numpy arrays of equal length."""

    requests: Any
    errors: Any
    latency_sum_ms: Any
    exposed: Any
    first_seen: Any  # seconds since the epoch
    metric_sums: dict[str, Any]
    metric_counts: dict[str, Any]
    conversions: dict[str, Any]
    hist_bins: Any
    hist_all: Any
    hist_exposed: Any

    @property
    def units(self) -> int:
        return int(len(self.requests))

    def select(self, mask: Any) -> "GroupData":
        """The units where ``mask`` is true (histograms are request-level and are kept)."""
        return GroupData(self.requests[mask], self.errors[mask], self.latency_sum_ms[mask], self.exposed[mask],
                         self.first_seen[mask], {k: v[mask] for k, v in self.metric_sums.items()},
                         {k: v[mask] for k, v in self.metric_counts.items()},
                         {k: v[mask] for k, v in self.conversions.items()},
                         self.hist_bins, self.hist_all, self.hist_exposed)


@dataclass
class ExperimentData:
    """One experiment's per-variant unit aggregates and what was excluded (forced requests, units in two variants)."""

    key: str
    variants: dict[str, GroupData]
    unit_kinds: list[str]
    forced_requests: int = 0
    multi_variant_units: int = 0


@dataclass
class Aggregates:
    """Everything a source hands to the statistics: experiments, holdout groups and reading counters."""

    experiments: dict[str, ExperimentData]
    holdouts: dict[str, GroupData]
    spans: int = 0
    server_spans: int = 0
    malformed_lines: int = 0
    #: lines longer than the reader's cap (``max_line_bytes``), skipped unread
    long_lines: int = 0
    #: ``"path: why"`` for each file that could be read only in part (e.g. a truncated gzip)
    damaged_files: list[str] = field(default_factory=list)
    engine: str = ""
    source: str = ""
    seconds: float = 0.0


# --------------------------------------------------------------------------- SQL


def _lit(s: str) -> str:
    """A ClickHouse string literal."""
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _keep_attrs(spec: QuerySpec, key: str = "k") -> str:
    """ClickHouse lambda body keeping only the attributes the analysis reads (``key`` names the key)."""
    exact = sorted({A.HTTP_STATUS_CODE, A.HTTP_STATUS_CODE_OLD} | {m.attr for m in spec.metrics})
    return f"startsWith({key}, {_lit(A.PREFIX)}) OR {key} IN (" + ", ".join(_lit(k) for k in exact) + ")"


def _with_packed_variants_sql(attrs: str) -> str:
    """``attrs`` (a ClickHouse Map of span attributes) plus the variants held only in ``fieldlab.assignments``.

    When a span's attribute limit left some ``fieldlab.variant.<key>`` out,
    telemetry packs every variant into ``fieldlab.assignments``
    (``key=variant;...``, variant names percent-escaped): this adds each as
    ``fieldlab.variant.<key>``; an individual attribute wins. The SQL twin of
    :func:`_with_packed_variants`.
    """
    pairs = f"arrayFilter(p -> position(p, '=') > 1, splitByChar(';', {attrs}[{_lit(A.ASSIGNMENTS)}]))"
    return (f"if({attrs}[{_lit(A.ASSIGNMENTS)}] = '', {attrs}, mapUpdate(mapFromArrays("
            f"arrayMap(p -> concat({_lit(A.VARIANT_PREFIX)}, substring(p, 1, position(p, '=') - 1)), {pairs}), "
            f"arrayMap(p -> decodeURLComponent(substring(p, position(p, '=') + 1)), {pairs})), {attrs}))")


def _with_packed_variants(attrs: dict[str, str]) -> dict[str, str]:
    """``attrs`` plus the variants held only in ``fieldlab.assignments`` (see :func:`_with_packed_variants_sql`)."""
    packed = attrs.get(A.ASSIGNMENTS)
    if packed:
        for key, variant in A.unpack_assignments(packed).items():
            attrs.setdefault(A.variant_attr(key), variant)
    return attrs


def otel_traces_spans_sql(table: str = "otel_traces", where: str = "", spec: QuerySpec | None = None) -> str:
    """Normalised spans from the Collector ClickHouse exporter's table (both enum spellings)."""
    w = f" WHERE {where}" if where else ""
    keep = _keep_attrs(spec or QuerySpec())
    return (
        "SELECT toUInt8(1) AS line_ok, toString(TraceId) != '' AS has_span, toString(TraceId) AS TraceId, "
        "toString(SpanId) AS SpanId, "
        "toInt64(toUnixTimestamp64Nano(Timestamp)) AS Ts, toFloat64(Duration) AS Dur, "
        "toString(SpanKind) IN ('Server', 'SPAN_KIND_SERVER', '2') AS IsServer, "
        "toString(StatusCode) IN ('Error', 'STATUS_CODE_ERROR', '2') AS StatusError, "
        f"mapFilter((k, v) -> {keep}, CAST(SpanAttributes, 'Map(String, String)')) AS Attrs FROM {table}{w}"
    )


# An AnyValue read as a map ({"stringValue": "x"} -> {'stringValue': 'x'}; numbers and booleans as their JSON
# text): measured ~15 % faster to extract than a four-field tuple.
_VALUE_T = "Map(String, String)"
# The first of these an AnyValue holds is its value, as in the Python reader (_value_str); other kinds are ''.
_ANY_VALUE = ("multiIf(mapContains(a.2, 'stringValue'), a.2['stringValue'], mapContains(a.2, 'boolValue'), "
              "a.2['boolValue'], mapContains(a.2, 'intValue'), a.2['intValue'], mapContains(a.2, 'doubleValue'), "
              "a.2['doubleValue'], '')")
_LINE_T = ("Tuple(resourceSpans Array(Tuple(scopeSpans Array(Tuple(spans Array(Tuple(traceId String, spanId String, kind String, "
           "startTimeUnixNano String, endTimeUnixNano String, attributes Array(Tuple(key String, value "
           + _VALUE_T + ")), status Tuple(code String))))))))")


def file_spans_sql(paths: Sequence[tuple[str, str]], spec: QuerySpec | None = None) -> str:
    """Normalised spans from OTLP JSON-lines files read by ClickHouse's ``file()`` (chdb).

    ``paths`` are ``(path, compression)`` pairs. A line that yields no spans is
    checked with ``isValidJSON``; an invalid line gives one row with
    ``line_ok = 0`` so it is counted, never fatal. Attribute values become
    strings as the ClickHouse exporter stores them (``true``, ``500``, ``1.5``);
    only the attributes the analysis reads are kept.
    """
    reads = " UNION ALL ".join(
        f"SELECT line FROM file({_lit(p)}, 'LineAsString', 'line String', {_lit(c)})" for p, c in paths)
    keep = _keep_attrs(spec or QuerySpec(), "a.1")
    return (
        "SELECT line_ok, sp.traceId != '' AS has_span, sp.traceId AS TraceId, sp.spanId AS SpanId, "
        "toInt64OrZero(sp.startTimeUnixNano) AS Ts, "
        "toFloat64(toInt64OrZero(sp.endTimeUnixNano) - toInt64OrZero(sp.startTimeUnixNano)) AS Dur, "
        "sp.kind IN ('2', 'SPAN_KIND_SERVER') AS IsServer, sp.status.code IN ('2', 'STATUS_CODE_ERROR') AS StatusError, "
        f"arrayFilter(a -> {keep}, sp.attributes) AS kept, "
        f"mapFromArrays(arrayMap(a -> a.1, kept), arrayMap(a -> {_ANY_VALUE}, kept)) AS Attrs "
        f"FROM (SELECT JSONExtract(line, '{_LINE_T}') AS d, "
        # short-circuit OR: only lines that gave no spans are validated; blank lines are not malformed
        "notEmpty(d.resourceSpans) OR (isValidJSON(line) AND JSONType(line) = 'Object') OR trimBoth(line) = '' "
        "AS line_ok, arrayFlatten(arrayMap(rs -> arrayMap(ss -> ss.spans, rs.scopeSpans), d.resourceSpans)) AS spans "
        f"FROM ({reads}) WHERE line != '' AND (notEmpty(spans) OR NOT line_ok)) "
        "LEFT ARRAY JOIN spans AS sp"
    )


def _unit_kind_sql(spec: QuerySpec) -> str:
    inferred = "multiIf(" + ", ".join(
        f"Attrs[{_lit(A.unit_attr(k))}] != '', {_lit(k)}" for k in UNIT_FALLBACK_ORDER) + ", 'request')"
    if not spec.unit_kinds:
        return inferred
    parts = ", ".join(f"exp = {_lit(e)}, {_lit(k)}" for e, k in sorted(spec.unit_kinds.items()))
    return f"multiIf(is_h, {inferred}, {parts}, {inferred})"


def _dedup_sql(spans_sql: str) -> str:
    """The spans with each (trace id, span id) kept once: an exporter's retry or a file read twice repeats
    spans, and a repeated span is one request. Spans without a span id and rows of unreadable lines are kept."""
    return (f"SELECT * FROM ({spans_sql}) LIMIT 1 BY cityHash64(TraceId, SpanId), "
            "if(has_span AND SpanId != '', toUInt64(0), rowNumberInAllBlocks() + 1)")


def _coverage_sql(spec: QuerySpec) -> str:
    """Holdout attribute -> covered experiments, as a ClickHouse map literal."""
    items = ", ".join(
        f"{_lit(A.holdout_attr(h))}, CAST([{', '.join(_lit(e) for e in sorted(es))}], 'Array(String)')"
        for h, es in sorted(spec.holdout_experiments.items()))
    return f"CAST(map({items}), 'Map(String, Array(String))')"


def aggregate_sql(spans_sql: str, spec: QuerySpec) -> str:
    """The one aggregation, over normalised (deduplicated) spans: per unit, then per variant.

    One row per (group, experiment, variant): the per-unit arrays, the latency
    histograms (requests of all analysable units, and requests of exposed
    units: the populations of the mean latency with and without
    ``--all-assigned``), and the span/line totals and per-experiment counts.
    Spans without an experiment collapse into one row (experiment ``''``) that
    carries their totals. A unit keeps its requests' histogram bins as a plain
    array (measured cheaper than a per-unit ``sumMap``), summed per variant.
    """
    vp, hp = A.VARIANT_PREFIX, A.HOLDOUT_PREFIX
    metric_cols, unit_aggs, outer_aggs = [], [], []
    for i, m in enumerate(spec.metrics):
        a = _lit(m.attr)
        if m.kind == "conversion":
            metric_cols.append(f"Attrs[{a}] = {_lit(str(m.value))} AS c{i}")
            unit_aggs.append(f"maxIf(c{i}, nf) AS c{i}_u")
            outer_aggs.append(f"groupArrayIf(toUInt8(c{i}_u), ok_unit) AS a_c{i}")
        else:
            metric_cols.append(f"toFloat64OrNull(Attrs[{a}]) AS m{i}")
            unit_aggs.append(f"sumIf(ifNull(m{i}, 0), nf) AS m{i}_s, countIf(nf AND m{i} IS NOT NULL) AS m{i}_n")
            outer_aggs.append(f"groupArrayIf(m{i}_s, ok_unit) AS a_m{i}_s, groupArrayIf(m{i}_n, ok_unit) AS a_m{i}_n")
    mcols = "".join(", " + c for c in metric_cols)
    uaggs = "".join(", " + c for c in unit_aggs)
    oaggs = "".join(", " + c for c in outer_aggs)
    status_new, status_old = _lit(A.HTTP_STATUS_CODE), _lit(A.HTTP_STATUS_CODE_OLD)
    # a held-out unit's span: its holdout groups, plus the variants of experiments those holdouts do not cover
    keyed = (
        "SELECT *, arrayDistinct(mapKeys(Attrs)) AS ak, "
        "arrayFilter(k -> startsWith(k, " + _lit(hp) + ") AND Attrs[k] = 'true', ak) AS hk, "
        "if(IsServer AND has_span, arrayConcat(hk, arrayFilter(k -> startsWith(k, " + _lit(vp) + ") AND NOT "
        f"arrayExists(h -> has({_coverage_sql(spec)}[h], substring(k, {len(vp) + 1})), hk), ak)), "
        "CAST([], 'Array(String)')) AS keys "
        f"FROM (SELECT * REPLACE ({_with_packed_variants_sql('Attrs')} AS Attrs) FROM (" + _dedup_sql(spans_sql) + "))"
    )
    x = (
        "SELECT line_ok, has_span, IsServer, vk_i, vk != '' AS has_vk, "
        f"startsWith(vk, {_lit(hp)}) AS is_h, "
        f"if(vk = '', '', if(is_h, substring(vk, {len(hp) + 1}), substring(vk, {len(vp) + 1}))) AS exp, "
        "if(is_h, 'holdout', Attrs[vk]) AS variant, "
        f"is_h OR Attrs[concat({_lit(A.EXPOSED_PREFIX)}, exp)] = 'true' AS exposed, "
        f"NOT is_h AND Attrs[concat({_lit(A.FORCED_PREFIX)}, exp)] = 'true' AS forced, "
        f"{_unit_kind_sql(spec)} AS ukind, "
        f"if(NOT has_vk, '', if(ukind = 'request', if(Attrs[{_lit(A.unit_attr('request'))}] != '', "
        f"Attrs[{_lit(A.unit_attr('request'))}], TraceId), Attrs[concat({_lit(A.UNIT_PREFIX)}, ukind)])) AS unit, "
        "has_vk AND unit != '' AND NOT forced AS nf, "
        f"StatusError OR toInt64OrZero(if(Attrs[{status_new}] != '', Attrs[{status_new}], Attrs[{status_old}])) >= 500 "
        "AS IsError, "
        f"if(Dur > 0, toInt32(floor(log10(Dur) * {HIST_PER_DECADE})), toInt32(-1)) AS bin, Ts, Dur{mcols} "
        f"FROM ({keyed}) LEFT ARRAY JOIN keys AS vk, arrayEnumerate(keys) AS vk_i"
    )
    inner = (
        "SELECT is_h, exp, unit, anyIf(variant, nf) AS uvariant, minIf(variant, nf) != maxIf(variant, nf) AS multi, "
        "countIf(nf) AS requests, countIf(nf AND IsError) AS errors, sumIf(Dur, nf) / 1e6 AS lat_ms, "
        "maxIf(exposed, nf) AS uexposed, minIf(Ts, nf) / 1e9 AS first_ts, "
        "countIf(has_vk AND forced) AS n_forced, anyIf(ukind, nf) AS ukind_u, "
        "countIf(vk_i <= 1 AND has_span) AS n_spans, countIf(vk_i <= 1 AND has_span AND IsServer) AS n_server, "
        "countIf(NOT line_ok) AS n_bad, groupArrayIf(bin, nf) AS ubins"
        f"{uaggs} FROM ({x}) GROUP BY is_h, exp, unit"
    )
    return (
        "SELECT is_h, exp, uvariant AS v, countIf(multi AND requests > 0) AS a_multi, "
        "groupArrayIf(requests, ok_unit) AS a_requests, groupArrayIf(errors, ok_unit) AS a_errors, "
        "groupArrayIf(lat_ms, ok_unit) AS a_lat_ms, groupArrayIf(toUInt8(uexposed), ok_unit) AS a_exposed, "
        "groupArrayIf(first_ts, ok_unit) AS a_first_ts, "
        "sumMapIf(ubins, arrayMap(x -> toUInt64(1), ubins), ok_unit) AS a_hist_all, "
        "sumMapIf(ubins, arrayMap(x -> toUInt64(1), ubins), ok_unit AND uexposed) AS a_hist_exposed, "
        "sum(n_forced) AS a_forced, groupUniqArrayIf(ukind_u, requests > 0) AS a_ukinds, "
        "sum(n_spans) AS a_spans, sum(n_server) AS a_server_spans, sum(n_bad) AS a_bad_lines"
        f"{oaggs} FROM (SELECT *, NOT multi AND requests > 0 AND exp != '' AS ok_unit FROM ({inner})) "
        "GROUP BY is_h, exp, v ORDER BY is_h, exp, v"
    )


def unit_totals_sql(spans_sql: str, kind: str, metrics: Sequence[Metric] = ()) -> str:
    """Per-unit totals of SERVER spans for a unit kind, regardless of experiments (the balance check).

    One row: ``ids`` and, per unit, ``requests``, ``errors``, ``lat_ms`` and each
    metric's sums; ``hashed`` counts ``h1:`` ids (which cannot be re-bucketed).
    """
    unit = (f"if(Attrs[{_lit(A.unit_attr('request'))}] != '', Attrs[{_lit(A.unit_attr('request'))}], TraceId)"
            if kind == "request" else f"Attrs[{_lit(A.unit_attr(kind))}]")
    status_new, status_old = _lit(A.HTTP_STATUS_CODE), _lit(A.HTTP_STATUS_CODE_OLD)
    inner_aggs, outer = [], []
    for i, m in enumerate(metrics):
        a = _lit(m.attr)
        if m.kind == "conversion":
            inner_aggs.append(f"max(Attrs[{a}] = {_lit(str(m.value))}) AS m{i}_s, toUInt64(0) AS m{i}_n")
        else:
            inner_aggs.append(f"sum(ifNull(toFloat64OrNull(Attrs[{a}]), 0)) AS m{i}_s, "
                              f"countIf(toFloat64OrNull(Attrs[{a}]) IS NOT NULL) AS m{i}_n")
        outer.append(f"groupArray(m{i}_s) AS a_m{i}_s, groupArray(m{i}_n) AS a_m{i}_n")
    iaggs = "".join(", " + c for c in inner_aggs)
    oaggs = "".join(", " + c for c in outer)
    return (
        "SELECT groupArray(unit) AS a_ids, groupArray(requests) AS a_requests, groupArray(errors) AS a_errors, "
        "groupArray(lat_ms) AS a_lat_ms, countIf(startsWith(unit, 'h1:')) AS a_hashed, "
        f"anyIf(unit, startsWith(unit, 'h1:')) AS a_hashed_example{oaggs} FROM ("
        f"SELECT unit, count() AS requests, countIf(IsError) AS errors, sum(Dur) / 1e6 AS lat_ms{iaggs} FROM ("
        f"SELECT {unit} AS unit, Attrs, Dur, StatusError OR toInt64OrZero(if(Attrs[{status_new}] != '', "
        f"Attrs[{status_new}], Attrs[{status_old}])) >= 500 AS IsError "
        f"FROM ({_dedup_sql(spans_sql)}) WHERE line_ok AND has_span AND IsServer) WHERE unit != '' GROUP BY unit)"
    )


def _unit_totals_from_row(r: Mapping[str, Any], metrics: Sequence[Metric]) -> tuple[list[str], Any, str | None]:
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


def _rows_to_aggregates(rows: Iterable[Mapping[str, Any]], spec: QuerySpec) -> Aggregates:
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
        gd = GroupData(np.asarray(r["a_requests"], dtype=np.float64), np.asarray(r["a_errors"], dtype=np.float64),
                       np.asarray(r["a_lat_ms"], dtype=np.float64), np.asarray(r["a_exposed"], dtype=bool),
                       np.asarray(r["a_first_ts"], dtype=np.float64), ms, mc, cv, bins, hist_all, hist_exposed)
        if is_h:
            holds[exp] = gd
        else:
            exps.setdefault(exp, ExperimentData(exp, {}, [])).variants[v] = gd
    for exp, ks in kinds.items():
        exps[exp].unit_kinds = sorted(ks)
    for key in [k for k, e in exps.items() if not e.variants]:
        del exps[key]
    return out


# --------------------------------------------------------------------------- reading files safely

#: Default cap on one line of a JSON-lines file (16 MiB). A longer line is skipped unread and counted, so the
#: reader's memory never grows with the longest line; the OTLP file exporter writes one export batch per line,
#: well below this. ``FileSource(max_line_bytes=...)`` and ``fieldlab analyze --max-line-bytes`` change it.
MAX_LINE_BYTES = 16 * 1024 * 1024
_CHUNK = 1 << 20
_LONG = object()  # a line over the cap, skipped
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_INT64 = re.compile(r"[+-]?[0-9]+\Z")


class _Damaged(Exception):
    """A file that can be read only up to some point (truncated or corrupt compressed data)."""


def _chunks(path: str, kind: str) -> Iterator[bytes]:
    """The file's (decompressed) bytes in pieces of at most ``_CHUNK``; raises :class:`_Damaged` where the
    compressed stream is truncated or corrupt. Output per step is bounded too (a highly compressible
    member never expands all at once)."""
    with open(path, "rb") as f:
        if kind != "gzip":
            while True:
                raw = f.read(_CHUNK)
                if not raw:
                    return
                yield raw
        d = zlib.decompressobj(wbits=31)
        started = False
        while True:
            raw = f.read(_CHUNK)
            if not raw:
                if started and not d.eof:
                    raise _Damaged("truncated gzip (the file ends inside compressed data)")
                return
            buf = raw
            while True:
                if not started:
                    buf = buf.lstrip(b"\0")  # zero padding after the last member, as gzip(1) accepts
                    if not buf:
                        break
                    started = True
                try:
                    out = d.decompress(buf, _CHUNK)
                except zlib.error as exc:
                    raise _Damaged(f"corrupt gzip data ({exc})") from None
                if out:
                    yield out
                if d.eof:  # a member ended; another may follow (concatenated gzip)
                    buf = d.unused_data
                    d = zlib.decompressobj(wbits=31)
                    started = False
                    continue
                buf = d.unconsumed_tail
                if not buf and len(out) < _CHUNK:
                    break


def _lines(chunks: Iterable[bytes], max_line: int) -> Iterator[Any]:
    """Lines (without the newline) from byte chunks; a line longer than ``max_line`` yields ``_LONG`` once
    and its bytes are dropped as they arrive, never joined."""
    parts: list[bytes] = []
    size = 0
    skipping = False
    for chunk in chunks:
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            end = len(chunk) if nl < 0 else nl
            if not skipping:
                size += end - start
                if size > max_line:
                    parts, skipping = [], True
                    yield _LONG
                elif nl >= 0:
                    yield b"".join(parts) + chunk[start:nl] if parts else chunk[start:nl]
                    parts = []
                elif end > start:
                    parts.append(chunk[start:end])
            if nl < 0:
                break
            skipping, size, start = False, 0, nl + 1
    if parts and not skipping:
        yield b"".join(parts)


def _scan_file(path: str, kind: str, max_line: int) -> str | None:
    """Why embedded ClickHouse cannot read ``path`` line by line (an over-long line, damaged data), or None.

    ClickHouse fails the whole query on a truncated gzip and holds a whole line in memory, so such files are
    read by the Python reader instead, which skips and counts what it cannot use. Reads in bounded chunks.
    """
    if kind == "zstd":
        return None  # only chdb reads zstd; it reports damage itself
    run = 0  # bytes since the last newline
    try:
        for chunk in _chunks(path, kind):
            first = chunk.find(b"\n")
            if first < 0:
                run += len(chunk)
            else:
                if run + first > max_line:
                    return f"a line longer than {max_line} bytes"
                run = len(chunk) - 1 - chunk.rfind(b"\n")
            if run > max_line:
                return f"a line longer than {max_line} bytes"
    except _Damaged as exc:
        return str(exc)
    return None


def _ch_str(x: Any) -> str:
    """A JSON value as ClickHouse's ``JSONExtract(..., 'String')`` gives it, so both engines read alike:
    strings as they are, numbers and booleans as their text, objects and arrays as compact JSON, null as ''."""
    if isinstance(x, str):
        return x
    if x is None:
        return ""
    if x is True or x is False:
        return "true" if x else "false"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if x.is_integer() and abs(x) < 1e21:
            return str(int(x))
        r = repr(x)
        return r.replace("e-0", "e-").replace("e+0", "e").replace("e+", "e")
    return json.dumps(x, separators=(",", ":"), ensure_ascii=False)


def _int64_or_zero(x: Any) -> int:
    """ClickHouse's ``toInt64OrZero`` of the value's text: an integer in the int64 range, else 0."""
    s = _ch_str(x)
    if not _INT64.match(s):
        return 0
    v = int(s)
    return v if -(1 << 63) <= v < (1 << 63) else 0


def _finite_float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"number out of range: {text}")
    return v


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _has_lone_surrogate(doc: Any) -> bool:
    """Whether any string (key or value) holds a lone UTF-16 surrogate (``"\\ud800"``): not valid UTF-8 text."""
    stack = [doc]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            try:
                x.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return False


#: ClickHouse's JSON parser accepts at most this many nested levels; so does the Python reader.
_MAX_JSON_DEPTH = 1024
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def _json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in a JSON text (strings ignored)."""
    depth = deepest = 0
    for b in _JSON_BRACKET.findall(_JSON_STRING.sub("", text)):
        depth += 1 if b in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _parse_deep(text: str) -> Any:
    """A line Python's parser gave up on (about 1000 levels, less on a deep stack): parsed when ClickHouse
    would parse it (at most :data:`_MAX_JSON_DEPTH` levels), else None, so both engines agree."""
    if _json_depth(text) > _MAX_JSON_DEPTH:
        return None
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(limit + 2 * _MAX_JSON_DEPTH)
    try:
        return json.loads(text, parse_float=_finite_float, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return None
    finally:
        sys.setrecursionlimit(limit)


def _parse_line(line: bytes) -> Any:
    """A JSON-lines line as a dict, or None when the line is not a usable JSON object.

    The same lines ClickHouse rejects are rejected: not UTF-8, not JSON, numbers out of range (``1e999``),
    ``NaN``, nesting deeper than the parser allows, lone surrogate escapes, anything but an object.
    """
    try:
        text = line.decode("utf-8")
        doc = json.loads(text, parse_float=_finite_float, parse_constant=_no_constant)
    except ValueError:
        return None
    except RecursionError:
        doc = _parse_deep(text)
        if doc is None:
            return None
    if not isinstance(doc, dict):
        return None
    if _SURROGATE_ESCAPE.search(line) and _has_lone_surrogate(doc):
        return None
    return doc


def _dict(x: Any) -> Mapping[str, Any]:
    return x if isinstance(x, dict) else {}


def _list(x: Any) -> Any:
    """A JSON array, or nothing (a wrong shape is treated as empty, as ClickHouse's JSONExtract does)."""
    return x if isinstance(x, list) else ()


def _value_str(v: Any) -> str:
    """An OTLP AnyValue as the ClickHouse exporter stores it: a string (the first of string, bool, int,
    double it holds; arrays, maps and bytes are '')."""
    if not isinstance(v, dict):
        return ""
    for k in ("stringValue", "boolValue", "intValue", "doubleValue"):
        if k in v:
            return _ch_str(v[k])
    return ""


def _walk_spans(doc: Mapping[str, Any]) -> Iterator[tuple]:
    """``(True, trace_id, span_id, ts, dur, is_server, status_error, attrs)`` per span; a wrong-typed field
    reads as ClickHouse reads it (see :func:`_ch_str`), a wrong-shaped element is skipped, never the line."""
    for rs in _list(doc.get("resourceSpans")):
        for ss in _list(_dict(rs).get("scopeSpans")):
            for sp in _list(_dict(ss).get("spans")):
                if not isinstance(sp, dict):
                    continue
                start = _int64_or_zero(sp.get("startTimeUnixNano"))
                end = _int64_or_zero(sp.get("endTimeUnixNano"))
                attrs: dict[str, str] = {}
                for a in _list(sp.get("attributes")):
                    if isinstance(a, dict):
                        key = _ch_str(a.get("key"))
                        if key not in attrs:  # the first of repeated keys, as ClickHouse's map lookup
                            attrs[key] = _value_str(a.get("value"))
                yield (True, _ch_str(sp.get("traceId")), _ch_str(sp.get("spanId")), start, float(end - start),
                       _ch_str(sp.get("kind")) in ("2", "SPAN_KIND_SERVER"),
                       _ch_str(_dict(sp.get("status")).get("code")) in ("2", "STATUS_CODE_ERROR"),
                       _with_packed_variants(attrs))


def _span_key(tid: str, sid: str, seen: set) -> bool:
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


def _python_aggregate(spans: Iterable[tuple], spec: QuerySpec) -> Aggregates:
    """The pure-Python twin of :func:`aggregate_sql` (same definitions, same results)."""
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
        if not tid or not _span_key(tid, sid, seen):
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
        is_err = status_err or _int64_or_zero(code) >= 500
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


# --------------------------------------------------------------------------- sources


class Source:
    """A place spans can be aggregated from: ``aggregate(spec) -> Aggregates``."""

    description = "source"

    def aggregate(self, spec: QuerySpec, progress: Callable[[str], None] | None = None) -> Aggregates:
        raise NotImplementedError

    def unit_totals(self, kind: str, metrics: Sequence[Metric] = ()) -> tuple[list[str], Any, str | None]:
        """Per-unit totals of every SERVER span for unit ``kind`` (for the balance check).

        Returns ``(ids, matrix, hashed_example)``: the matrix has one row per unit,
        ``[requests, errors, latency ms, metric sum, metric count, ...]``; a conversion
        metric's "sum" is 1 when any request matched. ``hashed_example`` is an
        ``h1:`` id when the spans carry hashed ids, else None.
        """
        raise NotImplementedError  # pragma: no cover - overridden


def _expand_paths(specs: Sequence[str]) -> list[str]:
    files: list[str] = []
    for spec in specs:
        spec = os.fspath(spec)
        if os.path.isdir(spec):
            found = sorted(os.path.join(root, f) for root, _, names in os.walk(spec) for f in names
                           if f.endswith((".json", ".jsonl", ".ndjson", ".json.gz", ".jsonl.gz", ".ndjson.gz", ".json.zst", ".jsonl.zst")))
            if not found:
                raise SourceError(f"{spec}: the directory holds no .json/.jsonl/.ndjson files (plain, .gz or .zst); "
                                  "point at the file exporter's output directory or pass the files")
            files.extend(found)
        elif any(ch in spec for ch in "*?["):
            found = sorted(p for p in _glob.glob(spec, recursive=True) if os.path.isfile(p))
            if not found:
                raise SourceError(f"{spec}: the pattern matches no files; check the path or quote the glob")
            files.extend(found)
        elif os.path.isfile(spec):
            files.append(spec)
        else:
            raise SourceError(f"{spec}: no such file or directory; pass OTLP JSON-lines files, a directory, "
                              "a glob, or a clickhouse:// URL")
    return files


def _compression(path: str) -> str:
    """``gzip``, ``zstd`` (the Collector file exporter's ``compression: zstd``) or ``none``, by content."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head == b"\x28\xb5\x2f\xfd":
        return "zstd"
    return "none"


def _is_gzip(path: str) -> bool:
    return _compression(path) == "gzip"


def _chdb_available() -> bool:
    try:
        import chdb  # noqa: F401
    except Exception:
        return False
    return True


def _chdb_rows(sql: str) -> list[dict[str, Any]]:
    import chdb

    # storage_file_read_method = 'read': chdb would otherwise mmap the files, and the mapped pages count
    # as the process's memory (peak RSS grew with the file size in the benchmark).
    res = chdb.query(sql + " SETTINGS output_format_json_quote_64bit_integers = 0, "
                     "output_format_json_quote_denormals = 0, storage_file_read_method = 'read'", "JSONEachRow")
    # surrogateescape: ClickHouse passes a stored id's bytes through even when they are not UTF-8
    text = res.bytes().decode("utf-8", "surrogateescape") if hasattr(res, "bytes") else str(res)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class FileSource(Source):
    """OTLP JSON-lines files: paths, directories and globs; gzip detected by content.

    ``engine``: ``"chdb"`` (embedded ClickHouse, default when installed),
    ``"python"`` (streaming ``json`` reader, no dependency) or ``"auto"``.
    ``max_line_bytes``: longer lines are skipped unread and counted (:data:`MAX_LINE_BYTES`).

    Bad input never stops a read: unusable lines are counted (``malformed_lines``), over-long lines too
    (``long_lines``), and a file that ends early or holds corrupt compressed data is read up to the
    damage and named in ``damaged_files``. A file that cannot be opened at all raises :class:`SourceError`.
    Embedded ClickHouse would fail the whole query on a damaged file and hold an over-long line in memory,
    so when a quick bounded pre-scan finds either, the Python reader reads the files instead (the result's
    ``engine`` says so); both readers count every line the same way.
    """

    def __init__(self, paths: Sequence[str] | str, engine: str = "auto", max_line_bytes: int = MAX_LINE_BYTES) -> None:
        if isinstance(paths, (str, os.PathLike)):
            paths = [os.fspath(paths)]
        self.paths = _expand_paths([os.fspath(p) for p in paths])
        if engine not in ("auto", "chdb", "python"):
            raise SourceError(f"engine {engine!r} is unknown; use auto, chdb or python")
        if engine == "chdb" and not _chdb_available():
            raise SourceError("engine chdb: the chdb package is not installed; pip install chdb, or use --engine python")
        if not isinstance(max_line_bytes, int) or max_line_bytes < 1024:
            raise SourceError(f"max_line_bytes {max_line_bytes!r}: give a whole number of bytes of at least 1024 "
                              f"(default {MAX_LINE_BYTES})")
        self.max_line_bytes = max_line_bytes
        self.requested_engine = engine
        self.engine = "chdb" if engine == "auto" and _chdb_available() else ("python" if engine == "auto" else engine)
        if self.engine == "chdb" and any(ch in p for p in self.paths for ch in "*?{}[]"):
            # ClickHouse's file() would read these characters as a glob; the Python reader takes names literally.
            if engine == "chdb":
                raise SourceError("a file name contains one of * ? { } [ ], which embedded ClickHouse reads as a "
                                  "glob; rename the file or use --engine python")
            self.engine = "python"
        self.description = ", ".join(self.paths) if len(self.paths) <= 3 else f"{len(self.paths)} files"

    def _kinds(self) -> list[tuple[str, str]]:
        """``(absolute path, compression)`` per file; a file that cannot be opened is a SourceError."""
        out = []
        for p in self.paths:
            try:
                out.append((os.path.abspath(p), _compression(p)))
            except OSError as exc:
                raise SourceError(f"{p}: cannot read the file ({exc.strerror or exc}); check its permissions") from None
        return out

    def _chdb_obstacle(self, pairs: Sequence[tuple[str, str]]) -> str | None:
        """Why embedded ClickHouse cannot read these files safely (see :func:`_scan_file`), or None."""
        for path, kind in pairs:
            try:
                why = _scan_file(path, kind, self.max_line_bytes)
            except OSError as exc:
                raise SourceError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
            if why:
                return f"{path}: {why}"
        return None

    def aggregate(self, spec: QuerySpec, progress: Callable[[str], None] | None = None) -> Aggregates:
        t0 = time.perf_counter()
        pairs = self._kinds()
        engine = self.engine
        if engine == "chdb":
            obstacle = self._chdb_obstacle(pairs)
            if obstacle:
                if any(c == "zstd" for _, c in pairs):
                    raise SourceError(f"{obstacle}; the Python reader cannot read the zstd files next to it: "
                                      "decompress them or analyse the damaged file separately")
                engine = f"python (embedded ClickHouse cannot skip {obstacle})"
        if engine == "chdb":
            if progress:
                total = sum(os.path.getsize(p) for p in self.paths)
                progress(f"reading {len(self.paths)} file(s), {total / 1e6:.1f} MB, with embedded ClickHouse ...")
            ticker = _Ticker(progress, f"reading {self.description} with embedded ClickHouse") if progress else None
            try:
                rows = _chdb_rows(aggregate_sql(file_spans_sql(pairs, spec), spec))
            except Exception as exc:  # chdb raises its own error type
                why = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
                if self.requested_engine != "auto" or any(c == "zstd" for _, c in pairs):
                    raise SourceError(f"{self.description}: embedded ClickHouse failed: {why}; "
                                      "try --engine python") from None
                # e.g. the process already holds a chdb session on another path: read with Python instead
                agg = self._python(spec, progress)
                agg.engine, agg.source, agg.seconds = f"python (chdb unavailable: {why})", self.description, \
                    time.perf_counter() - t0
                return agg
            finally:
                if ticker:
                    ticker.stop()
            agg = _rows_to_aggregates(rows, spec)
        else:
            agg = self._python(spec, progress)
        agg.engine, agg.source, agg.seconds = engine, self.description, time.perf_counter() - t0
        return agg

    def _python(self, spec: QuerySpec, progress: Callable[[str], None] | None) -> Aggregates:
        counts: dict[str, Any] = {"long": 0, "damaged": []}
        agg = _python_aggregate(self._iter_spans(progress, counts), spec)
        agg.long_lines, agg.damaged_files = counts["long"], counts["damaged"]
        return agg

    # -- the streaming pure-Python reader (fallback engine and reference implementation)

    def _iter_spans(self, progress: Callable[[str], None] | None = None,
                    counts: dict[str, Any] | None = None) -> Iterator[tuple]:
        """Yield ``(line_ok, trace_id, span_id, ts, dur, is_server, status_error, attrs)``; a bad line yields
        line_ok False. Over-long lines and damaged files go into ``counts`` (``long``, ``damaged``)."""
        counts = counts if counts is not None else {"long": 0, "damaged": []}
        total = sum(os.path.getsize(p) for p in self.paths) or 1
        done = 0
        last = time.monotonic()
        bad: tuple = (False, "", "", 0, 0.0, False, False, {})
        for path, kind in self._kinds():
            if kind == "zstd":
                raise SourceError(f"{path}: zstd-compressed; the Python reader cannot read zstd: install chdb "
                                  "(the default engine reads it) or decompress the file")
            size = os.path.getsize(path)
            read = 0
            try:
                for line in _lines(_chunks(path, kind), self.max_line_bytes):
                    if line is _LONG:
                        counts["long"] += 1
                        continue
                    read += len(line) + 1
                    if progress and time.monotonic() - last > 0.5:
                        last = time.monotonic()
                        progress(f"read {100 * (done + min(read, size)) / total:5.1f}% of {self.description}")
                    if not line.strip(b" "):
                        continue
                    doc = _parse_line(line)
                    if doc is None:
                        yield bad
                        continue
                    yield from _walk_spans(doc)
            except _Damaged as exc:
                counts["damaged"].append(f"{path}: {exc}")
            except OSError as exc:
                raise SourceError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
            done += size

    def unit_totals(self, kind: str, metrics: Sequence[Metric] = ()) -> tuple[list[str], Any, str | None]:
        """See :meth:`Source.unit_totals`; over-long lines and damaged files read are left in
        :attr:`last_read` (``{"long": n, "damaged": [...]}``) for the caller to report."""
        pairs = self._kinds()
        self.last_read: dict[str, Any] = {"long": 0, "damaged": []}
        if self.engine == "chdb" and not self._chdb_obstacle(pairs):
            spec = QuerySpec(metrics=tuple(metrics))
            try:
                rows = _chdb_rows(unit_totals_sql(file_spans_sql(pairs, spec), kind, metrics))
            except Exception as exc:
                if self.requested_engine == "auto":
                    return _python_unit_totals(self._iter_spans(None, self.last_read), kind, metrics)
                raise SourceError(f"{self.description}: embedded ClickHouse failed: {str(exc).splitlines()[0][:300]}; "
                                  "try --engine python") from None
            return _unit_totals_from_row(rows[0], metrics)
        return _python_unit_totals(self._iter_spans(None, self.last_read), kind, metrics)


def _python_unit_totals(spans: Iterable[tuple], kind: str, metrics: Sequence[Metric]) -> tuple[list[str], Any, str | None]:
    """The pure-Python twin of :func:`unit_totals_sql`."""
    import numpy as np

    per: dict[str, list[float]] = {}
    hashed = None
    seen: set = set()
    for ok, tid, sid, ts, dur, server, status_err, attrs in spans:
        if not (ok and tid and server) or not _span_key(tid, sid, seen):
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
        u[1] += status_err or _int64_or_zero(code) >= 500
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


class ClickHouseSource(Source):
    """The Collector ClickHouse exporter's ``otel_traces`` table; all aggregation runs in the database.

    ``ClickHouseSource("clickhouse://user:pass@host:8123/db?table=otel_traces")`` connects with
    clickhouse-connect; ``ClickHouseSource.from_chdb(session, "db.otel_traces")`` runs the same SQL
    on an embedded chdb session (tests, local copies).
    """

    def __init__(self, url: str | None = None, *, table: str | None = None,
                 runner: Callable[[str], list[dict[str, Any]]] | None = None, where: str = "") -> None:
        self.where = where
        if runner is not None:
            self._run = runner
            self.table = table or "otel_traces"
            self.description = f"chdb:{self.table}"
            return
        if not url:
            raise SourceError("ClickHouseSource needs a clickhouse:// URL")
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("clickhouse", "clickhouses", "http", "https"):
            raise SourceError(f"{url}: not a ClickHouse URL; write clickhouse://user:password@host:8123/database")
        q = urllib.parse.parse_qs(u.query)
        database = u.path.strip("/") or "default"
        self.table = table or q.get("table", ["otel_traces"])[0]
        if "." not in self.table:
            self.table = f"{database}.{self.table}"
        try:
            import clickhouse_connect
        except ImportError:
            raise SourceError("clickhouse:// sources need clickhouse-connect; pip install 'fieldlab[clickhouse]'") from None
        secure = u.scheme in ("clickhouses", "https")
        try:
            client = clickhouse_connect.get_client(
                host=u.hostname or "localhost", port=u.port or (8443 if secure else 8123),
                username=urllib.parse.unquote(u.username or "default"),
                password=urllib.parse.unquote(u.password or ""), database=database, secure=secure)
        except Exception as exc:
            raise SourceError(f"{u.hostname}:{u.port or 8123}: cannot connect to ClickHouse ({exc}); "
                              "check the host, port (HTTP interface, 8123) and credentials") from None

        def run(sql: str) -> list[dict[str, Any]]:
            return list(client.query(sql).named_results())

        self._run = run
        self.description = f"clickhouse:{u.hostname}/{self.table}"

    @classmethod
    def from_chdb(cls, session: Any, table: str = "otel_traces", where: str = "") -> "ClickHouseSource":
        """The same SQL on an embedded chdb session (``chdb.session.Session``)."""

        def run(sql: str) -> list[dict[str, Any]]:
            res = session.query(sql + " SETTINGS output_format_json_quote_64bit_integers = 0", "JSONEachRow")
            text = res.bytes().decode("utf-8", "surrogateescape") if hasattr(res, "bytes") else str(res)
            return [json.loads(line) for line in text.splitlines() if line.strip()]

        return cls(table=table, runner=run, where=where)

    def aggregate(self, spec: QuerySpec, progress: Callable[[str], None] | None = None) -> Aggregates:
        t0 = time.perf_counter()
        if progress:
            progress(f"aggregating {self.table} in ClickHouse ...")
        try:
            rows = self._run(aggregate_sql(otel_traces_spans_sql(self.table, self.where, spec), spec))
        except SourceError:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise SourceError(f"{self.description}: query failed: {first}; check that the table has the "
                              "Collector ClickHouse exporter schema (SpanAttributes, Duration, StatusCode, SpanKind)") from None
        agg = _rows_to_aggregates(rows, spec)
        agg.engine, agg.source, agg.seconds = "clickhouse", self.description, time.perf_counter() - t0
        return agg

    def unit_totals(self, kind: str, metrics: Sequence[Metric] = ()) -> tuple[list[str], Any, str | None]:
        spec = QuerySpec(metrics=tuple(metrics))
        try:
            rows = self._run(unit_totals_sql(otel_traces_spans_sql(self.table, self.where, spec), kind, metrics))
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise SourceError(f"{self.description}: query failed: {first}") from None
        return _unit_totals_from_row(rows[0], metrics)


def open_source(spec: str | Sequence[str] | Source, engine: str = "auto",
                max_line_bytes: int = MAX_LINE_BYTES) -> Source:
    """A source from what a user typed: a ``clickhouse://`` URL, or files/directories/globs."""
    if isinstance(spec, Source):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        spec = [os.fspath(spec)]
    spec = list(spec)
    urls = [s for s in spec if isinstance(s, str) and "://" in s]
    if urls:
        if len(spec) != 1:
            raise SourceError("give either one clickhouse:// URL or files, not both")
        return ClickHouseSource(urls[0])
    if not spec:
        raise SourceError("no source given; pass OTLP JSON-lines files, a directory, a glob or a clickhouse:// URL")
    return FileSource(spec, engine=engine, max_line_bytes=max_line_bytes)


class _Ticker:
    """Elapsed-time progress on stderr while a single database query runs (chdb reports no fraction)."""

    def __init__(self, show: Callable[[str], None], what: str) -> None:
        import threading

        self._stop = threading.Event()
        self._t0 = time.monotonic()

        def run() -> None:
            while not self._stop.wait(0.5):
                show(f"{what}: {time.monotonic() - self._t0:5.1f} s")

        self._thread = threading.Thread(target=run, name="fieldlab-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _progress_printer(enabled: bool) -> Callable[[str], None] | None:
    if not enabled:
        return None

    def show(msg: str) -> None:
        sys.stderr.write("\r" + msg[:100].ljust(100))
        sys.stderr.flush()

    return show
