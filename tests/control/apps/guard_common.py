"""What the guardrail test apps share: the lab from GUARD_TEST_LAB, spans to OTLP JSON files in GUARD_TEST_SPANS.

``/checkout`` (unit: the X-User-Id header) fails 10 % of the requests of the
``bad`` variant of experiment ``checkout``; ``control`` and the A/A variant
``aa`` never fail. ``/search`` (unit: the X-Session-Id header) fails 10 % of
all its requests whatever the variant: the environment, not a variant, is
burning there. Every answer says which process served it, which variant and
reason the request got, and what the process knows of the state store.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import fieldlab
from fieldlab import context

UNITS = {"user": "header:X-User-Id", "session": "header:X-Session-Id"}
_rnd = random.Random()


def setup(service: str) -> fieldlab.Lab:
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.json.file import FileSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
    directory = os.environ["GUARD_TEST_SPANS"]
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"spans-{service}-{os.getpid()}.jsonl")
    provider.add_span_processor(SimpleSpanProcessor(FileSpanExporter(path)))
    trace.set_tracer_provider(provider)
    return fieldlab.Lab.from_file(os.environ["GUARD_TEST_LAB"])


def answer(lab: fieldlab.Lab, experiment: str) -> tuple[dict[str, Any], int]:
    """The JSON body and status of one request of ``experiment``'s endpoint."""
    ctx = context.current()
    a = ctx.assignments.get(experiment) if ctx is not None else None
    variant = a.variant if a is not None else None
    snap = lab.state_snapshot
    fail = (experiment == "search" or variant == "bad") and _rnd.random() < 0.10
    body = {
        "pid": os.getpid(),
        "t": time.time(),
        "variant": variant,
        "reason": a.reason if a else None,
        "paused": a.paused if a else None,
        "store": snap.status if snap is not None else None,
        "seq": snap.state.seq if snap is not None and snap.state is not None else None,
        "read_at": snap.read_at if snap is not None else None,
        "pauses": sorted(f"{k}/{v}" for k, vs in lab.paused_variants.items() for v in vs),
    }
    return body, 500 if fail else 200
