"""Shared HTTP caches never serve one unit's variant to another: Vary / Cache-Control from every adapter (issue 15).

A shared cache sits in front of each framework's real app the way a reverse
proxy or CDN does: it stores every GET response that HTTP lets it share
(nothing ``private`` or ``no-store``, nothing setting a cookie, as nginx and
Varnish do by default) for as long as the test runs, and answers later
requests from it when the headers its ``Vary`` names match. Visitors, users
and accounts then ask for pages that read a variant; a page showing another
unit's variant is a contaminated experiment. The same apps with
``cache_headers=False`` prove the cache really mixes variants without the
headers. Django's ``cache_page`` and per-site cache are in test_django_app.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import flask
import pytest
from starlette.applications import Starlette
from starlette.middleware.sessions import SessionMiddleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import fieldlab
from fieldlab import Lab
from fieldlab.adapters.asgi import FieldLabMiddleware as AsgiMiddleware
from fieldlab.adapters.flask import FieldLab
from fieldlab.adapters.wsgi import FieldLabMiddleware as WsgiMiddleware

LAB = {
    "lab": {"reload_interval": 0},
    "experiments": [
        {"key": "home-quote", "unit": "visitor", "variants": ["control", "short"]},
        {"key": "welcome", "unit": "user", "variants": ["plain", "warm"]},
        {"key": "sidebar", "unit": "account", "variants": ["left", "right"]},
    ],
}
#: a session experiment: Flask and Starlette keep fieldlab's session id in the framework's session cookie
LAB_SESSION = {
    "lab": {"reload_interval": 0},
    "experiments": [{"key": "colour", "unit": "session", "variants": ["blue", "green"]}],
}
UNITS: dict[str, Any] = {"user": "header:X-User-Id", "account": None}  # account: a callable, set per framework
PAGES = {"/quote": "home-quote", "/welcome": "welcome", "/sidebar": "sidebar", "/colour": "colour"}

Response = tuple[int, list[tuple[str, str]], str]  # status, headers, body
Fetch = Callable[[str, dict[str, str]], Response]


def _values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name]


class SharedCache:
    """A shared cache in front of an app, honouring Vary and Cache-Control as RFC 9111 asks of one."""

    def __init__(self, fetch: Fetch) -> None:
        self.fetch = fetch
        self.entries: dict[str, list[tuple[tuple[str, ...], tuple[str | None, ...], Response]]] = {}
        self.hits = 0

    def get(self, path: str, headers: dict[str, str]) -> Response:
        request = {k.lower(): v for k, v in headers.items()}
        for names, values, response in self.entries.get(path, []):
            if "*" not in names and tuple(request.get(n) for n in names) == values:
                self.hits += 1
                return response
        response = self.fetch(path, headers)
        status, out, _ = response
        directives = {d.strip().split("=")[0].lower() for v in _values(out, "cache-control") for d in v.split(",")}
        if status == 200 and not directives & {"private", "no-store"} and not _values(out, "set-cookie"):
            names = tuple(n.strip().lower() for v in _values(out, "vary") for n in v.split(",") if n.strip())
            self.entries.setdefault(path, []).append((names, tuple(request.get(n) for n in names), response))
        return response


# --------------------------------------------------------------------------- the apps, one per adapter
def _account(request: Any) -> Any:
    """A callable resolver: fieldlab cannot name what it reads, so the response must be private."""
    environ = getattr(request, "environ", None)
    if environ is not None:
        return environ.get("HTTP_X_ACCOUNT")
    headers = getattr(request, "headers", None)
    if headers is not None:
        return headers.get("x-account")
    return request.get("HTTP_X_ACCOUNT")


def _units() -> dict[str, Any]:
    return {**UNITS, "account": _account}


def _page(path: str) -> str:
    key = PAGES.get(path)
    return f"variant={fieldlab.variant(key, 'none')}" if key else "plain page"


def flask_fetch(lab: Lab, **options: Any) -> Fetch:
    app = flask.Flask(__name__)
    app.secret_key = "test-only"
    FieldLab(app, lab=lab, units=_units(), **options)

    @app.get("/<name>")
    def page(name: str) -> str:
        return _page("/" + name)

    client = app.test_client(use_cookies=False)

    def fetch(path: str, headers: dict[str, str]) -> Response:
        r = client.get(path, headers=headers)
        return r.status_code, list(r.headers.items()), r.get_data(as_text=True)

    return fetch


def wsgi_fetch(lab: Lab, **options: Any) -> Fetch:
    from werkzeug.test import Client

    def app(environ: dict, start_response: Callable[..., Any]) -> list[bytes]:
        body = _page(environ["PATH_INFO"]).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    client = Client(WsgiMiddleware(app, lab=lab, units=_units(), **options), use_cookies=False)

    def fetch(path: str, headers: dict[str, str]) -> Response:
        r = client.get(path, headers=headers)
        return r.status_code, list(r.headers.items()), r.get_data(as_text=True)

    return fetch


def starlette_fetch(lab: Lab, **options: Any) -> Fetch:
    async def page(request: Any) -> PlainTextResponse:
        return PlainTextResponse(_page(request.url.path))

    app = Starlette(routes=[Route("/{name}", page)])
    app.add_middleware(AsgiMiddleware, lab=lab, units=_units(), **options)
    app.add_middleware(SessionMiddleware, secret_key="test-only")  # added last: runs first
    client = TestClient(app)

    def fetch(path: str, headers: dict[str, str]) -> Response:
        client.cookies.clear()  # the visitor's cookies are in ``headers``
        r = client.get(path, headers=headers)
        return r.status_code, list(r.headers.multi_items()), r.text

    return fetch


FRAMEWORKS = {"flask": flask_fetch, "wsgi": wsgi_fetch, "starlette": starlette_fetch}


# --------------------------------------------------------------------------- visitors through the cache
def _cookies(response: Response) -> dict[str, str]:
    out = {}
    for value in _values(response[1], "set-cookie"):
        name, _, rest = value.partition("=")
        out[name.strip()] = rest.split(";", 1)[0]
    return out


def drive(lab: Lab, cache: SharedCache) -> dict[str, dict[str, int]]:
    """Per page: pages served and pages showing a variant other than the unit's own."""
    out: dict[str, dict[str, int]] = {}

    def count(path: str, unit: str | None, body: str) -> None:
        expected = lab.assign(PAGES[path], unit).variant if unit else None
        row = out.setdefault(path, {"pages": 0, "wrong": 0})
        row["pages"] += 1
        row["wrong"] += body != f"variant={expected or 'none'}"

    known_visitor = {"Cookie": f"fieldlab_visitor={uuid.uuid4().hex}"}  # so user pages set no cookie
    for i in range(30):
        jar: dict[str, str] = {}
        for _ in range(3):  # a visitor: the first request gets the cookie, the next ones send it
            headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in jar.items())} if jar else {}
            r = cache.get("/quote", headers)
            jar.update(_cookies(r))
            count("/quote", jar.get("fieldlab_visitor"), r[2])
        user = f"user-{i}"
        count("/welcome", user, cache.get("/welcome", {"X-User-Id": user, **known_visitor})[2])
        account = f"acct-{i}"
        count("/sidebar", account, cache.get("/sidebar", {"X-Account": account, **known_visitor})[2])
    return out


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_a_shared_cache_serves_each_unit_its_own_variant(framework: str) -> None:
    lab = Lab.from_dict(LAB)
    cache = SharedCache(FRAMEWORKS[framework](lab))
    got = drive(lab, cache)
    assert got == {
        "/quote": {"pages": 90, "wrong": 0},
        "/welcome": {"pages": 30, "wrong": 0},
        "/sidebar": {"pages": 30, "wrong": 0},
    }
    assert cache.hits > 0  # returning visitors are served from the cache: it is a real cache
    assert [names for names, _, _ in cache.entries["/quote"]][0] == ("cookie",)
    assert [names for names, _, _ in cache.entries["/welcome"]][0] == ("x-user-id",)
    assert "/sidebar" not in cache.entries  # a callable resolver: private, never shared


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_without_cache_headers_the_same_cache_mixes_variants(framework: str) -> None:
    # cache_headers=False (the app says it handles caching): what every adapter did before issue 15
    lab = Lab.from_dict(LAB)
    got = drive(lab, SharedCache(FRAMEWORKS[framework](lab, cache_headers=False)))
    # 29 returning visitors / users after the first one stored the page: each differs from it with p=1/2
    assert got["/quote"]["wrong"] > 0 and got["/welcome"]["wrong"] > 0 and got["/sidebar"]["wrong"] > 0


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_pages_that_read_no_variant_are_left_alone(framework: str) -> None:
    fetch = FRAMEWORKS[framework](Lab.from_dict(LAB))
    status, headers, body = fetch("/about", {"X-User-Id": "u1", "Cookie": f"fieldlab_visitor={uuid.uuid4().hex}"})
    assert status == 200 and body == "plain page"
    assert _values(headers, "vary") == [] and _values(headers, "cache-control") == []


@pytest.mark.parametrize("framework", ["flask", "starlette"])
def test_a_new_session_is_private_and_a_known_one_varies_on_cookie(framework: str) -> None:
    fetch = FRAMEWORKS[framework](Lab.from_dict(LAB_SESSION))
    status, headers, _ = fetch("/colour", {})
    assert status == 200
    assert _values(headers, "cache-control") == ["private"]  # the response creates the session id
    cookie = "; ".join(f"{k}={v}" for k, v in _cookies((status, headers, "")).items())
    status, headers, _ = fetch("/colour", {"Cookie": cookie})
    assert _values(headers, "cache-control") == []
    assert any("Cookie" in v for v in _values(headers, "vary"))


def test_the_app_s_own_cache_headers_are_merged_not_replaced() -> None:
    app = flask.Flask(__name__)
    FieldLab(app, lab=Lab.from_dict(LAB), units=_units())

    @app.get("/merged")
    def merged() -> flask.Response:
        response = flask.make_response(f"variant={fieldlab.variant('sidebar', 'none')}")
        response.headers["Vary"] = "Accept-Encoding"
        response.headers["Cache-Control"] = "public, max-age=60"
        return response

    r = app.test_client().get("/merged", headers={"X-Account": "a1"})
    assert r.headers.get_all("Vary") == ["Accept-Encoding"]
    assert r.headers["Cache-Control"] == "max-age=60, private"


def test_cache_headers_option_is_checked() -> None:
    with pytest.raises(fieldlab.ConfigError, match="cache_headers"):
        WsgiMiddleware(lambda e, s: [], lab=Lab.from_dict(LAB), cache_headers="no")  # type: ignore[arg-type]
