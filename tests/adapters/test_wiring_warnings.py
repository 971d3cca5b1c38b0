"""Flask, Starlette and WSGI catch wiring mistakes: one warning on the ``fieldlab`` logger, naming the fix (issue 15 §2).

A ``user`` unit nothing resolves leaves every user out of its experiments
(reason ``no_unit``) without failing a request; so does a resolver that never
returns an id. A middleware added twice runs the request path twice. Each is
said once, at start-up when it can be known then, else on the first request
or after :data:`fieldlab._request.wiring.UNRESOLVED_AFTER` requests.
"""

from __future__ import annotations

import logging
from typing import Any

import flask
import pytest
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import fieldlab
from fieldlab import Lab
from fieldlab._request.wiring import UNRESOLVED_AFTER
from fieldlab.adapters.asgi import FieldLabMiddleware as AsgiMiddleware
from fieldlab.adapters.flask import FieldLab
from fieldlab.adapters.wsgi import FieldLabMiddleware as WsgiMiddleware

LAB = {
    "lab": {"reload_interval": 0},
    "experiments": [
        {"key": "welcome", "unit": "user", "variants": ["plain", "warm"]},
        {"key": "colour", "unit": "session", "variants": ["blue", "green"]},
    ],
}
REQUESTS = UNRESOLVED_AFTER + 50


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "fieldlab" and r.levelno == logging.WARNING]


# --------------------------------------------------------------------------- Flask
def flask_app(secret: bool = True, **options: Any) -> flask.Flask:
    app = flask.Flask(__name__)
    if secret:
        app.secret_key = "test-only"

    @app.get("/")
    def page() -> str:
        return str(fieldlab.variant("welcome", "none"))

    FieldLab(app, lab=Lab.from_dict(LAB), **options)
    return app


def test_flask_without_a_user_resolver_warns_once_at_start_up(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "fieldlab")
    app = flask_app()
    at_start = warnings_of(caplog)
    assert len(at_start) == 1, at_start
    assert "'user' unit" in at_start[0] and "['welcome']" in at_start[0]
    assert 'units={"user": lambda request: flask_login.current_user.get_id()}' in at_start[0]
    client = app.test_client()
    for _ in range(REQUESTS):
        assert client.get("/").text == "none"
    assert warnings_of(caplog) == at_start  # once


def test_flask_user_resolver_that_never_resolves_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "fieldlab")
    client = flask_app(units={"user": lambda request: None}).test_client()
    for _ in range(UNRESOLVED_AFTER - 1):
        client.get("/")
    assert warnings_of(caplog) == []  # not before the threshold: anonymous traffic is normal
    for _ in range(50):
        client.get("/")
    got = warnings_of(caplog)
    assert len(got) == 1, got
    assert f"none of the first {UNRESOLVED_AFTER} requests" in got[0] and "['welcome']" in got[0]
    assert "check the 'user' resolver passed in units=" in got[0]


def test_flask_user_resolver_that_resolves_once_never_warns(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "fieldlab")
    client = flask_app(units={"user": lambda request: flask.request.headers.get("X-User-Id")}).test_client()
    client.get("/", headers={"X-User-Id": "u1"})
    for _ in range(REQUESTS):
        client.get("/")
    assert warnings_of(caplog) == []


def test_flask_session_unit_without_a_secret_key_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "fieldlab")
    client = flask_app(secret=False, units={"user": "header:X-User-Id"}).test_client()
    for _ in range(REQUESTS):
        client.get("/", headers={"X-User-Id": "u1"})
    got = warnings_of(caplog)
    assert len(got) == 1 and "'session' unit" in got[0] and "set app.secret_key" in got[0], got


def test_flask_extension_added_twice_is_refused_at_start_up() -> None:
    app = flask_app(units={"user": "header:X-User-Id"})
    with pytest.raises(fieldlab.ConfigError, match="create one FieldLab per app"):
        FieldLab(app, lab=Lab.from_dict(LAB))


# --------------------------------------------------------------------------- Starlette
class HeaderAuth(AuthenticationBackend):
    """Authenticates X-User-Id when given (``never``: nobody, as a misconfigured backend would)."""

    def __init__(self, never: bool = False) -> None:
        self.never = never

    async def authenticate(self, conn: Any) -> Any:
        user = conn.headers.get("x-user-id")
        if user is None or self.never:
            return None
        return AuthCredentials(["authenticated"]), SimpleUser(user)


async def page(request: Any) -> PlainTextResponse:
    return PlainTextResponse(str(fieldlab.variant("welcome", "none")))


def starlette_client(*, auth: HeaderAuth | None, twice: bool = False) -> TestClient:
    lab = Lab.from_dict(LAB)
    app = Starlette(routes=[Route("/", page)])
    app.add_middleware(AsgiMiddleware, lab=lab)
    if twice:
        app.add_middleware(AsgiMiddleware, lab=lab)
    if auth is not None:
        app.add_middleware(AuthenticationMiddleware, backend=auth)  # added after: runs first
    app.add_middleware(SessionMiddleware, secret_key="test-only")
    return TestClient(app)


def test_starlette_without_authentication_middleware_warns_on_the_first_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "fieldlab")
    client = starlette_client(auth=None)
    client.get("/", headers={"X-User-Id": "u1"})
    got = warnings_of(caplog)
    assert len(got) == 1, got
    assert "without request.user" in got[0] and "AuthenticationMiddleware" in got[0]
    assert "add it after FieldLabMiddleware in code" in got[0]
    for _ in range(REQUESTS):
        client.get("/")
    assert warnings_of(caplog) == got  # once


def test_starlette_backend_that_never_authenticates_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "fieldlab")
    client = starlette_client(auth=HeaderAuth(never=True))
    for _ in range(REQUESTS):
        client.get("/", headers={"X-User-Id": "u1"})
    got = warnings_of(caplog)
    assert len(got) == 1 and f"none of the first {UNRESOLVED_AFTER} requests" in got[0], got
    assert "AuthenticationMiddleware" in got[0]


def test_starlette_wired_right_never_warns(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "fieldlab")
    client = starlette_client(auth=HeaderAuth())
    lab = Lab.from_dict(LAB)
    assert client.get("/", headers={"X-User-Id": "u1"}).text == lab.assign("welcome", "u1").variant
    for _ in range(REQUESTS):
        client.get("/")
    assert warnings_of(caplog) == []


def test_starlette_middleware_added_twice_warns_once_and_assigns_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "fieldlab")
    client = starlette_client(auth=HeaderAuth(), twice=True)
    lab = Lab.from_dict(LAB)
    for i in range(5):
        assert client.get("/", headers={"X-User-Id": f"u{i}"}).text == lab.assign("welcome", f"u{i}").variant
    got = warnings_of(caplog)
    assert len(got) == 1 and "added twice" in got[0] and "keep one app.add_middleware(FieldLabMiddleware" in got[0]


def test_wsgi_middleware_wrapped_twice_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    from werkzeug.test import Client

    caplog.set_level(logging.WARNING, "fieldlab")
    lab = Lab.from_dict(LAB)

    def app(environ: dict, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(fieldlab.variant("welcome", "none")).encode()]

    wrapped = WsgiMiddleware(WsgiMiddleware(app, lab=lab), lab=lab)
    client = Client(wrapped)
    for i in range(5):
        r = client.get("/", environ_overrides={"REMOTE_USER": f"u{i}"})
        assert r.get_data(as_text=True) == lab.assign("welcome", f"u{i}").variant
    got = [m for m in warnings_of(caplog) if "added twice" in m]  # (plain WSGI has no session: warned too)
    assert len(got) == 1 and "wrap the app in FieldLabMiddleware once" in got[0], got
