"""What the fault test apps share: the lab from FAULT_TEST_LAB, OTel spans to files in FAULT_TEST_SPANS.

Each server process gets one SDK TracerProvider writing OTLP JSON lines, so the
test reads back exactly what a collector would receive.
"""

from __future__ import annotations

import os

import fieldlab
from fieldlab import faults

UNITS = {"user": "header:X-User-Id"}


def setup(service: str) -> fieldlab.Lab:
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.json.file import FileSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    directory = os.environ["FAULT_TEST_SPANS"]
    os.makedirs(directory, exist_ok=True)
    provider.add_span_processor(
        SimpleSpanProcessor(FileSpanExporter(os.path.join(directory, f"spans-{service}-{os.getpid()}.jsonl")))
    )
    trace.set_tracer_provider(provider)
    faults.register_exception("db_timeout", TimeoutError)
    return fieldlab.Lab.from_file(os.environ["FAULT_TEST_LAB"])
