"""fieldlab writes spans through the public OpenTelemetry API only, so any implementation of it works.

The same WSGI app, behind the OpenTelemetry WSGI instrumentation, runs once
with the SDK's tracer provider and once with a minimal provider written here
against the API's abstract classes alone (it has ``kind``, which the WSGI
instrumentation itself reads, but no ``attributes`` and no SDK base class): fieldlab must write the same attributes and the same
``feature_flag.evaluation`` events through both.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from werkzeug.test import Client

import fieldlab
from fieldlab import Experiment, Holdout, Lab
from fieldlab import attributes as A
from fieldlab.adapters.wsgi import FieldLabMiddleware


class ApiOnlySpan(trace.Span):
    """A span of another implementation of the API: it keeps what it is told and does not show its attributes."""

    def __init__(self, name: str, kind: SpanKind, attributes: Any) -> None:
        self.name = name
        self.kind = kind
        self.values: dict[str, Any] = dict(attributes or {})
        self.calls: list[tuple[Any, ...]] = []
        self.recorded_events: list[tuple[str, dict[str, Any], int]] = []
        self.ended = False
        rnd = random.Random()
        self._context = trace.SpanContext(
            rnd.getrandbits(128),
            rnd.getrandbits(64),
            is_remote=False,
            trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
        )

    def get_span_context(self) -> trace.SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return not self.ended

    def set_attributes(self, attributes: Any) -> None:
        self.calls.append(("set_attributes", dict(attributes)))
        self.values.update(attributes)

    def set_attribute(self, key: str, value: Any) -> None:
        self.calls.append(("set_attribute", key, value))
        self.values[key] = value

    def add_event(self, name: str, attributes: Any = None, timestamp: int | None = None) -> None:
        self.calls.append(("add_event", name))
        self.recorded_events.append((name, dict(attributes or {}), timestamp or time.time_ns()))

    def update_name(self, name: str) -> None:
        self.name = name

    def set_status(self, status: Any, description: str | None = None) -> None:
        pass

    def record_exception(
        self, exception: BaseException, attributes: Any = None, timestamp: int | None = None, escaped: bool = False
    ) -> None:
        pass

    def end(self, end_time: int | None = None) -> None:
        self.ended = True


class ApiOnlyTracer(trace.Tracer):
    def __init__(self, spans: list[ApiOnlySpan]) -> None:
        self.spans = spans

    def start_span(
        self,
        name: str,
        context: Any = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Any = None,
        links: Any = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> ApiOnlySpan:
        span = ApiOnlySpan(name, kind, attributes)
        self.spans.append(span)
        return span

    @contextlib.contextmanager
    def start_as_current_span(
        self,
        name: str,
        context: Any = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Any = None,
        links: Any = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[ApiOnlySpan]:
        span = self.start_span(name, context, kind, attributes)
        with trace.use_span(span, end_on_exit=end_on_exit):
            yield span


class ApiOnlyTracerProvider(trace.TracerProvider):
    def __init__(self) -> None:
        self.spans: list[ApiOnlySpan] = []

    def get_tracer(self, instrumenting_module_name: str, *args: Any, **kwargs: Any) -> ApiOnlyTracer:
        return ApiOnlyTracer(self.spans)


def make_lab() -> Lab:
    return Lab(
        [
            Experiment("checkout-redesign", {"control": 1, "treatment": 1}),
            Experiment("search", {"a": 1, "b": 1}),
            Experiment("banner", {"off": 1, "on": 1}, exposure="on_assign"),
        ],
        holdouts=[Holdout("hold", 30, ["search"])],
        secret="providers",
    )


def shop(environ: Any, start_response: Any) -> list[bytes]:
    body = f"{fieldlab.variant('checkout-redesign')} {fieldlab.variant('search')}".encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


def run(provider: Any, lab: Lab, user: str, *, override: str | None = None) -> bytes:
    app = OpenTelemetryMiddleware(
        FieldLabMiddleware(shop, lab=lab, units={"user": "header:X-User-Id"}), tracer_provider=provider
    )
    headers = {"X-User-Id": user}
    if override:
        headers["X-Fieldlab-Override"] = override
    return Client(app).get("/", headers=headers).data


def fieldlab_part(attributes: Any, events: list[tuple[str, Any]]) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    attrs = {k: v for k, v in dict(attributes).items() if k.startswith(A.PREFIX)}
    flags = sorted(((name, dict(a)) for name, a in events if name == A.FLAG_EVENT), key=lambda e: e[1][A.FLAG_KEY])
    return attrs, flags


@pytest.mark.parametrize("who", ["in both", "held out", "forced"])
def test_fieldlab_writes_the_same_attributes_and_events_through_an_api_only_tracer_provider(who: str) -> None:
    lab = make_lab()
    users = (f"user-{i}" for i in range(10_000))
    override = None
    if who == "held out":
        user = next(u for u in users if lab.assign("search", u).holdout and lab.assign("checkout-redesign", u).variant)
    else:
        user = next(u for u in users if lab.assign("search", u).variant and lab.assign("checkout-redesign", u).variant)
    if who == "forced":
        forced = "treatment" if lab.assign("checkout-redesign", user).variant == "control" else "control"
        override = lab.make_token("checkout-redesign", forced, 60)

    exporter = InMemorySpanExporter()
    sdk = SdkTracerProvider()
    sdk.add_span_processor(SimpleSpanProcessor(exporter))
    sdk_body = run(sdk, lab, user, override=override)
    (sdk_span,) = exporter.get_finished_spans()
    expected = fieldlab_part(sdk_span.attributes, [(e.name, e.attributes) for e in sdk_span.events])

    api = ApiOnlyTracerProvider()
    before = time.time_ns()
    api_body = run(api, lab, user, override=override)
    after = time.time_ns()
    (span,) = api.spans
    assert span.kind is SpanKind.SERVER and span.ended
    assert api_body == sdk_body
    got = fieldlab_part(span.values, [(name, attrs) for name, attrs, _ in span.recorded_events])
    assert got == expected
    # the content is what the schema says, not merely the same twice
    attrs, flags = got
    assert attrs[A.CONFIG_VERSION] == lab.version and A.unit_attr("user") in attrs
    assert attrs[A.exposed_attr("banner")] is True and attrs[A.exposed_attr("checkout-redesign")] is True
    assert attrs[A.variant_attr("checkout-redesign")] == (
        forced if who == "forced" else lab.assign("checkout-redesign", user).variant
    )
    assert attrs.get(A.forced_attr("checkout-redesign")) is (True if who == "forced" else None)
    assert attrs.get(A.holdout_attr("hold")) is (True if who == "held out" else None)
    assert [f[1][A.FLAG_KEY] for f in flags] == sorted(
        k[len(A.EXPOSED_PREFIX) :] for k in attrs if k.startswith(A.EXPOSED_PREFIX)
    )
    # through the public calls only, one set_attributes for the start, each exposure as it happens
    assert span.calls[0][0] == "set_attributes" and A.CONFIG_VERSION in span.calls[0][1]
    assert {c[0] for c in span.calls} <= {"set_attributes", "set_attribute", "add_event"}
    assert all(before <= ts <= after for _, _, ts in span.recorded_events)
