"""Flask under gunicorn following a bandit's weights in the lab state; spans to OTLP JSON files.

``/hero`` (unit: the X-User-Id header) reads experiment ``hero-banner`` and
converts (``app.cart.added = true`` on the SERVER span) with 40 % for the
``bold`` arm and 5 % for the others. The answer says which process served it,
the variant, reason and period it got, and the weights version the process
has in force.
"""

from __future__ import annotations

import os
import random
from typing import Any

import flask
import guard_common as common
from opentelemetry import trace
from opentelemetry.instrumentation.flask import FlaskInstrumentor

import fieldlab
from fieldlab.adapters.flask import FieldLab

KEY = "hero-banner"
lab = common.setup("bandit")
app = flask.Flask(__name__)
_rnd = random.Random()


@app.get("/health")
def health() -> str:
    return "ok"


@app.get("/hero")
def hero() -> dict[str, Any]:
    a = fieldlab.assignment(KEY)
    if a is None:
        return {"pid": os.getpid(), "variant": None, "reason": None, "period": None, "version": None}
    if a.variant is not None and _rnd.random() < (0.40 if a.variant == "bold" else 0.05):
        trace.get_current_span().set_attribute("app.cart.added", True)
    view = lab.bandit_views.get(KEY)
    return {
        "pid": os.getpid(),
        "variant": a.variant,
        "reason": a.reason,
        "period": a.period,
        "version": view.version if view is not None else None,
    }


FlaskInstrumentor().instrument_app(app)
FieldLab(app, lab=lab, units={"user": "header:X-User-Id"})
