"""fieldlab.otel.configure_tracing and SpanFilesExporter, each in a fresh process (the global provider is set once)."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from ecokit import SRC, read_spans

pytest.importorskip("opentelemetry.sdk")

FORKING = """
import os
from opentelemetry import trace
from fieldlab.otel import configure_tracing
provider = configure_tracing("shop/api", exporter="files", directory={directory!r})
tracer = trace.get_tracer("t")
with tracer.start_as_current_span("parent-before-fork"):
    pass
pid = os.fork()
with tracer.start_as_current_span("child" if pid == 0 else "parent"):
    pass
provider.shutdown()
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
print(os.getpid(), flush=True)
"""


def run(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(SRC), **(env or {})},
        check=False,
    )


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_files_one_per_process_even_after_fork(tmp_path):
    done = run(FORKING.format(directory=str(tmp_path)))
    assert done.returncode == 0, done.stderr
    parent = int(done.stdout.strip())
    by_file: dict[str, set[str]] = {}
    for span in read_spans(tmp_path):
        by_file.setdefault(span["file"], set()).add(span["name"])
    assert f"spans-shop_api-{parent}.jsonl" in by_file
    assert by_file.pop(f"spans-shop_api-{parent}.jsonl") == {"parent-before-fork", "parent"}
    (child,) = by_file.values()
    assert child == {"child"}  # the child's spans in its own file, never in the parent's


def test_otlp_exporter_posts_to_the_endpoint(tmp_path):
    received: list[tuple[str, str]] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            received.append((self.path, self.headers.get("Content-Type", "")))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        done = run(f"""
            from opentelemetry import trace
            from fieldlab.otel import configure_tracing
            provider = configure_tracing("shop", endpoint="http://127.0.0.1:{server.server_port}")
            with trace.get_tracer("t").start_as_current_span("one"):
                pass
            provider.shutdown()
        """)
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stderr
    assert received == [("/v1/traces", "application/x-protobuf")]


def test_default_is_files_in_fieldlab_spans_dir_and_unknown_exporter_is_a_config_error(tmp_path: Path):
    done = run(
        """
        from opentelemetry import trace
        from fieldlab import ConfigError
        from fieldlab.otel import configure_tracing
        try:
            configure_tracing("x", exporter="zipkin")
        except ConfigError as exc:
            print(exc)
        provider = configure_tracing("x")
        with trace.get_tracer("t").start_as_current_span("one"):
            pass
        provider.shutdown()
    """,
        env={"FIELDLAB_SPANS_DIR": str(tmp_path), "OTEL_EXPORTER_OTLP_ENDPOINT": ""},
    )
    assert done.returncode == 0, done.stderr
    assert "unknown exporter 'zipkin'" in done.stdout and '"otlp" or "files"' in done.stdout
    assert [s["name"] for s in read_spans(tmp_path)] == ["one"]
