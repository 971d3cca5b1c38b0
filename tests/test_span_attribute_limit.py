"""Over the span attribute limit, fieldlab leaves its own attributes out, never another instrumentation's.

An SDK span holds 128 attributes by default and drops its oldest to make room
for a new one. With 200 experiments fieldlab used to push out ``http.method``,
``http.route``, ``fieldlab.config.version`` and the unit (issue 10). Now it
writes within the room left, by priority, packs every variant into
``fieldlab.assignments`` and counts what it left out.
"""

from __future__ import annotations

import logging
from typing import Any

import flask
import pytest
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import fieldlab
from fieldlab import ConfigError, Experiment, Lab, telemetry
from fieldlab import attributes as A
from fieldlab.adapters.flask import FieldLab

READ = ("exp-000", "exp-117", "exp-199")  # what the view reads: exposed during the request


def many_experiments(n: int = 200, **settings: Any) -> Lab:
    return Lab(
        [Experiment(f"exp-{i:03d}", {"control": 1, "treatment": 1}) for i in range(n)],
        secret="limit",
        settings=settings,
    )


def shop(order: str, lab: Lab, provider: TracerProvider) -> flask.Flask:
    app = flask.Flask(f"limit-{order}")

    @app.get("/items/<int:item>")
    def item(item: int) -> Any:
        return {key: fieldlab.variant(key) for key in READ}

    if order == "otel_outer":
        FlaskInstrumentor().instrument_app(app, tracer_provider=provider)
        FieldLab(app, lab=lab, units={"user": "header:X-User-Id"})
    else:
        FieldLab(app, lab=lab, units={"user": "header:X-User-Id"})
        FlaskInstrumentor().instrument_app(app, tracer_provider=provider)
    return app


def memory_provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()  # the default limits: 128 attributes per span
    provider.add_span_processor(telemetry.FieldLabSpanProcessor())  # the order fieldlab_outer needs it
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@pytest.mark.parametrize("order", ["otel_outer", "fieldlab_outer"])
def test_200_experiments_push_out_no_attribute_of_the_instrumentation(
    order: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", raising=False)
    monkeypatch.delenv("OTEL_ATTRIBUTE_COUNT_LIMIT", raising=False)
    lab = many_experiments()
    provider, exporter = memory_provider()
    client = shop(order, lab, provider).test_client()
    left_before, spans_before = telemetry.stats["attributes_left_out"], telemetry.stats["spans_over_limit"]
    with caplog.at_level(logging.WARNING):
        for user in ("ada", "grace"):
            r = client.get("/items/7", headers={"X-User-Id": user})
            assert r.json == {key: lab.assign(key, user).variant for key in READ}
    assert not [rec for rec in caplog.records if rec.name.startswith("opentelemetry")], caplog.text
    spans = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert len(spans) == 2
    left_out = 0
    for span, user in zip(spans, ("ada", "grace"), strict=False):
        attrs = dict(span.attributes)
        assert span.dropped_attributes == 0
        assert len(attrs) <= 128
        # the instrumentation's attributes, from the start and the end of the request
        assert (attrs.get("http.method") or attrs.get("http.request.method")) == "GET"
        assert attrs["http.route"] == "/items/<int:item>"
        assert (attrs.get("http.status_code") or attrs.get("http.response.status_code")) == 200
        # fieldlab's most important ones
        assert attrs[A.CONFIG_VERSION] == lab.version
        assert attrs[A.unit_attr("user")] == telemetry.UnitHasher(b"limit")(user)
        for key in READ:
            assert attrs[A.variant_attr(key)] == lab.assign(key, user).variant
            assert attrs[A.exposed_attr(key)] is True
        assert sorted(e.attributes[A.FLAG_KEY] for e in span.events if e.name == A.FLAG_EVENT) == sorted(READ)
        # every assignment recoverable, and what is written is right
        everything = {key: lab.assign(key, user).variant for key in lab.experiments}
        assert A.unpack_assignments(attrs[A.ASSIGNMENTS]) == everything
        written = {k[len(A.VARIANT_PREFIX) :]: v for k, v in attrs.items() if k.startswith(A.VARIANT_PREFIX)}
        assert written.items() <= everything.items() and 50 < len(written) < 200
        left_out += 200 - len(written)
    assert telemetry.stats["attributes_left_out"] - left_before == left_out
    assert telemetry.stats["spans_over_limit"] - spans_before == 2
    assert "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT" in caplog.text or "attribute_limit" in telemetry._logged


def test_a_raised_limit_writes_every_attribute_and_no_packed_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "512")  # read by the SDK and by fieldlab alike
    lab = many_experiments()
    provider, exporter = memory_provider()
    left_before = telemetry.stats["attributes_left_out"]
    shop("otel_outer", lab, provider).test_client().get("/items/1", headers={"X-User-Id": "ada"})
    (span,) = exporter.get_finished_spans()
    attrs = dict(span.attributes)
    assert sum(k.startswith(A.VARIANT_PREFIX) for k in attrs) == 200
    assert A.ASSIGNMENTS not in attrs and span.dropped_attributes == 0
    assert telemetry.stats["attributes_left_out"] == left_before


def test_few_experiments_never_write_the_packed_attribute(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", raising=False)
    monkeypatch.delenv("OTEL_ATTRIBUTE_COUNT_LIMIT", raising=False)
    lab = many_experiments(20)
    provider, exporter = memory_provider()
    shop("fieldlab_outer", lab, provider).test_client().get("/items/1", headers={"X-User-Id": "ada"})
    (span,) = exporter.get_finished_spans()
    assert A.ASSIGNMENTS not in span.attributes
    assert sum(k.startswith(A.VARIANT_PREFIX) for k in span.attributes) == 20


def test_limit_and_headroom_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "300")
    monkeypatch.setenv("OTEL_ATTRIBUTE_COUNT_LIMIT", "64")
    assert telemetry.span_attribute_limit(many_experiments(1)) == 300  # the span-specific variable wins
    monkeypatch.delenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT")
    assert telemetry.span_attribute_limit(many_experiments(1)) == 64
    assert telemetry.span_attribute_limit(many_experiments(1, span_attribute_limit=1000)) == 1000
    monkeypatch.setenv("OTEL_ATTRIBUTE_COUNT_LIMIT", "unset")
    assert telemetry.span_attribute_limit(many_experiments(1)) is None
    monkeypatch.setenv("OTEL_ATTRIBUTE_COUNT_LIMIT", "lots")
    with pytest.raises(ConfigError, match="OTEL_ATTRIBUTE_COUNT_LIMIT"):
        telemetry.Recorder(many_experiments(1))
    monkeypatch.delenv("OTEL_ATTRIBUTE_COUNT_LIMIT")
    with pytest.raises(ConfigError, match="lab.span_attribute_headroom"):
        telemetry.Recorder(many_experiments(1, span_attribute_headroom=-1))
    with pytest.raises(ConfigError, match="lab.span_attribute_limit"):
        telemetry.Recorder(many_experiments(1, span_attribute_limit="128"))
    assert telemetry.Recorder(many_experiments(1)).attribute_headroom == telemetry.DEFAULT_SPAN_ATTRIBUTE_HEADROOM
