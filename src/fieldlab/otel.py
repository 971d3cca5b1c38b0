"""Setting up the OpenTelemetry SDK for fieldlab in one call, and span files that work with forking servers.

>>> from fieldlab.otel import configure_tracing
>>> configure_tracing("shop")                        # doctest: +SKIP
>>> configure_tracing("shop", exporter="otlp", endpoint="http://collector:4318")   # doctest: +SKIP

``configure_tracing`` builds an SDK ``TracerProvider`` (resource
``service.name``), adds a ``BatchSpanProcessor`` with the chosen exporter and
makes it the global provider; if the process already has an SDK provider it
adds the processor to that one instead (a process can set the global
provider only once). Exporters:

* ``"otlp"`` — OTLP over HTTP (``fieldlab[otlp]``), to ``endpoint`` or
  ``$OTEL_EXPORTER_OTLP_ENDPOINT`` (the Collector, Tempo, Jaeger, Phoenix...).
* ``"files"`` — :class:`SpanFilesExporter`: OTLP JSON lines that
  ``fieldlab analyze`` reads, one file per process.

The default is ``"otlp"`` when an endpoint is given or
``$OTEL_EXPORTER_OTLP_ENDPOINT`` is set, else ``"files"``.

Several gunicorn workers: each worker is its own process, so each needs its
own file (two processes appending to one file can interleave partial lines).
:class:`SpanFilesExporter` opens ``spans-<service>-<pid>.jsonl`` in the
process that exports, so this holds whether the provider was set up in each
worker or once in the master with ``--preload`` (the SDK's batch processor
restarts its thread after ``fork``). With OTLP, each worker sends to the
Collector on its own and the Collector merges them. Under
``opentelemetry-instrument`` the same file exporter is the traces exporter
``fieldlab_jsonl`` (``OTEL_TRACES_EXPORTER=fieldlab_jsonl``, directory
``$FIELDLAB_SPANS_DIR``).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["DEFAULT_SPANS_DIR", "SPANS_DIR_ENV", "SpanFilesExporter", "configure_tracing"]

SPANS_DIR_ENV = "FIELDLAB_SPANS_DIR"
DEFAULT_SPANS_DIR = "fieldlab-spans"

try:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
except ImportError:  # pragma: no cover - without the SDK, configure_tracing says what to install
    SpanExporter = object  # type: ignore[misc,assignment]


def _needs(extra: str, module: str) -> ConfigError:
    return ConfigError("exporter", f"{module} is not installed", f"pip install 'fieldlab[{extra}]'")


class SpanFilesExporter(SpanExporter):  # type: ignore[misc,valid-type]
    """OTLP JSON lines in ``directory``/``spans-<service>-<pid>.jsonl``: one file per process, opened lazily.

    ``directory`` defaults to ``$FIELDLAB_SPANS_DIR``, else ``./fieldlab-spans``;
    ``service_name`` to ``$OTEL_SERVICE_NAME``, else ``app``. With no
    arguments it is what ``OTEL_TRACES_EXPORTER=fieldlab_jsonl`` builds.
    The encoding is the ``opentelemetry-exporter-otlp-json-file`` package's.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None, service_name: str | None = None) -> None:
        try:
            from opentelemetry.exporter.otlp.json.file import FileSpanExporter
        except ImportError:
            raise _needs("otel", "opentelemetry-exporter-otlp-json-file") from None
        self._file_exporter = FileSpanExporter
        self.directory = Path(directory or os.environ.get(SPANS_DIR_ENV) or DEFAULT_SPANS_DIR)
        service = service_name or os.environ.get("OTEL_SERVICE_NAME") or "app"
        self.service = re.sub(r"[^A-Za-z0-9_.-]+", "_", service)[:64] or "app"
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._inner: Any = None

    @property
    def path(self) -> Path:
        """The file this process writes."""
        return self.directory / f"spans-{self.service}-{os.getpid()}.jsonl"

    def _exporter(self) -> Any:
        pid = os.getpid()
        if self._pid != pid:  # first export in this process (or in a forked child: not the parent's file)
            with self._lock:
                if self._pid != pid:
                    self.directory.mkdir(parents=True, exist_ok=True)
                    self._inner = self._file_exporter(self.path)
                    self._pid = pid
        return self._inner

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        try:
            exporter = self._exporter()
        except OSError:
            return SpanExportResult.FAILURE
        return exporter.export(spans)  # type: ignore[no-any-return]

    def shutdown(self) -> None:
        inner = self._inner
        if inner is not None and self._pid == os.getpid():
            inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def configure_tracing(
    service_name: str | None = None,
    *,
    exporter: str | None = None,
    directory: str | os.PathLike[str] | None = None,
    endpoint: str | None = None,
    span_exporter: Any = None,
) -> Any:
    """Set up the OpenTelemetry SDK for this process and return its ``TracerProvider``.

    ``exporter`` is ``"otlp"`` or ``"files"`` (see the module docs);
    ``span_exporter`` takes any SDK ``SpanExporter`` instead. ``service_name``
    defaults to ``$OTEL_SERVICE_NAME``, else ``app``.
    """
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise _needs("otel", "opentelemetry-sdk") from None
    service = service_name or os.environ.get("OTEL_SERVICE_NAME") or "app"
    if span_exporter is None:
        endpoint = endpoint or None
        kind = exporter or ("otlp" if endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") else "files")
        if kind == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )
            except ImportError:
                raise _needs("otlp", "opentelemetry-exporter-otlp-proto-http") from None
            if endpoint:
                url = endpoint.rstrip("/")
                span_exporter = OTLPSpanExporter(endpoint=url if url.endswith("/v1/traces") else url + "/v1/traces")
            else:
                span_exporter = OTLPSpanExporter()
        elif kind == "files":
            span_exporter = SpanFilesExporter(directory, service)
        else:
            raise ConfigError(
                "exporter",
                f"unknown exporter {kind!r}",
                'use "otlp" or "files", or pass span_exporter=<an SDK SpanExporter>',
            )
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        trace.set_tracer_provider(TracerProvider(resource=Resource.create({"service.name": service})))
        provider = trace.get_tracer_provider()
    provider.add_span_processor(BatchSpanProcessor(span_exporter))  # type: ignore[attr-defined]
    return provider
