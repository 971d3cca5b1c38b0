"""Jinja templates read variants no view passed them: Flask's ``FieldLab``, Starlette's ``Jinja2Templates``."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from fieldlab import Experiment, Lab
from fieldlab import attributes as A
from fieldlab.adapters.jinja import TEMPLATE_GLOBALS, install_globals

TEMPLATE = (
    '<p id="quote">{{ variant("home-quote", "control") }}</p>'
    '<p id="words">{{ param("home-quote", "words", 0) }}</p>'
    '<p id="other">{{ variant("other", "none") }}</p>'
)


def make_lab() -> Lab:
    return Lab(
        [
            Experiment(
                "home-quote",
                {"control": 1, "short": 1},
                unit="user",
                params={"control": {"words": 40}, "short": {"words": 12}},
            ),
            Experiment("other", {"x": 1, "y": 1}, unit="user"),
        ]
    )


def expected(lab: Lab, user: str) -> str:
    a = lab.assign("home-quote", user)
    return f'<p id="quote">{a.variant}</p><p id="words">{a.params["words"]}</p><p id="other">'


def exposed_keys(otel: Any) -> list[str]:
    spans = otel.server_spans()
    assert len(spans) == 1
    return sorted(k[len(A.EXPOSED_PREFIX) :] for k in dict(spans[0].attributes) if k.startswith(A.EXPOSED_PREFIX))


def test_flask_templates_get_variant_and_param(otel: Any) -> None:
    import flask
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    from fieldlab.adapters.flask import FieldLab

    lab = make_lab()
    app = flask.Flask("templates")
    FlaskInstrumentor().instrument_app(app)
    FieldLab(app, lab=lab, units={"user": "header:X-User-Id"})

    @app.get("/")
    def index() -> str:
        return flask.render_template_string(TEMPLATE)  # the view passes no variant

    client = app.test_client()
    for user in ("ann", "bob", "cy", "dee"):
        otel.clear()
        body = client.get("/", headers={"X-User-Id": user}).get_data(as_text=True)
        assert body.startswith(expected(lab, user))
        assert exposed_keys(otel) == ["home-quote", "other"]  # a read in a template exposes like one in code
    # outside a request the globals give the defaults
    with app.app_context():
        assert flask.render_template_string(TEMPLATE).startswith('<p id="quote">control</p><p id="words">0</p>')


def test_flask_keeps_an_app_global_of_the_same_name(caplog: pytest.LogCaptureFixture) -> None:
    import flask

    from fieldlab.adapters.flask import FieldLab

    app = flask.Flask("own-global")
    app.add_template_global(lambda: "mine", "variant")
    with caplog.at_level(logging.WARNING, logger="fieldlab"):
        FieldLab(app, lab=make_lab())
    assert app.jinja_env.globals["variant"]() == "mine"
    assert app.jinja_env.globals["param"] is TEMPLATE_GLOBALS["param"]
    assert "template global 'variant' is already defined" in caplog.text


def test_starlette_jinja2_templates(otel: Any) -> None:
    import jinja2
    from opentelemetry.instrumentation.starlette import StarletteInstrumentor
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.routing import Route
    from starlette.templating import Jinja2Templates
    from starlette.testclient import TestClient

    from fieldlab.adapters.starlette import FieldLabMiddleware

    lab = make_lab()
    templates = Jinja2Templates(
        env=jinja2.Environment(loader=jinja2.DictLoader({"home.html": TEMPLATE}), autoescape=True)
    )
    assert install_globals(templates.env) == ["variant", "param"]

    async def home(request: Request) -> Any:
        return templates.TemplateResponse(request, "home.html")

    app = Starlette(routes=[Route("/", home)])
    app.add_middleware(FieldLabMiddleware, lab=lab, units={"user": "header:X-User-Id"})
    StarletteInstrumentor.instrument_app(app)
    with TestClient(app) as client:
        for user in ("ann", "bob", "cy", "dee"):
            otel.clear()
            body = client.get("/", headers={"X-User-Id": user}).text
            assert body.startswith(expected(lab, user))
            assert exposed_keys(otel) == ["home-quote", "other"]
