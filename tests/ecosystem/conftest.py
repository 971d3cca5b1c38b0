"""Fixtures of the ecosystem tests (OpenFeature, auto-instrumentation, the pytest plugin)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

_exporter: InMemorySpanExporter | None = None


def _memory_exporter() -> InMemorySpanExporter:
    """One in-memory exporter on the process's one global SDK provider (set once per process)."""
    global _exporter
    if _exporter is None:
        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            trace.set_tracer_provider(TracerProvider())
            provider = trace.get_tracer_provider()
        _exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(_exporter))  # type: ignore[attr-defined]
    return _exporter


@pytest.fixture
def spans() -> Iterator[Any]:
    exporter = _memory_exporter()
    exporter.clear()
    yield exporter
    exporter.clear()
