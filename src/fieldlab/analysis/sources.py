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
import gzip
import json
import math
import os
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from .. import attributes as A
from ..errors import FieldLabError

__all__ = [
    "Metric", "parse_metric", "QuerySpec", "GroupData", "ExperimentData", "Aggregates",
    "Source", "FileSource", "ClickHouseSource", "open_source", "aggregate_sql", "file_spans_sql",
    "otel_traces_spans_sql", "unit_totals_sql", "SourceError", "HIST_PER_DECADE", "hist_value_ms", "UNIT_FALLBACK_ORDER",
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


def otel_traces_spans_sql(table: str = "otel_traces", where: str = "", spec: QuerySpec | None = None) -> str:
    """Normalised spans from the Collector ClickHouse exporter's table (both enum spellings)."""
    w = f" WHERE {where}" if where else ""
    keep = _keep_attrs(spec or QuerySpec())
    return (
        "SELECT toUInt8(1) AS line_ok, toUInt8(1) AS has_span, toString(TraceId) AS TraceId, "
        "toInt64(toUnixTimestamp64Nano(Timestamp)) AS Ts, toFloat64(Duration) AS Dur, "
        "toString(SpanKind) IN ('Server', 'SPAN_KIND_SERVER', '2') AS IsServer, "
        "toString(StatusCode) IN ('Error', 'STATUS_CODE_ERROR', '2') AS StatusError, "
        f"mapFilter((k, v) -> {keep}, CAST(SpanAttributes, 'Map(String, String)')) AS Attrs FROM {table}{w}"
    )


# An AnyValue read as a map ({"stringValue": "x"} -> {'stringValue': 'x'}; numbers and booleans as their JSON
# text): measured ~15 % faster to extract than a four-field tuple.
_VALUE_T = "Map(String, String)"
_LINE_T = ("Tuple(resourceSpans Array(Tuple(scopeSpans Array(Tuple(spans Array(Tuple(traceId String, kind String, "
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
        "SELECT line_ok, sp.traceId != '' AS has_span, sp.traceId AS TraceId, "
        "toInt64OrZero(sp.startTimeUnixNano) AS Ts, "
        "toFloat64(toInt64OrZero(sp.endTimeUnixNano) - toInt64OrZero(sp.startTimeUnixNano)) AS Dur, "
        "sp.kind IN ('2', 'SPAN_KIND_SERVER') AS IsServer, sp.status.code IN ('2', 'STATUS_CODE_ERROR') AS StatusError, "
        f"arrayFilter(a -> {keep}, sp.attributes) AS kept, "
        "mapFromArrays(arrayMap(a -> a.1, kept), arrayMap(a -> arrayStringConcat(mapValues(a.2)), kept)) AS Attrs "
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


def aggregate_sql(spans_sql: str, spec: QuerySpec) -> str:
    """The one aggregation, over normalised spans, in a single pass (two ``GROUPING SETS``).

    Result rows, told apart by ``gset``: 1 = per-unit arrays per (group,
    experiment, variant), plus the span/line totals and per-experiment counts;
    2 = the latency histogram per (group, experiment, variant). Spans without
    an experiment collapse into one row (experiment ``''``) that carries their
    totals.
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
    keyed = (
        "SELECT *, arrayFilter(k -> startsWith(k, " + _lit(hp) + ") AND Attrs[k] = 'true', mapKeys(Attrs)) AS hk, "
        "if(IsServer, if(notEmpty(hk), hk, arrayFilter(k -> startsWith(k, " + _lit(vp) + "), mapKeys(Attrs))), "
        "CAST([], 'Array(String)')) AS keys FROM (" + spans_sql + ")"
    )
    x = (
        "SELECT line_ok, has_span, IsServer, vk_i, vk != '' AS has_vk, "
        f"startsWith(vk, {_lit(hp)}) AS is_h, "
        f"if(vk = '', '', if(is_h, substring(vk, {len(hp) + 1}), substring(vk, {len(vp) + 1}))) AS exp, "
        # intent-to-treat: a request served control because its variant was paused (fieldlab.guardrail.<key>)
        # counts in the variant the unit was assigned
        f"if(is_h, 'holdout', if(Attrs[concat({_lit(A.GUARDRAIL_PREFIX)}, exp)] != '', "
        f"Attrs[concat({_lit(A.GUARDRAIL_PREFIX)}, exp)], Attrs[vk])) AS variant, "
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
        "SELECT if(grouping(unit) = 0, 1, 2) AS gset, is_h, exp, unit, variant, bin, "
        "anyIf(variant, nf) AS uvariant, minIf(variant, nf) != maxIf(variant, nf) AS multi, countIf(nf) AS requests, "
        "countIf(nf AND IsError) AS errors, sumIf(Dur, nf) / 1e6 AS lat_ms, maxIf(exposed, nf) AS uexposed, "
        "minIf(Ts, nf) / 1e9 AS first_ts, countIf(nf AND exposed) AS n_exposed, "
        "countIf(has_vk AND forced) AS n_forced, anyIf(ukind, nf) AS ukind_u, "
        "countIf(vk_i <= 1 AND has_span) AS n_spans, countIf(vk_i <= 1 AND IsServer) AS n_server, "
        "countIf(NOT line_ok) AS n_bad"
        f"{uaggs} FROM ({x}) "
        "GROUP BY GROUPING SETS ((is_h, exp, unit), (is_h, exp, variant, bin))"
    )
    return (
        "SELECT gset, is_h, exp, if(gset = 1, uvariant, variant) AS v, "
        "countIf(gset = 1 AND multi AND requests > 0) AS a_multi, "
        "groupArrayIf(requests, ok_unit) AS a_requests, groupArrayIf(errors, ok_unit) AS a_errors, "
        "groupArrayIf(lat_ms, ok_unit) AS a_lat_ms, groupArrayIf(toUInt8(uexposed), ok_unit) AS a_exposed, "
        "groupArrayIf(first_ts, ok_unit) AS a_first_ts, "
        "groupArrayIf(bin, gset = 2 AND requests > 0) AS a_bins, "
        "groupArrayIf(requests, gset = 2 AND requests > 0) AS a_hist_all, "
        "groupArrayIf(n_exposed, gset = 2 AND requests > 0) AS a_hist_exposed, "
        "sumIf(n_forced, gset = 1) AS a_forced, groupUniqArrayIf(ukind_u, gset = 1 AND requests > 0) AS a_ukinds, "
        "sumIf(n_spans, gset = 1) AS a_spans, sumIf(n_server, gset = 1) AS a_server_spans, "
        "sumIf(n_bad, gset = 1) AS a_bad_lines"
        f"{oaggs} FROM (SELECT *, gset = 1 AND NOT multi AND requests > 0 AND exp != '' AS ok_unit FROM ({inner})) "
        "GROUP BY gset, is_h, exp, v ORDER BY gset, is_h, exp, v"
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
        f"Attrs[{status_new}], Attrs[{status_old}])) >= 500 AS IsError FROM ({spans_sql}) "
        "WHERE line_ok AND has_span AND IsServer) WHERE unit != '' GROUP BY unit)"
    )


def _unit_totals_from_row(r: Mapping[str, Any], metrics: Sequence[Metric]) -> tuple[list[str], Any, str | None]:
    import numpy as np

    cols = [r["a_requests"], r["a_errors"], r["a_lat_ms"]]
    for i in range(len(metrics)):
        cols += [[float(x) for x in r[f"a_m{i}_s"]], r[f"a_m{i}_n"]]
    ids = [str(u) for u in r["a_ids"]]
    mat = np.asarray(cols, dtype=np.float64).T.reshape(len(ids), 3 + 2 * len(metrics))
    return ids, mat, (str(r["a_hashed_example"]) if int(r["a_hashed"]) else None)


def _rows_to_aggregates(rows: Iterable[Mapping[str, Any]], spec: QuerySpec) -> Aggregates:
    """Turn :func:`aggregate_sql` rows into numpy-backed :class:`Aggregates`."""
    import numpy as np

    exps: dict[str, ExperimentData] = {}
    holds: dict[str, GroupData] = {}
    hists: dict[tuple[bool, str, str], tuple[Any, Any, Any]] = {}
    out = Aggregates(exps, holds)
    units: list[tuple[bool, str, str, Mapping[str, Any]]] = []
    kinds: dict[str, set] = {}
    for r in rows:
        g, is_h, exp, v = int(r["gset"]), bool(r["is_h"]), str(r["exp"]), str(r["v"])
        if g == 1:
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
            if v:
                units.append((is_h, exp, v, r))
        elif g == 2 and exp:
            bins = np.asarray(r["a_bins"], dtype=np.int64)
            order = np.argsort(bins)
            hists[(is_h, exp, v)] = (bins[order], np.asarray(r["a_hist_all"], dtype=np.int64)[order],
                                     np.asarray(r["a_hist_exposed"], dtype=np.int64)[order])
    for exp, ks in kinds.items():
        exps[exp].unit_kinds = sorted(ks)
    empty_i = np.zeros(0, dtype=np.int64)
    for is_h, exp, v, r in units:
        if not len(r["a_requests"]):
            continue
        h = hists.get((is_h, exp, v), (empty_i, empty_i, empty_i))
        ms, mc, cv = {}, {}, {}
        for i, m in enumerate(spec.metrics):
            if m.kind == "conversion":
                cv[m.name] = np.asarray(r[f"a_c{i}"], dtype=np.float64)
            else:
                ms[m.name] = np.asarray([0.0 if x is None else x for x in r[f"a_m{i}_s"]], dtype=np.float64)
                mc[m.name] = np.asarray(r[f"a_m{i}_n"], dtype=np.float64)
        gd = GroupData(np.asarray(r["a_requests"], dtype=np.float64), np.asarray(r["a_errors"], dtype=np.float64),
                       np.asarray(r["a_lat_ms"], dtype=np.float64), np.asarray(r["a_exposed"], dtype=bool),
                       np.asarray(r["a_first_ts"], dtype=np.float64), ms, mc, cv, h[0], h[1], h[2])
        if is_h:
            holds[exp] = gd
        else:
            exps.setdefault(exp, ExperimentData(exp, {}, [])).variants[v] = gd
    for key in [k for k, e in exps.items() if not e.variants]:
        del exps[key]
    return out


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
    text = res.bytes().decode("utf-8") if hasattr(res, "bytes") else str(res)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class FileSource(Source):
    """OTLP JSON-lines files: paths, directories and globs; gzip detected by content.

    ``engine``: ``"chdb"`` (embedded ClickHouse, default when installed),
    ``"python"`` (streaming ``json`` reader, no dependency) or ``"auto"``.
    """

    def __init__(self, paths: Sequence[str] | str, engine: str = "auto") -> None:
        if isinstance(paths, (str, os.PathLike)):
            paths = [os.fspath(paths)]
        self.paths = _expand_paths([os.fspath(p) for p in paths])
        if engine not in ("auto", "chdb", "python"):
            raise SourceError(f"engine {engine!r} is unknown; use auto, chdb or python")
        if engine == "chdb" and not _chdb_available():
            raise SourceError("engine chdb: the chdb package is not installed; pip install chdb, or use --engine python")
        self.requested_engine = engine
        self.engine = "chdb" if engine == "auto" and _chdb_available() else ("python" if engine == "auto" else engine)
        if self.engine == "chdb" and any(ch in p for p in self.paths for ch in "*?{}[]"):
            # ClickHouse's file() would read these characters as a glob; the Python reader takes names literally.
            if engine == "chdb":
                raise SourceError("a file name contains one of * ? { } [ ], which embedded ClickHouse reads as a "
                                  "glob; rename the file or use --engine python")
            self.engine = "python"
        self.description = ", ".join(self.paths) if len(self.paths) <= 3 else f"{len(self.paths)} files"

    def aggregate(self, spec: QuerySpec, progress: Callable[[str], None] | None = None) -> Aggregates:
        t0 = time.perf_counter()
        if self.engine == "chdb":
            if progress:
                total = sum(os.path.getsize(p) for p in self.paths)
                progress(f"reading {len(self.paths)} file(s), {total / 1e6:.1f} MB, with embedded ClickHouse ...")
            pairs = [(os.path.abspath(p), _compression(p)) for p in self.paths]
            ticker = _Ticker(progress, f"reading {self.description} with embedded ClickHouse") if progress else None
            try:
                rows = _chdb_rows(aggregate_sql(file_spans_sql(pairs, spec), spec))
            except Exception as exc:  # chdb raises its own error type
                why = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
                if self.requested_engine != "auto" or any(c == "zstd" for _, c in pairs):
                    raise SourceError(f"{self.description}: embedded ClickHouse failed: {why}; "
                                      "try --engine python") from None
                # e.g. the process already holds a chdb session on another path: read with Python instead
                agg = _python_aggregate(self._iter_spans(progress), spec)
                agg.engine, agg.source, agg.seconds = f"python (chdb unavailable: {why})", self.description, \
                    time.perf_counter() - t0
                return agg
            finally:
                if ticker:
                    ticker.stop()
            agg = _rows_to_aggregates(rows, spec)
        else:
            agg = _python_aggregate(self._iter_spans(progress), spec)
        agg.engine, agg.source, agg.seconds = self.engine, self.description, time.perf_counter() - t0
        return agg

    # -- the streaming pure-Python reader (fallback engine and reference implementation)

    def _open(self, path: str):
        kind = _compression(path)
        if kind == "zstd":
            raise SourceError(f"{path}: zstd-compressed; the Python reader cannot read zstd: install chdb "
                              "(the default engine reads it) or decompress the file")
        return gzip.open(path, "rb") if kind == "gzip" else open(path, "rb")

    def _iter_spans(self, progress: Callable[[str], None] | None = None) -> Iterator[tuple]:
        """Yield ``(line_ok, trace_id, ts, dur, is_server, status_error, attrs)``; bad lines yield line_ok False."""
        total = sum(os.path.getsize(p) for p in self.paths) or 1
        done = 0
        last = time.monotonic()
        for path in self.paths:
            size = os.path.getsize(path)
            with self._open(path) as f:
                for n, line in enumerate(f):
                    if progress and n % 2000 == 0 and time.monotonic() - last > 0.5:
                        last = time.monotonic()
                        raw = f.fileobj.tell() if hasattr(f, "fileobj") and f.fileobj else f.tell()
                        progress(f"read {100 * (done + min(raw, size)) / total:5.1f}% of {self.description}")
                    if not line.strip():
                        continue
                    try:
                        doc = json.loads(line)
                        if not isinstance(doc, dict):
                            raise ValueError("not an object")
                        spans = list(_walk_spans(doc))
                    except (ValueError, TypeError, AttributeError, KeyError):
                        yield (False, "", 0, 0.0, False, False, {})
                        continue
                    yield from spans
            done += size

    def unit_totals(self, kind: str, metrics: Sequence[Metric] = ()) -> tuple[list[str], Any, str | None]:
        if self.engine == "chdb":
            spec = QuerySpec(metrics=tuple(metrics))
            pairs = [(os.path.abspath(p), _compression(p)) for p in self.paths]
            try:
                rows = _chdb_rows(unit_totals_sql(file_spans_sql(pairs, spec), kind, metrics))
            except Exception as exc:
                if self.requested_engine == "auto":
                    return _python_unit_totals(self._iter_spans(), kind, metrics)
                raise SourceError(f"{self.description}: embedded ClickHouse failed: {str(exc).splitlines()[0][:300]}; "
                                  "try --engine python") from None
            return _unit_totals_from_row(rows[0], metrics)
        return _python_unit_totals(self._iter_spans(), kind, metrics)


def _python_unit_totals(spans: Iterable[tuple], kind: str, metrics: Sequence[Metric]) -> tuple[list[str], Any, str | None]:
    """The pure-Python twin of :func:`unit_totals_sql`."""
    import numpy as np

    per: dict[str, list[float]] = {}
    hashed = None
    for ok, tid, ts, dur, server, status_err, attrs in spans:
        if not (ok and server):
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
        try:
            http_err = int(code) >= 500
        except ValueError:
            http_err = False
        u[0] += 1
        u[1] += status_err or http_err
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


def _value_str(v: Any) -> str:
    """An OTLP AnyValue as the ClickHouse exporter stores it: a string."""
    if not isinstance(v, dict):
        return ""
    if "stringValue" in v:
        return str(v["stringValue"])
    if "boolValue" in v:
        return "true" if v["boolValue"] in (True, "true") else "false"
    if "intValue" in v:
        return str(v["intValue"])
    if "doubleValue" in v:
        d = v["doubleValue"]
        return repr(float(d)) if not isinstance(d, str) else d
    return ""


def _list(x: Any) -> Any:
    """A JSON array, or nothing (a wrong shape is treated as empty, as ClickHouse's JSONExtract does)."""
    return x if isinstance(x, list) else ()


def _walk_spans(doc: Mapping[str, Any]) -> Iterator[tuple]:
    for rs in _list(doc.get("resourceSpans")):
        for ss in _list(rs.get("scopeSpans")):
            for sp in _list(ss.get("spans")):
                kind = sp.get("kind")
                code = (sp.get("status") or {}).get("code")
                start = int(sp.get("startTimeUnixNano") or 0)
                end = int(sp.get("endTimeUnixNano") or 0)
                attrs = {a["key"]: _value_str(a.get("value")) for a in sp.get("attributes") or ()}
                yield (True, str(sp.get("traceId") or ""), start, float(end - start),
                       kind in (2, "2", "SPAN_KIND_SERVER"), code in (2, "2", "STATUS_CODE_ERROR"), attrs)


def _python_aggregate(spans: Iterable[tuple], spec: QuerySpec) -> Aggregates:
    """The pure-Python twin of :func:`aggregate_sql` (same definitions, same results)."""
    import numpy as np

    vp, hp = A.VARIANT_PREFIX, A.HOLDOUT_PREFIX
    units: dict[tuple[bool, str, str], list] = {}
    hist: dict[tuple[bool, str, str], dict[int, list[int]]] = {}
    forced: dict[str, int] = {}
    kinds: dict[str, set] = {}
    n_spans = n_server = n_bad = 0
    nm = len(spec.metrics)
    for ok, tid, ts, dur, server, status_err, attrs in spans:
        if not ok:
            n_bad += 1
            continue
        n_spans += 1
        if not server:
            continue
        n_server += 1
        hk = [k for k, v in attrs.items() if k.startswith(hp) and v == "true"]
        keys = hk if hk else [k for k in attrs if k.startswith(vp)]
        if not keys:
            continue
        code = attrs.get(A.HTTP_STATUS_CODE) or attrs.get(A.HTTP_STATUS_CODE_OLD) or ""
        try:
            http_err = int(code) >= 500
        except ValueError:
            http_err = False
        is_err = status_err or http_err
        b = int(math.floor(math.log10(dur) * HIST_PER_DECADE)) if dur > 0 else -1
        for vk in keys:
            is_h = vk.startswith(hp)
            exp = vk[len(hp):] if is_h else vk[len(vp):]
            # intent-to-treat: served control during a pause (fieldlab.guardrail.<key>), assigned the paused variant
            variant = "holdout" if is_h else (attrs.get(A.guardrail_attr(exp)) or attrs[vk])
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
                # variants seen, requests, errors, latency ms, exposed, first ts, metric slots...
                u = units[key] = [{variant}, 0, 0, 0.0, False, ts, *([0.0] * (2 * nm))]
            else:
                u[0].add(variant)
            u[1] += 1
            u[2] += is_err
            u[3] += dur
            u[4] = u[4] or exposed
            u[5] = min(u[5], ts)
            _add_metrics(u, 6, spec.metrics, attrs)
            hb = hist.setdefault((is_h, exp, variant), {}).setdefault(b, [0, 0])
            hb[0] += 1
            hb[1] += exposed
    grouped: dict[tuple[bool, str, str], list] = {}
    multi: dict[str, int] = {}
    for (is_h, exp, uid), u in units.items():
        if len(u[0]) > 1:
            multi[exp] = multi.get(exp, 0) + 1
            continue
        grouped.setdefault((is_h, exp, next(iter(u[0]))), []).append(u)
    exps: dict[str, ExperimentData] = {}
    holds: dict[str, GroupData] = {}
    for (is_h, exp, v), us in sorted(grouped.items()):
        arr = np.asarray([u[1:] for u in us], dtype=np.float64)
        h = hist.get((is_h, exp, v), {})
        bins = np.asarray(sorted(h), dtype=np.int64)
        ms, mc, cv = {}, {}, {}
        for i, m in enumerate(spec.metrics):
            if m.kind == "conversion":
                cv[m.name] = arr[:, 5 + 2 * i]
            else:
                ms[m.name] = arr[:, 5 + 2 * i]
                mc[m.name] = arr[:, 6 + 2 * i]
        gd = GroupData(arr[:, 0], arr[:, 1], arr[:, 2] / 1e6, arr[:, 3].astype(bool), arr[:, 4] / 1e9, ms, mc, cv,
                       bins, np.asarray([h[b][0] for b in bins], dtype=np.int64),
                       np.asarray([h[b][1] for b in bins], dtype=np.int64))
        if is_h:
            holds[exp] = gd
        else:
            e = exps.setdefault(exp, ExperimentData(exp, {}, sorted(kinds.get(exp, ()))))
            e.variants[v] = gd
    for exp, e in exps.items():
        e.forced_requests = forced.get(exp, 0)
        e.multi_variant_units = multi.get(exp, 0)
    return Aggregates(exps, holds, n_spans, n_server, n_bad)


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
            text = res.bytes().decode("utf-8") if hasattr(res, "bytes") else str(res)
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


def open_source(spec: str | Sequence[str] | Source, engine: str = "auto") -> Source:
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
    return FileSource(spec, engine=engine)


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
