"""Helpers of the adapter tests: real servers on 127.0.0.1, span files read back, one in-memory SDK.

Servers run as subprocesses (gunicorn for WSGI, uvicorn for ASGI), one per
module fixture, each on a free port, each writing its spans with the real OTel
SDK to OTLP JSON lines files that the tests read back. In-process tests share
one global SDK tracer provider with an in-memory exporter (a process may set
the global provider only once).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
LAB_PATH = HERE / "lab.toml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One app under a real server, started on a free port, spans in ``span_dir``."""

    def __init__(
        self, server: str, target: str, span_dir: Path, env: dict[str, str] | None = None, workers: int = 1
    ) -> None:
        self.server, self.target, self.span_dir = server, target, span_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "FIELDLAB_TEST_SPANS": str(span_dir),
            "FIELDLAB_TEST_LAB": str(LAB_PATH),
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
            **(env or {}),
        }
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = span_dir / "server.log"

    def command(self) -> list[str]:
        if self.server == "gunicorn":
            return [
                str(BIN / "gunicorn"),
                "-w",
                str(self.workers),
                "-b",
                f"127.0.0.1:{self.port}",
                "--chdir",
                str(HERE),
                "--log-level",
                "warning",
                "--graceful-timeout",
                "2",
                self.target,
            ]
        # A long keep-alive: uvicorn closes a connection 5 s after its last response by default, and a test
        # client driving hundreds of requests on two shared cores can take that long to send its next one
        # on that connection; the close then races the request and the client reads a reset (ReadError).
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--app-dir",
            str(HERE),
            "--log-level",
            "warning",
            "--no-access-log",
            "--workers",
            str(self.workers),
            "--timeout-keep-alive",
            "120",
            self.target,
        ]

    def start(self) -> Server:
        self.span_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(),
                env=self.env,
                cwd=str(HERE),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.target} under {self.server} exited:\n{self.log.read_text()}")
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.target} under {self.server} did not answer:\n{self.log.read_text()}")

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        # uvicorn re-raises SIGTERM after its graceful shutdown, which skips atexit (and so the
        # final flush of a batch span processor); SIGINT ends it through KeyboardInterrupt instead.
        sig = signal.SIGINT if self.server == "uvicorn" else signal.SIGTERM
        try:
            os.killpg(proc.pid, sig)  # the server's own process group (start_new_session)
            proc.wait(timeout=5)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=5)

    def log_tail(self, lines: int = 60) -> str:
        """The end of the server's output, for failure messages."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no server log: {exc})"

    def spans(self) -> list[dict[str, Any]]:
        return read_spans(self.span_dir)


def _value(v: dict[str, Any]) -> Any:
    if "stringValue" in v:
        return v["stringValue"]
    if "boolValue" in v:
        return v["boolValue"]
    if "intValue" in v:
        return int(v["intValue"])
    if "doubleValue" in v:
        return float(v["doubleValue"])
    if "arrayValue" in v:
        return [_value(x) for x in v["arrayValue"].get("values", [])]
    return None


def _attrs(items: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {a["key"]: _value(a.get("value", {})) for a in items or ()}


def read_spans(directory: Path) -> list[dict[str, Any]]:
    """Every span in the OTLP JSON lines files of ``directory``, flattened."""
    out: list[dict[str, Any]] = []
    for path in sorted(Path(directory).glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                continue  # a line still being written
            for rs in doc.get("resourceSpans", []):
                for ss in rs.get("scopeSpans", []):
                    for s in ss.get("spans", []):
                        out.append(
                            {
                                "trace_id": s["traceId"],
                                "span_id": s["spanId"],
                                "name": s["name"],
                                "kind": s.get("kind"),
                                "attrs": _attrs(s.get("attributes")),
                                "events": [
                                    {"name": e["name"], "attrs": _attrs(e.get("attributes"))}
                                    for e in s.get("events", [])
                                ],
                            }
                        )
    return out


def server_spans_by_trace(server: Server, trace_ids: set[str], timeout: float = 20) -> dict[str, list[dict[str, Any]]]:
    """SERVER spans (kind 2) of the given traces, waiting until each trace has one."""
    deadline = time.monotonic() + timeout
    while True:
        found: dict[str, list[dict[str, Any]]] = {}
        for s in server.spans():
            if s["kind"] == 2 and s["trace_id"] in trace_ids:
                found.setdefault(s["trace_id"], []).append(s)
        if len(found) >= len(trace_ids) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


class MemoryOtel:
    """The one global SDK provider of this test process, with an in-memory exporter."""

    def __init__(self) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            trace.set_tracer_provider(TracerProvider())
            provider = trace.get_tracer_provider()
        self.provider = provider
        self.exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))  # type: ignore[attr-defined]

    def clear(self) -> None:
        self.exporter.clear()

    def server_spans(self) -> list[Any]:
        from opentelemetry.trace import SpanKind

        return [s for s in self.exporter.get_finished_spans() if s.kind is SpanKind.SERVER]


def fieldlab_attrs(attrs: Any, prefix: str) -> dict[str, Any]:
    return {k: v for k, v in dict(attrs).items() if k.startswith(prefix)}


def memory_otel() -> MemoryOtel:
    """The process-wide in-memory SDK (created on first use)."""
    if not _memory:
        _memory.append(MemoryOtel())
    return _memory[0]


_memory: list[MemoryOtel] = []
