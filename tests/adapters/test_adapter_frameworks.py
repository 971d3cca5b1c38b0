"""Flask, Django, Starlette and FastAPI through their own test clients, both wiring orders, the SDK in memory."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from opentelemetry.instrumentation.flask import FlaskInstrumentor

import fieldlab
from fieldlab import ConfigError, Experiment, Lab, telemetry
from fieldlab import attributes as A

SECRET = "framework-secret"


def make_lab() -> Lab:
    return Lab(
        [
            Experiment("checkout-redesign", {"control": 1, "treatment": 1}),
            Experiment("banner", {"off": 1, "on": 1}, exposure="on_assign"),
            Experiment("by-session", {"a": 1, "b": 1}, unit="session"),
        ],
        secret=SECRET,
    )


@fieldlab.switch("checkout-redesign")
def layout() -> str:
    return "classic"


@layout.variant("treatment")
def layout_one_page() -> str:
    return "one-page"


@fieldlab.switch("checkout-redesign")
async def alayout() -> str:
    return "classic"


@alayout.variant("treatment")
async def alayout_one_page() -> str:
    return "one-page"


def check_span(otel: Any, lab: Lab, user: str) -> None:
    spans = otel.server_spans()
    assert len(spans) == 1, spans
    attrs = dict(spans[0].attributes)
    expected = lab.assign("checkout-redesign", user).variant
    assert attrs[A.variant_attr("checkout-redesign")] == expected
    assert attrs[A.exposed_attr("checkout-redesign")] is True
    assert attrs[A.exposed_attr("banner")] is True  # on_assign
    assert attrs[A.variant_attr("banner")] == lab.assign("banner", user).variant
    assert attrs[A.unit_attr("user")] == telemetry.UnitHasher(SECRET.encode())(user)
    flag_keys = sorted(e.attributes[A.FLAG_KEY] for e in spans[0].events if e.name == A.FLAG_EVENT)
    exposed = sorted(k[len(A.EXPOSED_PREFIX) :] for k in attrs if k.startswith(A.EXPOSED_PREFIX))
    assert flag_keys == exposed and {"banner", "checkout-redesign"} <= set(exposed)


# --------------------------------------------------------------------------- Flask
def flask_app(order: str, lab: Lab) -> Any:
    import flask

    from fieldlab.adapters.flask import FieldLab

    app = flask.Flask(f"shop-{order}")
    app.secret_key = "k"

    @app.get("/")
    def index() -> Any:
        return {
            "layout": layout(),
            "variant": fieldlab.variant("checkout-redesign"),
            "session": fieldlab.variant("by-session"),
        }

    if order == "otel_outer":
        FlaskInstrumentor().instrument_app(app)
        FieldLab(app, lab=lab, units={"user": lambda r: r.headers.get("X-User-Id")})
    else:
        ext = FieldLab(lab=lab, units={"user": lambda r: r.headers.get("X-User-Id")})
        ext.init_app(app)
        FlaskInstrumentor().instrument_app(app)
    return app


@pytest.mark.parametrize("order", ["otel_outer", "fieldlab_outer"])
def test_flask_extension(otel: Any, order: str) -> None:
    lab = make_lab()
    app = flask_app(order, lab)
    assert isinstance(app.extensions["fieldlab"], fieldlab.adapters.flask.FieldLab)
    client = app.test_client()
    r = client.get("/", headers={"X-User-Id": "fiona"})
    expected = lab.assign("checkout-redesign", "fiona").variant
    assert r.json["variant"] == expected
    assert r.json["layout"] == ("one-page" if expected == "treatment" else "classic")
    assert r.json["session"] is not None  # fieldlab keeps a session id in flask.session
    check_span(otel, lab, "fiona")
    otel.clear()
    again = client.get("/", headers={"X-User-Id": "fiona"})
    assert again.json["session"] == r.json["session"]  # the same session keeps its variant
    with pytest.raises(ConfigError, match="already initialised"):
        app.extensions["fieldlab"].init_app(app)


# --------------------------------------------------------------------------- Django
def _django() -> Any:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            SECRET_KEY="test",
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF=__name__,
            DATABASES={},
            INSTALLED_APPS=[],
            MIDDLEWARE=["fieldlab.adapters.django.FieldLabMiddleware"],
            USE_TZ=True,
            FIELDLAB={"lab": f"{__name__}.DJANGO_LAB", "units": {"user": "header:X-User-Id"}},
        )
        django.setup()
        from opentelemetry.instrumentation.django import DjangoInstrumentor

        DjangoInstrumentor().instrument()
    return settings


DJANGO_LAB = make_lab()


def _dj_view(request: Any) -> Any:
    from django.http import JsonResponse

    return JsonResponse({"layout": layout(), "variant": fieldlab.variant("checkout-redesign")})


async def _dj_async_view(request: Any) -> Any:
    from django.http import JsonResponse

    return JsonResponse({"layout": await alayout(), "variant": fieldlab.variant("checkout-redesign")})


def _urls() -> list[Any]:
    from django.urls import path

    return [path("sync", _dj_view), path("async", _dj_async_view)]


def __getattr__(name: str) -> Any:  # Django reads urlpatterns lazily from ROOT_URLCONF
    if name == "urlpatterns":
        return _urls()
    raise AttributeError(name)


@pytest.mark.parametrize("order", ["otel_outer", "fieldlab_outer"])
@pytest.mark.parametrize("view", ["sync", "async"])
def test_django_middleware(otel: Any, order: str, view: str) -> None:
    settings = _django()
    from django.test import AsyncClient, Client, override_settings

    fl = "fieldlab.adapters.django.FieldLabMiddleware"
    others = [m for m in settings.MIDDLEWARE if m != fl]
    middleware = [*others, fl] if order == "otel_outer" else [fl, *others]
    assert any("opentelemetry" in m for m in middleware)
    with override_settings(MIDDLEWARE=middleware):
        if view == "sync":
            r = Client().get("/sync", headers={"X-User-Id": "gus"})
        else:
            r = asyncio.run(AsyncClient().get("/async", headers={"X-User-Id": "gus"}))
    expected = DJANGO_LAB.assign("checkout-redesign", "gus").variant
    assert r.status_code == 200
    assert r.json() == {"layout": "one-page" if expected == "treatment" else "classic", "variant": expected}
    check_span(otel, DJANGO_LAB, "gus")


def test_django_config_errors_name_the_setting() -> None:
    settings = _django()
    from django.test import override_settings

    from fieldlab.adapters.django import FieldLabMiddleware

    with override_settings(FIELDLAB={}):
        with pytest.raises(ConfigError, match="settings.FIELDLAB"):
            FieldLabMiddleware(lambda r: r)
    with override_settings(FIELDLAB={"lab": "no.such.module.lab"}):
        with pytest.raises(ConfigError, match=r"FIELDLAB\['lab'\]"):
            FieldLabMiddleware(lambda r: r)
    with override_settings(FIELDLAB={"lab": DJANGO_LAB, "unit": {}}):
        with pytest.raises(ConfigError, match="unknown keys"):
            FieldLabMiddleware(lambda r: r)
    assert settings.FIELDLAB["lab"]


# --------------------------------------------------------------------------- Starlette / FastAPI
@pytest.mark.parametrize("order", ["otel_outer", "fieldlab_outer"])
def test_starlette_middleware(otel: Any, order: str) -> None:
    from opentelemetry.instrumentation.starlette import StarletteInstrumentor
    from starlette.applications import Starlette
    from starlette.middleware.sessions import SessionMiddleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from fieldlab.adapters.starlette import FieldLabMiddleware

    lab = make_lab()

    async def index(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "layout": await alayout(),
                "variant": fieldlab.variant("checkout-redesign"),
                "session": fieldlab.variant("by-session"),
            }
        )

    units = {"user": lambda request: request.headers.get("X-User-Id")}
    if order == "otel_outer":
        app = Starlette(routes=[Route("/", index)])
        app.add_middleware(FieldLabMiddleware, lab=lab, units=units)
        app.add_middleware(SessionMiddleware, secret_key="k")
        StarletteInstrumentor.instrument_app(app)
        asgi: Any = app
    else:
        app = Starlette(routes=[Route("/", index)])
        StarletteInstrumentor.instrument_app(app)
        asgi = SessionMiddleware(FieldLabMiddleware(app, lab=lab, units=units), secret_key="k")
    with TestClient(asgi) as client:
        r = client.get("/", headers={"X-User-Id": "hana"})
        expected = lab.assign("checkout-redesign", "hana").variant
        assert r.json()["variant"] == expected
        assert r.json()["layout"] == ("one-page" if expected == "treatment" else "classic")
        assert r.json()["session"] in ("a", "b")
        check_span(otel, lab, "hana")
        assert client.get("/", headers={"X-User-Id": "hana"}).json()["session"] == r.json()["session"]


@pytest.mark.parametrize("order", ["otel_outer", "fieldlab_outer"])
def test_fastapi_dependency(otel: Any, order: str) -> None:
    from fastapi import Depends, FastAPI
    from fastapi.testclient import TestClient
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    from fieldlab.adapters.fastapi import Assignments, FieldLabMiddleware, assignments

    lab = make_lab()
    app = FastAPI()

    @app.get("/")
    def index(ab: Assignments = Depends(assignments)) -> dict[str, Any]:
        return {
            "variant": ab.variant("checkout-redesign"),
            "layout": layout(),
            "all": dict(ab),
            "choice": ab.choose("checkout-redesign", {"treatment": "T"}, "C"),
        }

    opts = {"lab": lab, "units": {"user": "header:X-User-Id"}}
    if order == "otel_outer":
        app.add_middleware(FieldLabMiddleware, **opts)
        FastAPIInstrumentor.instrument_app(app)
        asgi: Any = app
    else:
        FastAPIInstrumentor.instrument_app(app)
        asgi = FieldLabMiddleware(app, **opts)
    with TestClient(asgi) as client:
        r = client.get("/", headers={"X-User-Id": "ivan"}).json()
    expected = lab.assign("checkout-redesign", "ivan").variant
    assert r["variant"] == expected and r["choice"] == ("T" if expected == "treatment" else "C")
    assert r["all"] == {"checkout-redesign": expected, "banner": lab.assign("banner", "ivan").variant}
    check_span(otel, lab, "ivan")
    empty = Assignments(None)
    assert empty.variant("checkout-redesign", "d") == "d" and dict(empty) == {}
