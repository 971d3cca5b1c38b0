"""What every test app shares: the lab, OTel set-up from env vars, the resolvers and the view logic.

Env vars (set by the tests that start servers):
FIELDLAB_TEST_LAB: config path; FIELDLAB_TEST_SPANS: directory for span files;
FIELDLAB_TEST_ORDER: ``fieldlab_outer`` or ``otel_outer``; FIELDLAB_TEST_PROVIDER:
``before`` or ``after`` (set the global tracer provider before or after building the app);
FIELDLAB_TEST_EXPORTER=fail: an exporter that raises on every export.
"""

from __future__ import annotations

import os
from typing import Any

import fieldlab
from fieldlab import Lab

HERE = os.path.dirname(os.path.abspath(__file__))
LAB_PATH = os.environ.get("FIELDLAB_TEST_LAB", os.path.join(HERE, "..", "lab.toml"))
ORDER = os.environ.get("FIELDLAB_TEST_ORDER", "otel_outer")
PROVIDER = os.environ.get("FIELDLAB_TEST_PROVIDER", "before")
#: Experiments the shop view reads (so they are exposed when the unit is in them).
READ_KEYS = ("checkout-redesign", "search-ranking", "price-a", "price-b", "de-only", "team-exp", "req-sampler")

_lab: Lab | None = None


def lab() -> Lab:
    global _lab
    if _lab is None:
        _lab = Lab.from_file(LAB_PATH, reload_interval=0)
    return _lab


class FailingExporter:
    """A span exporter that always raises: telemetry failure must not touch responses."""

    def export(self, spans: Any) -> Any:
        raise RuntimeError("exporter down")

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 0) -> bool:
        return True


def setup_otel(service: str) -> None:
    """One SDK provider per server process, exporting each span to a per-process OTLP JSON lines file."""
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.json.file import FileSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if os.environ.get("FIELDLAB_TEST_EXPORTER") == "fail":
        provider.add_span_processor(SimpleSpanProcessor(FailingExporter()))  # type: ignore[arg-type]
    directory = os.environ.get("FIELDLAB_TEST_SPANS")
    if directory:
        os.makedirs(directory, exist_ok=True)
        exporter = FileSpanExporter(os.path.join(directory, f"spans-{os.getpid()}.jsonl"))
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


def header(request: Any, name: str) -> str | None:
    """A header from any framework's request, or a WSGI environ."""
    headers = getattr(request, "headers", None)
    if headers is not None:
        return headers.get(name)
    if isinstance(request, dict):
        return request.get("HTTP_" + name.upper().replace("-", "_"))
    return None


def team(request: Any) -> str | None:
    """The custom ``team`` unit; raises when asked to, so tests can check a failing resolver."""
    if header(request, "X-Boom"):
        raise RuntimeError("resolver exploded")
    return header(request, "X-Team")


UNITS = {"user": "header:X-User-Id", "team": team}
HEADERS = ["X-Country"]


@fieldlab.switch("checkout-redesign")
def render_checkout() -> str:
    return "classic"


@render_checkout.variant("treatment")
def render_checkout_one_page() -> str:
    return "one-page"


def shop_payload(user: str | None) -> dict[str, Any]:
    """What the view saw: the variants of READ_KEYS and the switched code path."""
    from opentelemetry import trace

    seen = {key: fieldlab.variant(key) for key in READ_KEYS}
    sc = trace.get_current_span().get_span_context()
    return {
        "user": user,
        "variants": seen,
        "render": render_checkout(),
        "page_size": fieldlab.param("search-ranking", "page_size", 20),
        "trace_id": format(sc.trace_id, "032x") if sc.is_valid else None,
    }
