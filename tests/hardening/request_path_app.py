"""The app of the request-path hardening tests: ``gunicorn request_path_app:app`` (Flask) and
``uvicorn request_path_app:asgi_app`` (Starlette).

The ``user`` unit comes from the JSON body, as many apps resolve it, so a client
controls the ``str`` fieldlab receives; the ``account`` unit comes from a header,
so a client controls its bytes. Each response says which process answered, the
units fieldlab resolved and what each experiment gave.
"""

from __future__ import annotations

import os
from typing import Any

import fieldlab
from fieldlab import Experiment, Lab

LAB = Lab(
    [
        Experiment("by-user", {"control": 1, "treatment": 1}),
        Experiment("by-account", {"control": 1, "treatment": 1}, unit="account"),
    ]
)


def payload() -> dict[str, Any]:
    ctx = fieldlab.context.current()
    return {
        "pid": os.getpid(),
        "layout": fieldlab.choose("by-user", {"treatment": "one-page"}, "classic"),
        "units": dict(ctx.units) if ctx else None,
        "assignments": {k: a.to_dict() for k, a in ctx.assignments.items()} if ctx else None,
        "invalid_units": LAB.stats.get("invalid_units"),
    }


# ---------------------------------------------------------------- Flask (WSGI, under gunicorn)
import flask

from fieldlab.adapters.flask import FieldLab

app = flask.Flask(__name__)


def user_from_body(request: Any) -> Any:
    body = request.get_json(silent=True)
    return body.get("user") if isinstance(body, dict) else None


@app.get("/health")
def health() -> str:
    return "ok"


@app.route("/checkout", methods=["GET", "POST"])
def checkout() -> Any:
    return flask.jsonify(payload())


FieldLab(app, lab=LAB, units={"user": user_from_body, "account": "header:X-Account-Id"})


# ---------------------------------------------------------------- Starlette (ASGI, under uvicorn)
def _asgi() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    from fieldlab.adapters.asgi import FieldLabMiddleware

    async def health(request: Any) -> Any:
        return PlainTextResponse("ok")

    async def checkout(request: Any) -> Any:
        return JSONResponse(payload())

    star = Starlette(routes=[Route("/health", health), Route("/checkout", checkout, methods=["GET", "POST"])])
    # ASGI resolvers cannot read the body (they are sync), so here the user comes from a header too
    star.add_middleware(
        FieldLabMiddleware, lab=LAB, units={"user": "header:X-User-Id", "account": "header:X-Account-Id"}
    )
    return star


asgi_app = _asgi()
