"""Flask under gunicorn: the same points as the ASGI app, standing in for a second service."""

from __future__ import annotations

import time

import fault_common as common
import flask
from opentelemetry.instrumentation.flask import FlaskInstrumentor

import fieldlab
from fieldlab.adapters.flask import FieldLab

lab = common.setup("fault-wsgi")
app = flask.Flask(__name__)


@fieldlab.fault_point("db.query")
def query_db() -> int:
    return 3


@app.get("/health")
def health() -> str:
    return "ok"


@app.get("/db")
def db() -> dict:  # type: ignore[type-arg]
    t0 = time.monotonic()
    rows = query_db()
    return {"rows": rows, "took_ms": (time.monotonic() - t0) * 1000}


@app.post("/charge")
def charge() -> str:
    with fieldlab.fault_point("payments.charge"):
        return "charged"


@app.errorhandler(TimeoutError)
def timeout(exc: Exception) -> tuple[str, int]:
    return "upstream timeout", 504


# OTel first, so its server span (and the trace id that fault rates hash) exists when fieldlab starts the request.
FlaskInstrumentor().instrument_app(app)
FieldLab(app, lab=lab, units=common.UNITS)
