"""OTLP JSON-lines span files for the controller tests, written by the real OpenTelemetry SDK and file exporter."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fieldlab import attributes as A

__all__ = ["Request", "traffic", "write_spans"]


@dataclass
class Request:
    """One request: when it started (epoch ns), how long it took, whether it failed, its SERVER-span attributes."""

    start_ns: int
    dur_ms: float
    error: bool
    attrs: dict[str, Any] = field(default_factory=dict)


def traffic(
    experiment: str,
    now: float,
    *,
    units: Mapping[str, int],
    error_rate: Mapping[str, float],
    span_hours: float = 6.0,
    reqs: tuple[int, int] = (1, 5),
    slow_ms: Mapping[str, float] | None = None,
    conversion: Mapping[str, float] | None = None,
    seed: int = 1,
    prefix: str = "u",
) -> list[Request]:
    """Users of each variant making requests spread evenly over the ``span_hours`` before ``now``."""
    rnd = random.Random(seed)
    out = []
    t_end = int(now * 1e9)
    t_start = t_end - int(span_hours * 3600e9)
    for variant, n in units.items():
        for u in range(n):
            uid = f"{prefix}-{variant}-{u}"
            k = rnd.randint(*reqs)
            converts = rnd.random() < (conversion or {}).get(variant, 0.0)
            for j in range(k):
                attrs: dict[str, Any] = {A.variant_attr(experiment): variant, A.unit_attr("user"): uid}
                err = rnd.random() < error_rate.get(variant, 0.0)
                attrs[A.HTTP_STATUS_CODE] = 500 if err else 200
                if converts and j == k - 1:
                    attrs["app.checkout.completed"] = True
                dur = (slow_ms or {}).get(variant, 20.0) * rnd.uniform(0.5, 1.5)
                out.append(Request(rnd.randint(t_start, t_end - int(dur * 1e6) - 1), dur, False, attrs))
    return out


def write_spans(path: str, reqs: Iterable[Request]) -> str:
    """Each request as a SERVER span (and an INTERNAL child, which must be ignored) through the SDK exporter."""
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.json.file import FileSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import SpanKind, Status, StatusCode

    provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
    provider.add_span_processor(
        BatchSpanProcessor(
            FileSpanExporter(path), max_export_batch_size=256, max_queue_size=1 << 20, schedule_delay_millis=60_000
        )
    )
    tracer = provider.get_tracer("fieldlab-control-tests")
    for r in reqs:
        end = r.start_ns + int(r.dur_ms * 1e6)
        span = tracer.start_span("GET /checkout", kind=SpanKind.SERVER, start_time=r.start_ns, attributes=r.attrs)
        child = tracer.start_span(
            "render",
            context=trace.set_span_in_context(span),
            kind=SpanKind.INTERNAL,
            start_time=r.start_ns + 1,
            attributes={A.HTTP_STATUS_CODE: 500},
        )
        child.end(end_time=r.start_ns + 2)
        if r.error:
            span.set_status(Status(StatusCode.ERROR, "boom"))
        span.end(end_time=end)
    provider.force_flush()
    provider.shutdown()
    return path
