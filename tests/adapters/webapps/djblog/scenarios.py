"""Scenarios run in a fresh process (Django settings are per process): ``python -m webapps.djblog.scenarios NAME``.

Each prints one JSON line the test reads: what the blog answered through
Django's test client, and what landed on the SERVER span (in-memory SDK).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapps.djblog.settings")
if os.environ.get("DJBLOG_NO_ASGI_OTEL") == "1":  # as if opentelemetry-instrumentation-asgi were not installed
    sys.modules["opentelemetry.instrumentation.asgi"] = None  # type: ignore[assignment]

import django
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

EXPORTER = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
trace.set_tracer_provider(_provider)
django.setup()
from opentelemetry.instrumentation.django import DjangoInstrumentor

DjangoInstrumentor().instrument()

from django.core.management import call_command
from django.test import AsyncClient, Client

from fieldlab.adapters.django import _load_lab


def _page(html: str) -> dict[str, str]:
    out = dict(re.findall(r'data-(variant|words)="([^"]*)"', html))
    for name in ("welcome", "sidebar", "missing"):
        m = re.search(rf'<p id="{name}">([^<]*)</p>', html)
        out[name] = m.group(1) if m else "?"
    return out


def _span() -> dict[str, Any]:
    spans = [s for s in EXPORTER.get_finished_spans() if s.kind is SpanKind.SERVER]
    EXPORTER.clear()
    return {k: v for k, v in dict(spans[-1].attributes or {}).items() if k.startswith("fieldlab.")} if spans else {}


def _lab() -> Any:
    from django.conf import settings

    return _load_lab(settings.FIELDLAB["lab"])


def _expected(key: str, unit: str | None) -> str | None:
    return _lab().assign(key, unit).variant if unit else None


def template() -> dict[str, Any]:
    call_command("migrate", verbosity=0)
    client = Client()
    r = client.get("/")
    visitor = r.cookies["fieldlab_visitor"].value
    session_key = r.cookies["sessionid"].value if "sessionid" in r.cookies else None
    first = {
        "status": r.status_code,
        "page": _page(r.content.decode()),
        "span": _span(),
        "visitor": visitor,
        "session_key": session_key,
        "expect_quote": _expected("home-quote", visitor),
        "expect_sidebar": _expected("sidebar", session_key),
        "expect_words": _lab().assign("home-quote", visitor).params["words"],
    }
    lazy = client.get("/lazy")
    return {"first": first, "lazy": {"page": _page(lazy.content.decode()), "span": _span()}}


def session() -> dict[str, Any]:
    from django.contrib.auth.models import User

    call_command("migrate", verbosity=0)
    User.objects.filter(username="ada").delete()
    user = User.objects.create_user("ada", password="pw-ada-123")
    client = Client()
    r1 = client.get("/who")
    anon_key = r1.json()["session_key"]
    r2 = client.get("/")
    again_key = client.cookies["sessionid"].value if "sessionid" in client.cookies else None
    page_anon = _page(r2.content.decode())
    _span()
    r3 = client.post("/login", {"username": "ada", "password": "pw-ada-123"})
    r4 = client.get("/")
    login_key = client.cookies["sessionid"].value
    page_in = _page(r4.content.decode())
    span_in = _span()
    # ASGI: the async middleware path creates the session with asave()
    ar = asyncio.run(AsyncClient().get("/who"))
    return {
        "anon_key": anon_key,
        "again_key": again_key,
        "page_anon": page_anon,
        "expect_sidebar_anon": _expected("sidebar", anon_key),
        "login_status": r3.status_code,
        "login_key": login_key,
        "page_in": page_in,
        "span_in": span_in,
        "expect_sidebar_in": _expected("sidebar", login_key),
        "expect_welcome": _expected("welcome", str(user.pk)),
        "user_pk": str(user.pk),
        "asgi_key": ar.json()["session_key"],
    }


def check() -> dict[str, Any]:
    """``call_command("check")``: the ids it reports (it raises SystemCheckError on errors)."""
    from django.core.management.base import SystemCheckError

    try:
        call_command("check")
        return {"error": None}
    except SystemCheckError as exc:
        return {"error": str(exc)}


def _visits(path: str) -> dict[str, Any]:
    """30 fresh visitors, two requests each: how many pages showed another visitor's variant."""
    wrong = 0
    pages = 0
    headers: dict[str, str] = {}
    for _ in range(30):
        client = Client()
        for _ in range(2):
            r = client.get(path)
            visitor = client.cookies["fieldlab_visitor"].value
            pages += 1
            wrong += _page(r.content.decode())["variant"] != _expected("home-quote", visitor)
            headers = {"vary": r.headers.get("Vary"), "cache_control": r.headers.get("Cache-Control")}
    return {"pages": pages, "wrong": wrong, "last": headers}


def _counts(visits: dict[str, Any]) -> dict[str, Any]:
    return {"pages": visits["pages"], "wrong": visits["wrong"]}


def cached() -> dict[str, Any]:
    """Fresh visitors on cache_page views: the docs' recipe, fieldlab's decorator, and neither."""
    call_command("migrate", verbosity=0)
    paths = ("/cached", "/cached-naive", "/cached-auto", "/cached-auto-lazy")
    out: dict[str, Any] = {}
    for path in paths:
        visits = _visits(path)
        out[path] = _counts(visits)
        out[path + " headers"] = visits["last"]
    from django.core.cache import cache

    cache.clear()
    return out


def sitecache() -> dict[str, Any]:
    """Fresh visitors on a plain view under Django's per-site cache middleware (DJBLOG_ORDER=sitecache)."""
    call_command("migrate", verbosity=0)
    out = _visits("/")
    out["health"] = dict(Client().get("/health").headers)  # reads no variant: left alone
    return out


def asgi_span() -> dict[str, Any]:
    """Requests through Django's real ASGI handler: what fieldlab logged and how many SERVER spans there were."""
    import logging

    from django.core.asgi import get_asgi_application

    call_command("migrate", verbosity=0)
    logged: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logged.append(record.getMessage())

    logging.getLogger("fieldlab").addHandler(Keep(logging.WARNING))
    app = get_asgi_application()
    EXPORTER.clear()

    async def get(path: str) -> int:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"testserver")],
            "server": ("127.0.0.1", 80),
            "client": ("127.0.0.1", 5000),
        }
        sent: list[dict[str, Any]] = []
        requested = False
        done = asyncio.Event()

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await done.wait()  # a client that stays until the response is complete
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                done.set()

        await app(scope, receive, send)
        return int(sent[0]["status"])

    statuses = [asyncio.run(get("/")) for _ in range(3)]
    spans = [s for s in EXPORTER.get_finished_spans() if s.kind is SpanKind.SERVER]
    return {"statuses": statuses, "server_spans": len(spans), "asgi_warnings": [m for m in logged if "under ASGI" in m]}


SCENARIOS = {
    "asgi_span": asgi_span,
    "cached": cached,
    "sitecache": sitecache,
    "template": template,
    "session": session,
    "check": check,
}

if __name__ == "__main__":
    print(json.dumps(SCENARIOS[sys.argv[1]]()))
