"""A bare WSGI test app wrapped in fieldlab's WSGI middleware and OTel's: ``gunicorn webapps.wsgi_app:app``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

from fieldlab.adapters.wsgi import FieldLabMiddleware

from . import common

if common.PROVIDER == "before":
    common.setup_otel("wsgi-test")


def shop(environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ.get("PATH_INFO") == "/health":
        body = b"ok"
    else:
        body = json.dumps(common.shop_payload(environ.get("HTTP_X_USER_ID"))).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def _fieldlab(inner: Any) -> Any:
    return FieldLabMiddleware(inner, lab=common.lab(), units=common.UNITS, headers=common.HEADERS)


if common.ORDER == "otel_outer":
    app = OpenTelemetryMiddleware(_fieldlab(shop))
else:
    app = _fieldlab(OpenTelemetryMiddleware(shop))

if common.PROVIDER == "after":
    common.setup_otel("wsgi-test")
