"""Telemetry: unit-id hashing, the recorder's schema, the lazily added span processor."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from fieldlab import Experiment, Holdout, Lab, Layer, context, telemetry
from fieldlab import attributes as A


def make_lab(**kw: Any) -> Lab:
    return Lab(
        [
            Experiment("checkout-redesign", {"control": 1, "treatment": 1}),
            Experiment("search", {"a": 1, "b": 1}, layer="ranking", layer_range=(0, 100)),
        ],
        layers=[Layer("ranking")],
        holdouts=[Holdout("hold", 50, ["checkout-redesign"])],
        **kw,
    )


@pytest.fixture
def tracer() -> Any:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(telemetry.FieldLabSpanProcessor())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("t"), exporter


def test_unit_hash_is_hmac_sha256_truncated() -> None:
    expected = "h1:" + hmac.new(b"key", b"alice@example.com", hashlib.sha256).hexdigest()[:16]
    assert telemetry.UnitHasher(b"key")("alice@example.com") == expected


def test_hash_key_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FIELDLAB_SECRET", raising=False)
    assert telemetry.unit_hash_key(make_lab()) == telemetry.DEFAULT_UNIT_HASH_KEY
    assert telemetry.unit_hash_key(make_lab(secret="s")) == b"s"
    monkeypatch.setenv("HK", "from-env")
    assert telemetry.unit_hash_key(make_lab(secret="s", settings={"unit_hash_key_env": "HK"})) == b"from-env"


def test_recorder_writes_the_schema_and_late_exposures(tracer: Any) -> None:
    t, exporter = tracer
    lab = make_lab(secret="s")
    user = next(f"u{i}" for i in range(1000) if lab.assign("checkout-redesign", f"u{i}").variant)
    held = next(f"u{i}" for i in range(1000) if lab.assign("checkout-redesign", f"u{i}").holdout)
    rec = telemetry.Recorder(lab)
    for unit in (user, held):
        ctx = context.start(lab, {"user": unit})
        rec.hook(ctx)
        token = context.bind(ctx)
        try:
            with t.start_as_current_span("GET /", kind=SpanKind.SERVER):
                assert ctx.server_span is not None  # the processor attached it at start
                with t.start_as_current_span("inner", kind=SpanKind.SERVER):
                    pass  # only the first server span is the request's
                context.variant("checkout-redesign")
                context.variant("search")
                ctx.event(A.FAULT_EVENT, {A.FAULT_KIND: "latency"})
                ctx.fault_injected = True
        finally:
            context.reset(token)
    spans = {s.name: s for s in exporter.get_finished_spans() if s.name == "GET /"}
    first, second = [s for s in exporter.get_finished_spans() if s.name == "GET /"]
    a = dict(first.attributes)
    assert a[A.variant_attr("checkout-redesign")] == lab.assign("checkout-redesign", user).variant
    assert a[A.exposed_attr("checkout-redesign")] is True and a[A.exposed_attr("search")] is True
    assert a[A.unit_attr("user")] == telemetry.UnitHasher(b"s")(user)
    assert a[A.CONFIG_VERSION] == lab.version and a[A.FAULT_INJECTED] is True
    flags = {e.attributes[A.FLAG_KEY]: e.attributes for e in first.events if e.name == A.FLAG_EVENT}
    assert flags["search"][A.FLAG_SET_ID] == "ranking"
    assert A.FLAG_SET_ID not in flags["checkout-redesign"]
    assert [e.name for e in first.events].count(A.FAULT_EVENT) == 1
    b = dict(second.attributes)
    assert b[A.holdout_attr("hold")] is True
    assert A.variant_attr("checkout-redesign") not in b and A.exposed_attr("checkout-redesign") not in b
    assert all(A.PREFIX not in k for s in exporter.get_finished_spans() if s.name == "inner" for k in s.attributes)
    assert spans


def test_override_is_recorded_as_forced_with_static_reason(tracer: Any) -> None:
    t, exporter = tracer
    lab = make_lab(secret="s")
    user = next(f"u{i}" for i in range(1000) if lab.assign("checkout-redesign", f"u{i}").variant == "control")
    ctx = context.start(
        lab, {"user": user}, overrides=lab.verify_overrides([lab.make_token("checkout-redesign", "treatment", 60)])
    )
    telemetry.Recorder(lab).hook(ctx)
    token = context.bind(ctx)
    try:
        with t.start_as_current_span("GET /", kind=SpanKind.SERVER):
            context.variant("checkout-redesign")
    finally:
        context.reset(token)
    span = exporter.get_finished_spans()[0]
    assert span.attributes[A.forced_attr("checkout-redesign")] is True
    assert span.events[0].attributes[A.FLAG_REASON] == "static"


def test_unknown_unit_id_mode_is_a_config_error() -> None:
    with pytest.raises(Exception, match="lab.unit_ids"):
        telemetry.Recorder(make_lab(settings={"unit_ids": "plain"}))


SCRIPT = """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from werkzeug.test import Client
from fieldlab import Experiment, Lab, telemetry
from fieldlab.adapters.wsgi import FieldLabMiddleware
def app(environ, start_response):
    start_response("200 OK", [])
    return [b""]
mw = FieldLabMiddleware(app, lab=Lab([Experiment("e", {"a": 1, "b": 1})]), units={"user": "header:X-U"})
assert telemetry.ensure_processor() is False  # no SDK provider yet: nothing to add to
trace.set_tracer_provider(TracerProvider())
for _ in range(3):
    Client(mw).get("/", headers={"X-U": "u"})
FieldLabMiddleware(app, lab=Lab([]))
procs = trace.get_tracer_provider()._active_span_processor._span_processors
print(sum(isinstance(p, telemetry.FieldLabSpanProcessor) for p in procs))
"""


def test_processor_is_added_once_lazily_when_the_provider_appears_later() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", SCRIPT], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "1"


def _user_in(lab: Lab, key: str) -> str:
    return next(f"u{i}" for i in range(1000) if lab.assign(key, f"u{i}").in_experiment)


def test_request_inside_the_instrumentation_writes_each_exposure_at_the_time_of_the_read(tracer: Any) -> None:
    import time

    from opentelemetry import trace

    from fieldlab import _request

    t, exporter = tracer
    lab = make_lab()
    user = _user_in(lab, "checkout-redesign")
    cfg = _request.AdapterConfig(lab, units={"user": "header:X-U"})
    expected = lab.assign("checkout-redesign", user).variant
    events = []
    for _ in range(2):  # the first request of these units prepares the event, the second takes the direct path
        with t.start_as_current_span("GET /", kind=SpanKind.SERVER) as span:
            ctx = _request.begin(cfg, None, {"x-u": user}, "/", "GET")
            assert ctx is not None and ctx.server_span is span
            assert span.attributes[A.variant_attr("checkout-redesign")] == expected  # written at the start
            token = context.bind(ctx)
            time.sleep(0.002)
            before = time.time_ns()
            assert context.variant("checkout-redesign") == expected
            assert context.variant("checkout-redesign") == expected  # a second read adds nothing
            after = time.time_ns()
            time.sleep(0.002)
            _request.end(ctx, token)
            assert trace.get_current_span() is span
        (s,) = [s for s in exporter.get_finished_spans() if s.name == "GET /"]
        exporter.clear()
        assert s.attributes[A.exposed_attr("checkout-redesign")] is True
        assert s.attributes[A.CONFIG_VERSION] == lab.version
        (event,) = [e for e in s.events if e.name == A.FLAG_EVENT]
        assert before <= event.timestamp <= after  # the moment of the read
        events.append(event)
    assert events[0].attributes == events[1].attributes
    assert dict(events[1].attributes)[A.FLAG_KEY] == "checkout-redesign"
    assert dict(events[1].attributes)[A.FLAG_VARIANT] == expected


def test_an_exposure_after_the_span_ended_is_not_written_and_never_raises(tracer: Any) -> None:
    from opentelemetry import trace

    from fieldlab import _request

    t, exporter = tracer
    lab = make_lab()
    cfg = _request.AdapterConfig(lab, units={"user": "header:X-U"})
    span = t.start_span("GET /", kind=SpanKind.SERVER)
    with trace.use_span(span, end_on_exit=False):
        ctx = _request.begin(cfg, None, {"x-u": _user_in(lab, "checkout-redesign")}, "/", "GET")
        token = context.bind(ctx)
        span.end()
        errors = telemetry.stats["recorder_errors"]
        assert context.variant("checkout-redesign") is not None
        _request.end(ctx, token)
    assert telemetry.stats["recorder_errors"] == errors
    (s,) = exporter.get_finished_spans()
    assert A.exposed_attr("checkout-redesign") not in s.attributes
    assert not [e for e in s.events if e.name == A.FLAG_EVENT]
