"""Every adapter under its real server on 127.0.0.1, spans exported by the real OTel SDK to files and read back.

For hundreds of distinct users each response and each SERVER span carry exactly
what ``lab.assign_all`` predicts, in both wiring orders (fieldlab inside or
outside the OTel instrumentation) and with the tracer provider set before or
after the app is built.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from serverkit import Server, server_spans_by_trace

from fieldlab import Lab
from fieldlab import attributes as A

READ_KEYS = ("checkout-redesign", "search-ranking", "price-a", "price-b", "de-only", "team-exp", "req-sampler")

# (id, server, target, env): every framework, both orders, provider set before and after.
SERVERS = [
    ("flask-otel-outer", "gunicorn", "webapps.flask_app:app", {"FIELDLAB_TEST_ORDER": "otel_outer"}),
    (
        "flask-fieldlab-outer",
        "gunicorn",
        "webapps.flask_app:app",
        {"FIELDLAB_TEST_ORDER": "fieldlab_outer", "FIELDLAB_TEST_PROVIDER": "after"},
    ),
    (
        "wsgi-otel-outer",
        "gunicorn",
        "webapps.wsgi_app:app",
        {"FIELDLAB_TEST_ORDER": "otel_outer", "FIELDLAB_TEST_PROVIDER": "after"},
    ),
    ("wsgi-fieldlab-outer", "gunicorn", "webapps.wsgi_app:app", {"FIELDLAB_TEST_ORDER": "fieldlab_outer"}),
    ("django-wsgi-otel-outer", "gunicorn", "webapps.django_app:application", {"FIELDLAB_TEST_ORDER": "otel_outer"}),
    (
        "django-wsgi-fieldlab-outer",
        "gunicorn",
        "webapps.django_app:application",
        {"FIELDLAB_TEST_ORDER": "fieldlab_outer", "FIELDLAB_TEST_PROVIDER": "after"},
    ),
    (
        "django-asgi-otel-outer",
        "uvicorn",
        "webapps.django_app:application",
        {"FIELDLAB_TEST_ORDER": "otel_outer", "FIELDLAB_TEST_DJANGO": "asgi", "FIELDLAB_TEST_PROVIDER": "after"},
    ),
    (
        "django-asgi-fieldlab-outer",
        "uvicorn",
        "webapps.django_app:application",
        {"FIELDLAB_TEST_ORDER": "fieldlab_outer", "FIELDLAB_TEST_DJANGO": "asgi"},
    ),
    ("starlette-otel-outer", "uvicorn", "webapps.starlette_app:app", {"FIELDLAB_TEST_ORDER": "otel_outer"}),
    (
        "starlette-fieldlab-outer",
        "uvicorn",
        "webapps.starlette_app:app",
        {"FIELDLAB_TEST_ORDER": "fieldlab_outer", "FIELDLAB_TEST_PROVIDER": "after"},
    ),
    (
        "fastapi-otel-outer",
        "uvicorn",
        "webapps.fastapi_app:app",
        {"FIELDLAB_TEST_ORDER": "otel_outer", "FIELDLAB_TEST_PROVIDER": "after"},
    ),
    ("fastapi-fieldlab-outer", "uvicorn", "webapps.fastapi_app:app", {"FIELDLAB_TEST_ORDER": "fieldlab_outer"}),
]


@pytest.fixture(scope="module", params=SERVERS, ids=[s[0] for s in SERVERS])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    name, kind, target, env = request.param
    srv = Server(kind, target, tmp_path_factory.mktemp(name), env).start()
    try:
        yield srv
    finally:
        srv.stop()


def _cookie(response: Any, name: str) -> str | None:
    for key, value in response.cookies.items():
        if key == name:
            return value
    return None


def _check(lab: Lab, sent: dict[str, Any], payload: dict[str, Any], visitor: str | None, span: dict[str, Any]) -> None:
    """One request: the response and its server span match the lab's prediction exactly."""
    tid = payload["trace_id"]
    units = {"user": sent["user"], "team": sent.get("team"), "visitor": visitor, "request": tid}
    attrs = {"path": "/shop", "method": "GET"}
    if sent.get("country"):
        attrs["x-country"] = sent["country"]
    predicted = lab.assign_all(units, attrs)
    assert payload["user"] == sent["user"]
    assert payload["variants"] == {k: predicted[k].variant for k in READ_KEYS}
    assert payload["render"] == ("one-page" if predicted["checkout-redesign"].variant == "treatment" else "classic")
    a = span["attrs"]
    variants = {k[len(A.VARIANT_PREFIX) :]: v for k, v in a.items() if k.startswith(A.VARIANT_PREFIX)}
    assert variants == {k: p.variant for k, p in predicted.items() if p.in_experiment}, sent
    exposed = {k[len(A.EXPOSED_PREFIX) :] for k, v in a.items() if k.startswith(A.EXPOSED_PREFIX) and v is True}
    on_assign = {k for k, e in lab.experiments.items() if e.exposure == "on_assign"}
    assert exposed == {k for k in (*READ_KEYS, *on_assign) if predicted[k].in_experiment}
    holdouts = {k[len(A.HOLDOUT_PREFIX) :] for k in a if k.startswith(A.HOLDOUT_PREFIX)}
    assert holdouts == {p.holdout for p in predicted.values() if p.holdout}
    assert not any(k.startswith(A.FORCED_PREFIX) for k in a)
    assert a[A.unit_attr("user")] == sent["user"]  # the test lab writes raw ids
    assert a[A.unit_attr("request")] == tid == span["trace_id"]
    assert a.get(A.unit_attr("visitor")) == visitor
    assert a[A.CONFIG_VERSION] == lab.version
    flags = {e["attrs"][A.FLAG_KEY]: e["attrs"] for e in span["events"] if e["name"] == A.FLAG_EVENT}
    assert set(flags) == exposed
    for key, ev in flags.items():
        assert ev[A.FLAG_VARIANT] == predicted[key].variant
        assert ev[A.FLAG_PROVIDER] == "fieldlab" and ev[A.FLAG_VERSION] == lab.version
        assert ev[A.FLAG_REASON] == "split"
    if "price-a" in flags or "price-b" in flags:
        assert {ev.get(A.FLAG_SET_ID) for k, ev in flags.items() if k.startswith("price-")} == {"pricing"}


def test_every_user_gets_exactly_the_predicted_variants(server: Server, test_lab: Lab) -> None:
    rng = random.Random(7)
    results = []
    with requests.Session() as http:
        for i in range(300):
            sent: dict[str, Any] = {"user": f"u{i}-{rng.randrange(10**6)}"}
            headers = {"X-User-Id": sent["user"]}
            if i % 3 == 0:
                sent["country"] = headers["X-Country"] = rng.choice(["DE", "FR"])
            if i % 4 == 0:
                sent["team"] = headers["X-Team"] = f"team-{i}"
            if i % 25 == 0:
                headers["X-Boom"] = "1"  # the team resolver raises: default path for team-exp only
                sent.pop("team", None)
            http.cookies.clear()
            r = http.get(server.url + "/shop", headers=headers, timeout=10)
            assert r.status_code == 200, r.text
            visitor = _cookie(r, "fieldlab_visitor")
            assert visitor is not None and len(visitor) == 32
            assert "httponly" in r.headers["set-cookie"].lower() and "samesite=lax" in r.headers["set-cookie"].lower()
            results.append((sent, r.json(), visitor))
    spans = server_spans_by_trace(server, {p["trace_id"] for _, p, _ in results})
    assert len(spans) == len(results)
    for sent, payload, visitor in results:
        found = spans[payload["trace_id"]]
        assert len(found) == 1, found
        _check(test_lab, sent, payload, visitor, found[0])
    treatment = sum(1 for _, p, _ in results if p["variants"]["checkout-redesign"] == "treatment")
    assert 100 < treatment < 200  # both paths ran


def test_visitor_cookie_is_kept_and_forged_inputs_change_nothing(server: Server, test_lab: Lab) -> None:
    user = "mallory"
    base = test_lab.assign_all({"user": user}, {"path": "/shop", "method": "GET"})
    wanted = "treatment" if base["checkout-redesign"].variant == "control" else "control"
    forged = {
        "X-Fieldlab-Override": f"checkout-redesign={wanted},fl1.eyJlIjoiY2hlY2tvdXQtcmVkZXNpZ24ifQ.AAAA",
        "baggage": f"fieldlab=checkout-redesign%3D{wanted},fieldlab.checkout-redesign={wanted}",
        "Cookie": f"fieldlab_override=checkout-redesign%3D{wanted}; fieldlab_visitor=0123456789abcdef0123456789abcdef",
    }
    r = requests.get(server.url + "/shop", headers={"X-User-Id": user, **forged}, timeout=10)
    assert r.status_code == 200
    payload = r.json()
    assert payload["variants"]["checkout-redesign"] == base["checkout-redesign"].variant
    assert "set-cookie" not in r.headers  # a well-formed visitor cookie is kept
    span = server_spans_by_trace(server, {payload["trace_id"]})[payload["trace_id"]][0]
    assert span["attrs"][A.variant_attr("checkout-redesign")] == base["checkout-redesign"].variant
    assert span["attrs"][A.unit_attr("visitor")] == "0123456789abcdef0123456789abcdef"
    assert not any(k.startswith(A.FORCED_PREFIX) for k in span["attrs"])


CONCURRENT = [s for s in SERVERS if s[1] == "uvicorn" and s[0].endswith("otel-outer")]


@pytest.mark.parametrize("spec", CONCURRENT[:2], ids=[s[0] for s in CONCURRENT[:2]])
def test_500_concurrent_requests_each_see_their_own_assignments(spec: Any, test_lab: Lab, tmp_path: Path) -> None:
    name, kind, target, env = spec
    srv = Server(kind, target, tmp_path / name, env).start()
    try:

        async def run() -> list[tuple[str, httpx.Response]]:
            limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
            async with httpx.AsyncClient(base_url=srv.url, limits=limits, timeout=60) as client:
                users = [f"conc-{i}" for i in range(500)]
                responses = await asyncio.gather(*(client.get("/shop", headers={"X-User-Id": u}) for u in users))
                return list(zip(users, responses, strict=False))

        try:
            pairs = asyncio.run(run())
        except httpx.HTTPError as exc:
            pytest.fail(f"{type(exc).__name__} ({exc.__cause__!r}); server log:\n{srv.log_tail()}")
        spans = server_spans_by_trace(srv, {r.json()["trace_id"] for _, r in pairs})
        for user, r in pairs:
            assert r.status_code == 200
            payload = r.json()
            assert payload["user"] == user
            visitor = r.cookies.get("fieldlab_visitor")
            _check(test_lab, {"user": user}, payload, visitor, spans[payload["trace_id"]][0])
            for extra in ("task_checkout", "dependency_checkout"):
                if extra in payload:
                    assert payload[extra] == payload["variants"]["checkout-redesign"]
    finally:
        srv.stop()


@pytest.mark.parametrize("spec", [SERVERS[0], SERVERS[8]], ids=["flask", "starlette"])
def test_a_failing_exporter_leaves_responses_on_their_path(spec: Any, test_lab: Lab, tmp_path: Path) -> None:
    name, kind, target, env = spec
    srv = Server(kind, target, tmp_path / name, {**env, "FIELDLAB_TEST_EXPORTER": "fail"})
    srv.env.pop("FIELDLAB_TEST_SPANS")
    srv.start()
    try:
        for i in range(20):
            r = requests.get(srv.url + "/shop", headers={"X-User-Id": f"e{i}"}, timeout=10)
            assert r.status_code == 200
            expected = test_lab.assign("checkout-redesign", f"e{i}").variant
            assert r.json()["variants"]["checkout-redesign"] == expected
    finally:
        srv.stop()
