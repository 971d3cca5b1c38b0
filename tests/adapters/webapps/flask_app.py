"""The Flask test app: ``gunicorn webapps.flask_app:app`` from tests/adapters."""

from __future__ import annotations

from flask import Flask, jsonify, request
from opentelemetry.instrumentation.flask import FlaskInstrumentor

from fieldlab.adapters.flask import FieldLab

from . import common

if common.PROVIDER == "before":
    common.setup_otel("flask-test")

app = Flask(__name__)
app.secret_key = "test-only"


@app.get("/health")
def health() -> str:
    return "ok"


@app.get("/shop")
def shop():  # type: ignore[no-untyped-def]
    return jsonify(common.shop_payload(request.headers.get("X-User-Id")))


if common.ORDER == "otel_outer":
    FlaskInstrumentor().instrument_app(app)
    FieldLab(app, lab=common.lab(), units=common.UNITS, headers=common.HEADERS)
else:
    FieldLab(app, lab=common.lab(), units=common.UNITS, headers=common.HEADERS)
    FlaskInstrumentor().instrument_app(app)

if common.PROVIDER == "after":
    common.setup_otel("flask-test")
