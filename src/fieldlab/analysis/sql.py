"""The analysis SQL: ClickHouse text that normalises spans and aggregates them per unit and variant.

Two span readers give the same columns (``line_ok, has_span, TraceId, SpanId, Ts, Dur, IsServer, StatusError,
Attrs``): :func:`file_spans_sql` over OTLP JSON-lines files (embedded ClickHouse, chdb) and
:func:`otel_traces_spans_sql` over the Collector ClickHouse exporter's table. :func:`aggregate_sql` and
:func:`unit_totals_sql` take either reader's text, so files and tables give the same numbers for the same spans.
The pure-Python twin of these queries is :mod:`fieldlab.analysis.python_engine`; the decoding of their rows is
:mod:`fieldlab.analysis.sql_rows`.
"""

from __future__ import annotations

from collections.abc import Sequence

from .. import attributes as A
from .model import HIST_PER_DECADE, UNIT_FALLBACK_ORDER, Metric, QuerySpec, TimeWindow

__all__ = ["otel_traces_spans_sql", "file_spans_sql", "aggregate_sql", "unit_totals_sql", "with_packed_variants_sql"]


def _lit(s: str) -> str:
    """A ClickHouse string literal."""
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def with_packed_variants_sql(attrs: str) -> str:
    """``attrs`` (a ClickHouse Map of span attributes) plus the variants held only in ``fieldlab.assignments``.

    When a span's attribute limit left some ``fieldlab.variant.<key>`` out,
    telemetry packs every variant into ``fieldlab.assignments``
    (``key=variant;...``, variant names percent-escaped): this adds each as
    ``fieldlab.variant.<key>``; an individual attribute wins. The SQL twin of
    :func:`fieldlab.analysis.reader.with_packed_variants`.
    """
    pairs = f"arrayFilter(p -> position(p, '=') > 1, splitByChar(';', {attrs}[{_lit(A.ASSIGNMENTS)}]))"
    return (
        f"if({attrs}[{_lit(A.ASSIGNMENTS)}] = '', {attrs}, mapUpdate(mapFromArrays("
        f"arrayMap(p -> concat({_lit(A.VARIANT_PREFIX)}, substring(p, 1, position(p, '=') - 1)), {pairs}), "
        f"arrayMap(p -> decodeURLComponent(substring(p, position(p, '=') + 1)), {pairs})), {attrs}))"
    )


def _keep_attrs(spec: QuerySpec, key: str = "k") -> str:
    """ClickHouse lambda body keeping only the attributes the analysis reads (``key`` names the key)."""
    exact = sorted(
        {A.HTTP_STATUS_CODE, A.HTTP_STATUS_CODE_OLD}
        | {m.attr for m in spec.metrics}
        | {a for f in spec.filters for a in f.attrs}
    )
    return f"startsWith({key}, {_lit(A.PREFIX)}) OR {key} IN (" + ", ".join(_lit(k) for k in exact) + ")"


def otel_traces_spans_sql(table: str = "otel_traces", where: str = "", spec: QuerySpec | None = None) -> str:
    """Normalised spans from the Collector ClickHouse exporter's table (both enum spellings); ``--since`` /
    ``--until`` become a condition on ``Timestamp``, so the table's date partitions outside are skipped."""
    conds = [f"({where})" if where else "", _timestamp_window_sql(spec.window if spec else None)]
    w = " WHERE " + " AND ".join(c for c in conds if c) if any(conds) else ""
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
_ANY_VALUE = (
    "multiIf(mapContains(a.2, 'stringValue'), a.2['stringValue'], mapContains(a.2, 'boolValue'), "
    "a.2['boolValue'], mapContains(a.2, 'intValue'), a.2['intValue'], mapContains(a.2, 'doubleValue'), "
    "a.2['doubleValue'], '')"
)
_LINE_T = (
    "Tuple(resourceSpans Array(Tuple(scopeSpans Array(Tuple(spans Array(Tuple(traceId String, spanId String, kind String, "
    "startTimeUnixNano String, endTimeUnixNano String, attributes Array(Tuple(key String, value "
    + _VALUE_T
    + ")), status Tuple(code String))))))))"
)


def file_spans_sql(paths: Sequence[tuple[str, str]], spec: QuerySpec | None = None) -> str:
    """Normalised spans from OTLP JSON-lines files read by ClickHouse's ``file()`` (chdb).

    ``paths`` are ``(path, compression)`` pairs. A line that yields no spans is
    checked with ``isValidJSON``; an invalid line gives one row with
    ``line_ok = 0`` so it is counted, never fatal. Attribute values become
    strings as the ClickHouse exporter stores them (``true``, ``500``, ``1.5``);
    only the attributes the analysis reads are kept.
    """
    reads = " UNION ALL ".join(
        f"SELECT line FROM file({_lit(p)}, 'LineAsString', 'line String', {_lit(c)})" for p, c in paths
    )
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
    inferred = (
        "multiIf("
        + ", ".join(f"Attrs[{_lit(A.unit_attr(k))}] != '', {_lit(k)}" for k in UNIT_FALLBACK_ORDER)
        + ", 'request')"
    )
    if not spec.unit_kinds:
        return inferred
    parts = ", ".join(f"exp = {_lit(e)}, {_lit(k)}" for e, k in sorted(spec.unit_kinds.items()))
    return f"multiIf(is_h, {inferred}, {parts}, {inferred})"


def _dedup_sql(spans_sql: str) -> str:
    """The spans with each (trace id, span id) kept once: an exporter's retry or a file read twice repeats
    spans, and a repeated span is one request. Spans without a span id and rows of unreadable lines are kept."""
    return (
        f"SELECT * FROM ({spans_sql}) LIMIT 1 BY cityHash64(TraceId, SpanId), "
        "if(has_span AND SpanId != '', toUInt64(0), rowNumberInAllBlocks() + 1)"
    )


def _filters_sql(spec: QuerySpec) -> str:
    """`` AND <condition>`` per ``--where`` filter: the first of its attributes a span carries has the value
    (the SQL twin of :meth:`~.model.Filter.matches`); empty without filters."""
    out = ""
    for f in spec.filters:
        value = (
            f"Attrs[{_lit(f.attrs[0])}]"
            if len(f.attrs) == 1
            else "multiIf(" + "".join(f"Attrs[{_lit(a)}] != '', Attrs[{_lit(a)}], " for a in f.attrs) + "'')"
        )
        out += f" AND {value} = {_lit(f.value)}"
    return out


def _timestamp_window_sql(window: TimeWindow | None) -> str:
    """The ``--since`` / ``--until`` window as a condition on the ``otel_traces`` table's own ``Timestamp``
    column (a constant bound, which ClickHouse prunes partitions and the primary key with); '' without one."""
    if window is None:
        return ""
    conds = []
    if window.since_ns is not None:
        conds.append(f"Timestamp >= fromUnixTimestamp64Nano(toInt64({window.since_ns}))")
    if window.until_ns is not None:
        conds.append(f"Timestamp < fromUnixTimestamp64Nano(toInt64({window.until_ns}))")
    return " AND ".join(conds)


def _window_sql(spans_sql: str, spec: QuerySpec) -> str:
    """The normalised spans that started in the ``--since`` / ``--until`` window, half-open ``[since, until)``
    (the SQL twin of :meth:`~.model.TimeWindow.contains`); rows of unreadable lines are kept (they are counted)."""
    w = spec.window
    if w is None or (w.since_ns is None and w.until_ns is None):
        return spans_sql
    conds = []
    if w.since_ns is not None:
        conds.append(f"Ts >= toInt64({w.since_ns})")
    if w.until_ns is not None:
        conds.append(f"Ts < toInt64({w.until_ns})")
    return f"SELECT * FROM ({spans_sql}) WHERE NOT line_ok OR ({' AND '.join(conds)})"


def _coverage_sql(spec: QuerySpec) -> str:
    """Holdout attribute -> covered experiments, as a ClickHouse map literal."""
    items = ", ".join(
        f"{_lit(A.holdout_attr(h))}, CAST([{', '.join(_lit(e) for e in sorted(es))}], 'Array(String)')"
        for h, es in sorted(spec.holdout_experiments.items())
    )
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
        f"if(IsServer AND has_span{_filters_sql(spec)}, arrayConcat(hk, arrayFilter(k -> startsWith(k, "
        + _lit(vp)
        + ") AND NOT "
        f"arrayExists(h -> has({_coverage_sql(spec)}[h], substring(k, {len(vp) + 1})), hk), ak)), "
        "CAST([], 'Array(String)')) AS keys "
        f"FROM (SELECT * REPLACE ({with_packed_variants_sql('Attrs')} AS Attrs) FROM ("
        + _dedup_sql(_window_sql(spans_sql, spec))
        + "))"
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
        f"NOT is_h AND Attrs[concat({_lit(A.GUARDRAIL_PREFIX)}, exp)] != '' AS guarded, "
        f"NOT is_h AND Attrs[concat({_lit(A.FORCED_PREFIX)}, exp)] = 'true' AS forced, "
        f"{_unit_kind_sql(spec)} AS ukind, "
        f"if(NOT has_vk, '', if(ukind = 'request', if(Attrs[{_lit(A.unit_attr('request'))}] != '', "
        f"Attrs[{_lit(A.unit_attr('request'))}], TraceId), Attrs[concat({_lit(A.UNIT_PREFIX)}, ukind)])) AS unit, "
        "has_vk AND unit != '' AND NOT forced AS nf, "
        f"StatusError OR toInt64OrZero(if(Attrs[{status_new}] != '', Attrs[{status_new}], Attrs[{status_old}])) >= 500 "
        "AS IsError, "
        f"if(Dur > 0, toInt32(floor(log10(Dur) * {HIST_PER_DECADE})), toInt32(-1)) AS bin, Ts, Dur, "
        # a bandit's weights version (period) that decided the assignment; absent: period 0
        f"Attrs[concat({_lit(A.BANDIT_PREFIX)}, exp)] AS bver_s, NOT is_h AND bver_s != '' AS has_bver, "
        f"toInt64OrZero(bver_s) AS bver{mcols} "
        f"FROM ({keyed}) LEFT ARRAY JOIN keys AS vk, arrayEnumerate(keys) AS vk_i"
    )
    inner = (
        "SELECT is_h, exp, unit, anyIf(variant, nf) AS uvariant, minIf(variant, nf) != maxIf(variant, nf) AS multi, "
        "countIf(nf) AS requests, countIf(nf AND exposed) AS exposed_requests, countIf(nf AND IsError) AS errors, "
        "countIf(nf AND guarded) AS guarded_requests, "
        "sumIf(Dur, nf) / 1e6 AS lat_ms, "
        "maxIf(exposed, nf) AS uexposed, minIf(Ts, nf) / 1e9 AS first_ts, "
        "countIf(has_vk AND forced) AS n_forced, anyIf(ukind, nf) AS ukind_u, "
        "countIf(vk_i <= 1 AND has_span) AS n_spans, countIf(vk_i <= 1 AND has_span AND IsServer) AS n_server, "
        "countIf(NOT line_ok) AS n_bad, groupArrayIf(bin, nf) AS ubins, if(countIf(nf AND has_bver) > 0, minIf(bver, nf AND has_bver), toInt64(0)) AS uperiod"
        f"{uaggs} FROM ({x}) GROUP BY is_h, exp, unit"
    )
    return (
        "SELECT is_h, exp, uvariant AS v, countIf(multi AND requests > 0) AS a_multi, "
        "groupArrayIf(requests, ok_unit) AS a_requests, groupArrayIf(exposed_requests, ok_unit) AS a_exposed_requests, "
        "groupArrayIf(errors, ok_unit) AS a_errors, groupArrayIf(guarded_requests, ok_unit) AS a_guarded_requests, "
        "groupArrayIf(lat_ms, ok_unit) AS a_lat_ms, groupArrayIf(toUInt8(uexposed), ok_unit) AS a_exposed, "
        "groupArrayIf(first_ts, ok_unit) AS a_first_ts, groupArrayIf(uperiod, ok_unit) AS a_period, "
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
    unit = (
        f"if(Attrs[{_lit(A.unit_attr('request'))}] != '', Attrs[{_lit(A.unit_attr('request'))}], TraceId)"
        if kind == "request"
        else f"Attrs[{_lit(A.unit_attr(kind))}]"
    )
    status_new, status_old = _lit(A.HTTP_STATUS_CODE), _lit(A.HTTP_STATUS_CODE_OLD)
    inner_aggs, outer = [], []
    for i, m in enumerate(metrics):
        a = _lit(m.attr)
        if m.kind == "conversion":
            inner_aggs.append(f"max(Attrs[{a}] = {_lit(str(m.value))}) AS m{i}_s, toUInt64(0) AS m{i}_n")
        else:
            inner_aggs.append(
                f"sum(ifNull(toFloat64OrNull(Attrs[{a}]), 0)) AS m{i}_s, "
                f"countIf(toFloat64OrNull(Attrs[{a}]) IS NOT NULL) AS m{i}_n"
            )
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
