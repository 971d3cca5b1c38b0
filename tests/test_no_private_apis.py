"""fieldlab uses only public APIs of other libraries: no private name of OpenTelemetry, Flask, Django or Starlette.

A private field (``span._attributes``, ``flask.globals._cv_request``...) can be
renamed in any release of its library, and writing into one skips that
library's validation and locks; so ``src/`` must not name one. The scan is
textual and deliberately strict; fieldlab's own private names (``_request``,
``ctx._fault_injected``) are not other libraries' and are not listed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "fieldlab"

#: name -> what it is; each a private name of another library that fieldlab once used or might be tempted to.
PRIVATE = {
    r"\._attributes\b": "the SDK span's or event's private attribute store",
    r"_BoundedAttributes": "an alias used to write into the SDK's attribute store",
    r"\._immutable\b": "BoundedAttributes' private immutability flag",
    r"\._dict\b": "BoundedAttributes' private dict",
    r"\._dq\b": "BoundedList's private deque",
    r"\._add_event\b": "the SDK span's private event append",
    r"\._end_time\b": "the SDK span's private end time (use span.is_recording())",
    r"\._events\b": "the SDK span's private event list",
    r"\._kind\b": "the SDK span's private kind (use span.kind)",
    r"\._limits\b": "the SDK span's private SpanLimits",
    r"\b_Span\b": "the SDK's private span class",
    r"_RUNTIME_CONTEXT": "the API's private runtime context (use opentelemetry.context / trace.get_current_span())",
    r"_SPAN_KEY": "the API's private context key of the current span",
    r"_TRACER_PROVIDER\b": "the API's private global provider (use trace.get_tracer_provider())",
    r"\b_current_context\b": "the runtime context's private ContextVar",
    r"object\.__new__\(\s*_?Event": "an SDK Event built without its constructor",
    r"_cv_request\b": "Flask's private request ContextVar (use flask.request)",
    r"_cv_app\b": "Flask's private app ContextVar (use flask.current_app / flask.g)",
    r"from\s+flask(\.\w+)*\s+import\s+(\([^)]*)?\b_\w": "a private name imported from Flask",
    r"from\s+(django|starlette)(\.\w+)*\s+import\s+(\([^)]*)?\b_\w": "a private name imported from Django/Starlette",
    r"\b(flask|django|starlette|opentelemetry)(\.\w+)*\._[a-z]\w*": "a private module or name of another library",
    r"""['"]_(attributes|immutable|dict|dq|add_event|end_time|events|kind|limits|TRACER_PROVIDER|RUNTIME_CONTEXT"""
    r"""|current_context|cv_request|cv_app)['"]""": "one of the private names above, spelled as a string (getattr)",
}

#: Imports of the OpenTelemetry SDK that src/ may make, by file, and why each is needed.
#: The SDK is optional for fieldlab: everything else goes through the API.
ALLOWED_SDK_IMPORTS = {
    # SpanProcessor is the SDK's public extension point: FieldLabSpanProcessor subclasses it so that
    # fieldlab can be wired outside the instrumentation (on_start sees the server span being started).
    "telemetry.py": {"from opentelemetry.sdk.trace import SpanProcessor as _SpanProcessorBase"},
    # fieldlab.otel.configure_tracing sets up the SDK for the user's app (its whole job), and its span-file
    # exporter implements the SDK's public SpanExporter interface.
    "otel.py": {
        "from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult",
        "from opentelemetry.sdk.resources import Resource",
        "from opentelemetry.sdk.trace import TracerProvider",
        "from opentelemetry.sdk.trace.export import BatchSpanProcessor",
    },
    # the pytest plugin's span-capturing fixture runs a real SDK provider with a public SpanProcessor.
    "testing.py": {"from opentelemetry.sdk.trace import SpanProcessor, TracerProvider"},
}
SDK_IMPORT = re.compile(
    r"^\s*(from\s+opentelemetry\.sdk\b.*|import\s+opentelemetry\.sdk\b.*)$"
    r"|import_module\(\s*['\"]opentelemetry\.sdk",
    re.MULTILINE,
)


def _sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def private_names(text: str) -> list[tuple[int, str, str]]:
    """(line number, the line, what it names) for every private name of another library in ``text``."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for pattern, what in PRIVATE.items():
            if re.search(pattern, line):
                found.append((number, line.strip(), what))
    return found


def test_src_names_no_private_api_of_another_library() -> None:
    problems = [
        f"{path.relative_to(SRC)}:{n}: {line}  <- {what}"
        for path in _sources()
        for n, line, what in private_names(path.read_text(encoding="utf-8"))
    ]
    assert not problems, "private names of other libraries in src/:\n" + "\n".join(problems)


def test_src_imports_the_otel_sdk_only_where_a_public_sdk_class_is_needed() -> None:
    problems = []
    for path in _sources():
        allowed = ALLOWED_SDK_IMPORTS.get(path.name, set())
        for m in SDK_IMPORT.finditer(path.read_text(encoding="utf-8")):
            if m.group(0).strip() not in allowed:
                problems.append(f"{path.relative_to(SRC)}: {m.group(0).strip()}")
    assert not problems, "OpenTelemetry SDK imports in src/ (use the API; see ALLOWED_SDK_IMPORTS):\n" + "\n".join(
        problems
    )


@pytest.mark.parametrize(
    "line",
    [
        "target = getattr(span, '_attributes', None)",
        'provider = getattr(trace, "_TRACER_PROVIDER", None)',
        "d = target._dict",
        "span._add_event(event)",
        "if span._end_time is not None:",
        "limits = span._limits",
        "from flask.globals import _cv_request",
        "from opentelemetry.trace.propagation import _SPAN_KEY",
        "runtime = otel_context._RUNTIME_CONTEXT",
        "provider = trace._TRACER_PROVIDER",
        "event = object.__new__(_Event)",
        "from starlette.middleware import _helper",
        "from django.utils import (_private, public)",
    ],
)
def test_the_scan_finds_each_kind_of_private_name(line: str) -> None:
    assert private_names(line), line


@pytest.mark.parametrize(
    "line",
    [
        "span.set_attributes(attrs)",
        "if ctx._fault_injected:",  # fieldlab's own
        "from . import _request",
        "return flask.request.environ",
        "held = getattr(span, 'attributes', None)",
    ],
)
def test_the_scan_leaves_public_and_own_names_alone(line: str) -> None:
    assert not private_names(line), line
