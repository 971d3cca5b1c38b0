-- fieldlab: per-experiment, per-variant summary straight from the OpenTelemetry Collector
-- ClickHouse exporter's traces table (otel_traces), for dashboards (Grafana, clickhouse-client).
--
--   clickhouse-client --param_start='2026-11-01 00:00:00' --param_end='2026-12-01 00:00:00' \
--       --queries-file integrations/clickhouse/fieldlab_variant_summary.sql
--
-- Intent-to-treat counts (every assigned unit), forced (QA override) requests excluded, the unit
-- taken as in `fieldlab analyze` without --config: fieldlab.unit.user, else visitor, else session,
-- else the trace id. This is a monitoring view: it has no SRM test and no confidence intervals.
-- For verdicts run `fieldlab analyze clickhouse://...`, which runs its statistics on the same table.
-- Both SpanKind/StatusCode spellings of the exporter ('Server'/'SPAN_KIND_SERVER',
-- 'Error'/'STATUS_CODE_ERROR') are accepted.
SELECT
    experiment,
    variant,
    uniqExact(unit) AS units,
    count() AS requests,
    countIf(is_error) AS errors,
    round(errors / requests, 6) AS error_rate,
    arrayMap(q -> round(q, 3), quantiles(0.5, 0.9, 0.99)(Duration / 1e6)) AS latency_ms_p50_p90_p99,
    countIf(exposed) AS exposed_requests
FROM
(
    SELECT
        arrayJoin(arrayFilter(k -> startsWith(k, 'fieldlab.variant.'), mapKeys(SpanAttributes))) AS variant_key,
        substring(variant_key, length('fieldlab.variant.') + 1) AS experiment,
        SpanAttributes[variant_key] AS variant,
        SpanAttributes[concat('fieldlab.exposed.', experiment)] = 'true' AS exposed,
        SpanAttributes[concat('fieldlab.forced.', experiment)] = 'true' AS forced,
        multiIf(SpanAttributes['fieldlab.unit.user'] != '', SpanAttributes['fieldlab.unit.user'],
                SpanAttributes['fieldlab.unit.visitor'] != '', SpanAttributes['fieldlab.unit.visitor'],
                SpanAttributes['fieldlab.unit.session'] != '', SpanAttributes['fieldlab.unit.session'],
                TraceId) AS unit,
        toString(StatusCode) IN ('Error', 'STATUS_CODE_ERROR')
            OR toInt64OrZero(if(SpanAttributes['http.response.status_code'] != '',
                                SpanAttributes['http.response.status_code'],
                                SpanAttributes['http.status_code'])) >= 500 AS is_error,
        Duration
    FROM otel_traces
    WHERE toString(SpanKind) IN ('Server', 'SPAN_KIND_SERVER')
      AND Timestamp >= {start:DateTime64(9)} AND Timestamp < {end:DateTime64(9)}
)
WHERE NOT forced
GROUP BY experiment, variant
ORDER BY experiment, variant
