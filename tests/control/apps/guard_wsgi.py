"""Flask under gunicorn (two workers), following the lab state in Redis."""

from __future__ import annotations

import flask
import guard_common as common
from opentelemetry.instrumentation.flask import FlaskInstrumentor

from fieldlab.adapters.flask import FieldLab

lab = common.setup("wsgi")
app = flask.Flask(__name__)


@app.get("/health")
def health() -> str:
    return "ok"


@app.get("/checkout")
def checkout() -> tuple[dict, int]:  # type: ignore[type-arg]
    return common.answer(lab, "checkout")


@app.get("/search")
def search() -> tuple[dict, int]:  # type: ignore[type-arg]
    return common.answer(lab, "search")


FlaskInstrumentor().instrument_app(app)
FieldLab(app, lab=lab, units=common.UNITS)
