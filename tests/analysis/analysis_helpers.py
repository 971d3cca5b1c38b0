"""Test data for the analysis tests, produced with the real OpenTelemetry SDK and the real
``opentelemetry-exporter-otlp-json-file`` exporter (and, for ClickHouse, the Collector
exporter's table schema on chdb)."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Mapping
from typing import Any

from fieldlab import attributes as A

__all__ = ["Req", "write_otlp", "OTEL_TRACES_DDL", "load_into_otel_traces", "make_requests", "chdb_session"]

T0 = 1_795_000_000_000_000_000


class Req(dict):
    """One request: ``attrs`` (SERVER span attributes), ``dur_ms``, ``error`` (span status), ``start``."""


def write_otlp(path: str, reqs: Iterable[Mapping[str, Any]], *, batch: int = 128, child_spans: bool = True) -> str:
    """Write requests as SERVER spans (plus an internal child span each) through the SDK and the JSON file exporter."""
    from opentelemetry.exporter.otlp.json.file import FileSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import SpanKind, Status, StatusCode

    if os.path.exists(path):
        os.remove(path)
    provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
    provider.add_span_processor(
        BatchSpanProcessor(
            FileSpanExporter(path), max_export_batch_size=batch, max_queue_size=1 << 20, schedule_delay_millis=60_000
        )
    )
    tracer = provider.get_tracer("fieldlab-tests")
    for i, r in enumerate(reqs):
        start = int(r.get("start", T0 + i * 1_000_000))
        end = start + int(r["dur_ms"] * 1e6)
        span = tracer.start_span(
            r.get("name", "GET /"),
            kind=r.get("kind", SpanKind.SERVER),
            start_time=start,
            attributes=dict(r.get("attrs", {})),
        )
        if r.get("event"):
            span.add_event(A.FLAG_EVENT, {A.FLAG_KEY: "x", A.FLAG_VARIANT: "y"}, timestamp=start + 10)
        if child_spans:
            from opentelemetry import trace

            ctx = trace.set_span_in_context(span)
            child = tracer.start_span(
                "db.query",
                context=ctx,
                kind=SpanKind.CLIENT,
                start_time=start + 1000,
                attributes={"fieldlab.variant.decoy": "nope"},
            )
            child.end(end_time=end - 1000 if end - 1000 > start + 1000 else start + 1001)
        if r.get("error"):
            span.set_status(Status(StatusCode.ERROR, "boom"))
        span.end(end_time=end)
    provider.force_flush()
    provider.shutdown()
    return path


def make_requests(
    n_units: int,
    *,
    experiment: str = "exp",
    variants=("control", "treatment"),
    weights=None,
    reqs_per_unit=(1, 6),
    error_rate: Mapping[str, float] | None = None,
    latency_ms: Mapping[str, float] | None = None,
    conversion: Mapping[str, float] | None = None,
    exposed_share: float = 1.0,
    forced_share: float = 0.0,
    unit_kind: str = "user",
    seed: int = 7,
    value_attr: str | None = None,
    drop: Mapping[str, float] | None = None,
) -> list[Req]:
    """Synthetic traffic: units get a variant at random, then make a few requests each."""
    rnd = random.Random(seed)
    weights = weights or [1] * len(variants)
    out: list[Req] = []
    t = T0
    for _u in range(n_units):
        v = rnd.choices(variants, weights)[0]
        if drop and rnd.random() < drop.get(v, 0):
            continue
        uid = f"h1:{rnd.getrandbits(64):016x}"
        exposed = rnd.random() < exposed_share
        forced = rnd.random() < forced_share
        converts = rnd.random() < (conversion or {}).get(v, 0.0)
        k = rnd.randint(*reqs_per_unit)
        for j in range(k):
            attrs: dict[str, Any] = {A.variant_attr(experiment): v, A.CONFIG_VERSION: "abc"}
            if unit_kind != "request":
                attrs[A.unit_attr(unit_kind)] = uid
            if exposed:
                attrs[A.exposed_attr(experiment)] = True
            if forced:
                attrs[A.forced_attr(experiment)] = True
            err = rnd.random() < (error_rate or {}).get(v, 0.01)
            status = 500 if err and rnd.random() < 0.5 else 200
            attrs[A.HTTP_STATUS_CODE] = status
            if converts and j == k - 1:
                attrs["app.checkout.completed"] = True
            if value_attr:
                attrs[value_attr] = round(rnd.uniform(0, 100), 2)
            dur = rnd.lognormvariate(0, 0.4) * (latency_ms or {}).get(v, 20.0)
            t += rnd.randint(1, 3_000_000)
            out.append(Req(attrs=attrs, dur_ms=dur, error=err and status == 200, start=t, event=(j == 0)))
    return out


# The Collector ClickHouse exporter's traces table (exporter/clickhouseexporter, sqltemplates), reproduced.
OTEL_TRACES_DDL = """
CREATE TABLE {table} (
    Timestamp DateTime64(9) CODEC(Delta, ZSTD(1)),
    TraceId String CODEC(ZSTD(1)),
    SpanId String CODEC(ZSTD(1)),
    ParentSpanId String CODEC(ZSTD(1)),
    TraceState String CODEC(ZSTD(1)),
    SpanName LowCardinality(String) CODEC(ZSTD(1)),
    SpanKind LowCardinality(String) CODEC(ZSTD(1)),
    ServiceName LowCardinality(String) CODEC(ZSTD(1)),
    ResourceAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    ScopeName String CODEC(ZSTD(1)),
    ScopeVersion String CODEC(ZSTD(1)),
    SpanAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    Duration {duration_type} CODEC(ZSTD(1)),
    StatusCode LowCardinality(String) CODEC(ZSTD(1)),
    StatusMessage String CODEC(ZSTD(1)),
    Events Nested (
        Timestamp DateTime64(9),
        Name LowCardinality(String),
        Attributes Map(LowCardinality(String), String)
    ) CODEC(ZSTD(1)),
    Links Nested (
        TraceId String,
        SpanId String,
        TraceState String,
        Attributes Map(LowCardinality(String), String)
    ) CODEC(ZSTD(1))
) ENGINE = MergeTree
PARTITION BY toDate(Timestamp)
ORDER BY (ServiceName, SpanName, toDateTime(Timestamp))
"""

_KIND_NEW = {1: "Internal", 2: "Server", 3: "Client", 4: "Producer", 5: "Consumer", 0: "Unspecified"}
_KIND_OLD = {
    1: "SPAN_KIND_INTERNAL",
    2: "SPAN_KIND_SERVER",
    3: "SPAN_KIND_CLIENT",
    4: "SPAN_KIND_PRODUCER",
    5: "SPAN_KIND_CONSUMER",
    0: "SPAN_KIND_UNSPECIFIED",
}


def _val(v: Mapping[str, Any]) -> str:
    if "stringValue" in v:
        return v["stringValue"]
    if "boolValue" in v:
        return "true" if v["boolValue"] else "false"
    if "intValue" in v:
        return str(v["intValue"])
    if "doubleValue" in v:
        return repr(float(v["doubleValue"]))
    return ""


def _ts(ns: int) -> str:
    """Exact nanoseconds as decimal seconds text, as DateTime64(9) parses it."""
    return f"{ns // 10**9}.{ns % 10**9:09d}"


def load_into_otel_traces(session: Any, table: str, otlp_path: str, *, alternate_spellings: bool = True) -> int:
    """Insert an OTLP JSON file's spans into an ``otel_traces``-shaped table, as the Collector exporter would.

    Every other span uses the old enum spellings (``SPAN_KIND_SERVER``, ``STATUS_CODE_ERROR``), the rest the
    new ones (``Server``, ``Error``): the analysis must read both.
    """
    rows = []
    i = 0
    with open(otlp_path) as f:
        for line in f:
            doc = json.loads(line)
            for rs in doc["resourceSpans"]:
                res = {a["key"]: _val(a["value"]) for a in rs.get("resource", {}).get("attributes", [])}
                for ss in rs["scopeSpans"]:
                    for sp in ss["spans"]:
                        old = alternate_spellings and int(sp["spanId"][-2:], 16) % 2 == 1
                        i += 1
                        kind = int(sp.get("kind", 0))
                        code = int((sp.get("status") or {}).get("code", 0))
                        status = {0: "Unset", 1: "Ok", 2: "Error"}[code]
                        if old:
                            status = {0: "STATUS_CODE_UNSET", 1: "STATUS_CODE_OK", 2: "STATUS_CODE_ERROR"}[code]
                        start, end = int(sp["startTimeUnixNano"]), int(sp["endTimeUnixNano"])
                        rows.append(
                            {
                                "Timestamp": start,
                                "TraceId": sp["traceId"],
                                "SpanId": sp["spanId"],
                                "ParentSpanId": sp.get("parentSpanId", ""),
                                "TraceState": "",
                                "SpanName": sp["name"],
                                "SpanKind": (_KIND_OLD if old else _KIND_NEW)[kind],
                                "ServiceName": res.get("service.name", ""),
                                "ResourceAttributes": res,
                                "ScopeName": ss.get("scope", {}).get("name", ""),
                                "ScopeVersion": "",
                                "SpanAttributes": {a["key"]: _val(a["value"]) for a in sp.get("attributes", [])},
                                "Duration": end - start,
                                "StatusCode": status,
                                "StatusMessage": "",
                                "Events.Timestamp": [_ts(int(e["timeUnixNano"])) for e in sp.get("events", [])],
                                "Events.Name": [e["name"] for e in sp.get("events", [])],
                                "Events.Attributes": [
                                    {a["key"]: _val(a["value"]) for a in e.get("attributes", [])}
                                    for e in sp.get("events", [])
                                ],
                                "Links.TraceId": [],
                                "Links.SpanId": [],
                                "Links.TraceState": [],
                                "Links.Attributes": [],
                            }
                        )
    tmp = otlp_path + ".rows.jsonl"
    with open(tmp, "w") as f:
        for r in rows:
            r = dict(r)
            r["Timestamp"] = _ts(r["Timestamp"])
            f.write(json.dumps(r) + "\n")
    session.query(
        f"INSERT INTO {table} SELECT * FROM file('{os.path.abspath(tmp)}', 'JSONEachRow') "
        "SETTINGS date_time_input_format = 'best_effort'"
    )
    return len(rows)


def chdb_session(path: str) -> Any:
    from chdb import session as chs

    return chs.Session(path)
