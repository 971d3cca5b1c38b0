"""Every adapter through its framework's own test client, recorded by the real OTel SDK in memory.

Covers what the server tests do not: hashed unit ids, signed and forged
overrides, baggage in and out, targeting attributes, fault hooks, failing
resolvers and recorders, cookies over https, and configuration errors.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from opentelemetry import baggage as otel_baggage
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware as OtelASGI
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware as OtelWSGI
from werkzeug.test import Client as WerkzeugClient

import fieldlab
from fieldlab import ConfigError, Experiment, Holdout, Lab, _request, telemetry
from fieldlab import attributes as A
from fieldlab.adapters import asgi as fl_asgi
from fieldlab.adapters import wsgi as fl_wsgi

SECRET = "s3cret-for-tests"


def make_lab(**settings: Any) -> Lab:
    return Lab(
        [
            Experiment("checkout-redesign", {"control": 1, "treatment": 1}, params={"treatment": {"steps": 1}}),
            Experiment("search-ranking", {"control": 1, "semantic": 1}),
            Experiment(
                "de-only", {"control": 1, "local": 1}, targeting={"attr": "x-country", "op": "eq", "value": "DE"}
            ),
            Experiment("vip", {"control": 1, "gold": 1}, targeting={"attr": "tier", "op": "eq", "value": "vip"}),
            Experiment("per-org", {"control": 1, "treatment": 1}, unit="org"),
        ],
        holdouts=[Holdout("hold", 10, ["search-ranking"])],
        secret=SECRET,
        settings=settings,
    )


def view_payload() -> dict[str, Any]:
    return {
        "checkout": fieldlab.variant("checkout-redesign", "none"),
        "steps": fieldlab.param("checkout-redesign", "steps", 3),
        "de": fieldlab.variant("de-only"),
        "vip": fieldlab.variant("vip"),
        "org": fieldlab.variant("per-org"),
    }


def wsgi_view(environ: dict, start_response: Callable[..., Any]) -> list[bytes]:
    import json

    body = json.dumps(view_payload()).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def wsgi_client(lab: Lab, fieldlab_outer: bool = False, **options: Any) -> WerkzeugClient:
    options.setdefault("units", {"user": "header:X-User-Id"})
    if fieldlab_outer:
        return WerkzeugClient(fl_wsgi.FieldLabMiddleware(OtelWSGI(wsgi_view), lab=lab, **options))
    return WerkzeugClient(OtelWSGI(fl_wsgi.FieldLabMiddleware(wsgi_view, lab=lab, **options)))


def only_span(otel: Any) -> Any:
    spans = otel.server_spans()
    assert len(spans) == 1, spans
    return spans[0]


# --------------------------------------------------------------------------- WSGI
@pytest.mark.parametrize("outer", [False, True], ids=["otel-outer", "fieldlab-outer"])
def test_wsgi_records_hashed_units_and_exposures(otel: Any, outer: bool) -> None:
    lab = make_lab()
    r = wsgi_client(lab, outer).get("/", headers={"X-User-Id": "alice@example.com"})
    assert r.status_code == 200
    expected = lab.assign("checkout-redesign", "alice@example.com")
    assert r.json["checkout"] == expected.variant
    span = only_span(otel)
    attrs = dict(span.attributes)
    unit = attrs[A.unit_attr("user")]
    assert unit.startswith("h1:") and len(unit) == 19 and "alice" not in unit  # no emails in traces
    assert unit == telemetry.UnitHasher(SECRET.encode())("alice@example.com")
    assert "alice@example.com" not in repr(attrs) + repr([e.attributes for e in span.events])
    assert attrs[A.variant_attr("checkout-redesign")] == expected.variant
    assert attrs[A.exposed_attr("checkout-redesign")] is True
    assert A.variant_attr("per-org") not in attrs  # unknown unit kind: not in the experiment
    assert A.exposed_attr("search-ranking") not in attrs  # assigned, never read
    event = next(e for e in span.events if e.attributes[A.FLAG_KEY] == "checkout-redesign")
    assert event.name == A.FLAG_EVENT
    assert event.attributes[A.FLAG_CONTEXT_ID] == unit
    assert event.attributes[A.FLAG_VERSION] == lab.version


@pytest.mark.parametrize("mode", ["raw", "none"])
def test_unit_id_modes(otel: Any, mode: str) -> None:
    wsgi_client(make_lab(), unit_ids=mode).get("/", headers={"X-User-Id": "bob"})
    attrs = dict(only_span(otel).attributes)
    assert attrs.get(A.unit_attr("user")) == ("bob" if mode == "raw" else None)


def test_unit_hash_key_from_env(otel: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_HASH_KEY", "k1")
    wsgi_client(make_lab(unit_hash_key_env="MY_HASH_KEY")).get("/", headers={"X-User-Id": "bob"})
    assert dict(only_span(otel).attributes)[A.unit_attr("user")] == telemetry.UnitHasher(b"k1")("bob")


def test_targeting_attributes_from_header_allow_list_and_callable(otel: Any) -> None:
    lab = make_lab()
    user = next(
        f"t{i}"
        for i in range(1000)
        if lab.assign("vip", f"t{i}", {"tier": "vip"}).variant == "gold"
        and lab.assign("de-only", f"t{i}", {"x-country": "DE"}).variant == "local"
    )
    client = wsgi_client(lab, headers=["X-Country"], attributes=lambda environ: {"tier": environ.get("HTTP_X_TIER")})
    assert client.get("/", headers={"X-User-Id": user, "X-Country": "DE", "X-Tier": "vip"}).json["de"] == "local"
    assert client.get("/", headers={"X-User-Id": user, "X-Country": "DE", "X-Tier": "vip"}).json["vip"] == "gold"
    assert client.get("/", headers={"X-User-Id": user, "X-Country": "FR"}).json["de"] is None
    # a header outside the allow-list is no attribute
    other = wsgi_client(lab)
    assert other.get("/", headers={"X-User-Id": user, "X-Country": "DE"}).json["de"] is None


def test_signed_override_forces_a_variant_and_forged_ones_do_nothing(otel: Any) -> None:
    lab = make_lab()
    user = next(f"o{i}" for i in range(1000) if lab.assign("checkout-redesign", f"o{i}").variant == "control")
    token = lab.make_token("checkout-redesign", "treatment", 600)
    client = wsgi_client(lab)
    assert (
        client.get("/", headers={"X-User-Id": user, "X-Fieldlab-Override": f"junk, {token}"}).json["checkout"]
        == "treatment"
    )
    attrs = dict(only_span(otel).attributes)
    assert attrs[A.forced_attr("checkout-redesign")] is True
    otel.clear()
    client.set_cookie("fieldlab_override", token)
    assert client.get("/", headers={"X-User-Id": user}).json["checkout"] == "treatment"
    client.delete_cookie("fieldlab_override")
    otel.clear()
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    for headers in (
        {"X-Fieldlab-Override": forged},
        {"X-Fieldlab-Override": "checkout-redesign=treatment"},
        {"Cookie": "fieldlab_override=checkout-redesign%3Dtreatment"},
    ):
        assert client.get("/", headers={"X-User-Id": user, **headers}).json["checkout"] == "control"
    assert not any(A.forced_attr("checkout-redesign") in s.attributes for s in otel.server_spans())


def test_baggage_is_ignored_unless_trusted_and_signed(otel: Any) -> None:
    lab = make_lab()
    user = next(f"b{i}" for i in range(1000) if lab.assign("checkout-redesign", f"b{i}").variant == "control")
    ctx = fieldlab.context.start(lab, {"user": "upstream"})
    ctx.assignments["checkout-redesign"] = fieldlab.Assignment("checkout-redesign", "treatment", 1, "split")
    signed = _request.outbound_baggage(ctx)
    assert signed is not None
    good = _request.baggage_header(signed)
    forged = _request.baggage_header(signed.replace(".", "x.", 1))
    untrusted = wsgi_client(lab)
    trusted = wsgi_client(lab, trust_baggage=True)
    assert untrusted.get("/", headers={"X-User-Id": user, "baggage": good}).json["checkout"] == "control"
    assert trusted.get("/", headers={"X-User-Id": user, "baggage": forged}).json["checkout"] == "control"
    assert (
        trusted.get("/", headers={"X-User-Id": user, "baggage": "fieldlab=checkout-redesign%3Dtreatment"}).json[
            "checkout"
        ]
        == "control"
    )
    assert trusted.get("/", headers={"X-User-Id": user, "baggage": good}).json["checkout"] == "treatment"


def test_outbound_baggage_is_signed_and_verifies(otel: Any) -> None:
    lab = make_lab()
    seen: dict[str, Any] = {}

    def app(environ: dict, start_response: Callable[..., Any]) -> list[bytes]:
        seen["baggage"] = otel_baggage.get_baggage(A.BAGGAGE_KEY)
        fieldlab.variant("checkout-redesign")
        start_response("200 OK", [])
        return [b""]

    WerkzeugClient(
        fl_wsgi.FieldLabMiddleware(app, lab=lab, units={"user": "header:X-User-Id"}, propagate_baggage=True)
    ).get("/", headers={"X-User-Id": "carol"})
    carried = _request.verify_baggage(lab.secret, seen["baggage"])
    assert carried is not None
    assert carried["checkout-redesign"] == lab.assign("checkout-redesign", "carol").variant
    assert otel_baggage.get_baggage(A.BAGGAGE_KEY) is None  # detached after the request


def test_a_raising_resolver_and_attribute_callable_take_the_default_path(otel: Any) -> None:
    lab = make_lab()
    before = dict(_request.stats)

    def boom(request: Any) -> str:
        raise RuntimeError("resolver down")

    client = wsgi_client(lab, units={"user": boom, "org": "header:X-Org"}, attributes=boom)
    r = client.get("/", headers={"X-Org": "acme"})
    assert r.status_code == 200
    assert r.json["checkout"] == "none"  # no user: not in the experiment
    assert r.json["org"] == lab.assign("per-org", "acme").variant
    assert _request.stats["resolver_errors"] > before["resolver_errors"]
    assert _request.stats["attribute_errors"] > before["attribute_errors"]


def test_a_failing_recorder_never_reaches_the_request(otel: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Any, ctx: Any, span: Any) -> None:
        raise RuntimeError("recorder down")

    monkeypatch.setattr(telemetry.Recorder, "attach", broken)
    lab = make_lab()
    for outer in (False, True):
        r = wsgi_client(lab, outer).get("/", headers={"X-User-Id": "dave"})
        assert r.status_code == 200
        assert r.json["checkout"] == lab.assign("checkout-redesign", "dave").variant


def test_fault_abort_and_events_reach_the_server_span(otel: Any) -> None:
    outage = Experiment(
        "outage", {"up": 1, "down": 1}, traffic=4, faults={"down": [{"status": 503, "body": "injected"}]}
    )
    lab = Lab([outage], faults={"enabled": True}, secret=SECRET)
    victim = next(f"u{i}" for i in range(100_000) if lab.assign("outage", f"u{i}").variant == "down")
    fine = next(f"u{i}" for i in range(100_000) if lab.assign("outage", f"u{i}").variant is None)

    def app(environ: dict, start_response: Callable[..., Any]) -> list[bytes]:
        ctx = fieldlab.current()
        ctx.event(A.FAULT_EVENT, {A.FAULT_POINT: "db.query", A.FAULT_KIND: "latency"})
        ctx.fault_injected = True
        start_response("200 OK", [])
        return [b"ok"]

    for outer in (False, True):
        inner = (
            fl_wsgi.FieldLabMiddleware(OtelWSGI(app), lab=lab, units={"user": "header:X-User-Id"})
            if outer
            else OtelWSGI(fl_wsgi.FieldLabMiddleware(app, lab=lab, units={"user": "header:X-User-Id"}))
        )
        client = WerkzeugClient(inner)
        r = client.get("/", headers={"X-User-Id": victim})
        assert (r.status_code, r.data) == (503, b"injected")
        otel.clear()
        assert client.get("/", headers={"X-User-Id": fine}).status_code == 200
        span = only_span(otel)
        assert span.attributes[A.FAULT_INJECTED] is True
        assert [e.attributes[A.FAULT_POINT] for e in span.events if e.name == A.FAULT_EVENT] == ["db.query"]
        otel.clear()


def test_visitor_cookie_is_secure_on_https_and_not_set_without_visitor_experiments(otel: Any) -> None:
    lab = Lab([Experiment("promo", {"control": 1, "promo": 1}, unit="visitor")])
    client = wsgi_client(lab)
    cookie = client.get("/", base_url="https://shop.test/").headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in wsgi_client(lab).get("/", base_url="http://shop.test/").headers["Set-Cookie"]
    assert "Set-Cookie" not in client.get("/", base_url="https://shop.test/").headers  # kept, not renewed
    plain = wsgi_client(make_lab())
    assert "Set-Cookie" not in plain.get("/", headers={"X-User-Id": "x"}).headers


def test_request_unit_uses_the_traceparent_without_a_span() -> None:
    lab = Lab([Experiment("per-request", {"a": 1, "b": 1}, unit="request")])
    seen: dict[str, Any] = {}

    def app(environ: dict, start_response: Callable[..., Any]) -> list[bytes]:
        seen["ctx"] = fieldlab.current()
        start_response("200 OK", [])
        return [b""]

    tid = "4bf92f3577b34da6a3ce929d0e0e4736"
    WerkzeugClient(fl_wsgi.FieldLabMiddleware(app, lab=lab)).get(
        "/", headers={"traceparent": f"00-{tid}-00f067aa0ba902b7-01"}
    )
    assert seen["ctx"].units["request"] == tid
    assert seen["ctx"].assignments["per-request"] == lab.assign("per-request", tid)


@pytest.mark.parametrize("spec, field", [({"user": "bogus"}, "units['user']"), ({"user": 42}, "units['user']")])
def test_bad_unit_resolvers_fail_at_init_naming_the_field(spec: Any, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        fl_wsgi.FieldLabMiddleware(wsgi_view, lab=make_lab(), units=spec)
    with pytest.raises(ConfigError, match="unit_ids"):
        fl_wsgi.FieldLabMiddleware(wsgi_view, lab=make_lab(), unit_ids="plain")
    with pytest.raises(ConfigError, match="lab"):
        fl_wsgi.FieldLabMiddleware(wsgi_view, lab="lab.toml")  # type: ignore[arg-type]


def test_threads_with_a_copied_context_see_the_request() -> None:
    lab = make_lab()
    seen: list[Any] = []

    def app(environ: dict, start_response: Callable[..., Any]) -> list[bytes]:
        ctx = contextvars.copy_context()
        t = threading.Thread(target=ctx.run, args=(lambda: seen.append(fieldlab.variant("checkout-redesign")),))
        t.start()
        t.join()
        bare = threading.Thread(target=lambda: seen.append(fieldlab.variant("checkout-redesign", "outside")))
        bare.start()
        bare.join()
        start_response("200 OK", [])
        return [b""]

    WerkzeugClient(fl_wsgi.FieldLabMiddleware(app, lab=lab, units={"user": "header:X-User-Id"})).get(
        "/", headers={"X-User-Id": "erin"}
    )
    assert seen == [lab.assign("checkout-redesign", "erin").variant, "outside"]
    assert fieldlab.variant("checkout-redesign", "after") == "after"


# --------------------------------------------------------------------------- ASGI
async def asgi_view(scope: dict, receive: Any, send: Any) -> None:
    import json

    if scope["type"] == "lifespan":
        return
    await asyncio.sleep(0)
    payload = view_payload()
    payload["task"] = await asyncio.create_task(asyncio.sleep(0, fieldlab.variant("checkout-redesign")))
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize("outer", [False, True], ids=["otel-outer", "fieldlab-outer"])
def test_asgi_middleware_with_concurrent_requests(otel: Any, outer: bool) -> None:
    lab = make_lab()
    opts = {"lab": lab, "units": {"user": "header:X-User-Id"}, "request_class": None}
    app = (
        fl_asgi.FieldLabMiddleware(OtelASGI(asgi_view), **opts)
        if outer
        else OtelASGI(fl_asgi.FieldLabMiddleware(asgi_view, **opts))
    )

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await asyncio.gather(*(client.get("/", headers={"X-User-Id": f"a{i}"}) for i in range(100)))

    responses = asyncio.run(run())
    for i, r in enumerate(responses):
        expected = lab.assign("checkout-redesign", f"a{i}").variant
        assert r.json()["checkout"] == r.json()["task"] == expected
    by_user = {s.attributes[A.unit_attr("user")]: s for s in otel.server_spans()}
    assert len(by_user) == 100
    hasher = telemetry.UnitHasher(SECRET.encode())
    for i in range(100):
        span = by_user[hasher(f"a{i}")]
        assert span.attributes[A.variant_attr("checkout-redesign")] == lab.assign("checkout-redesign", f"a{i}").variant


def test_asgi_reads_raw_headers_overrides_and_reuses_evaluations_by_raw_id(otel: Any) -> None:
    """ASGI looks prepared evaluations up by the raw header bytes; overrides (header or cookie) still win."""
    lab = Lab([Experiment("checkout-redesign", {"control": 1, "treatment": 1})], secret=SECRET)
    mw = fl_asgi.FieldLabMiddleware(
        OtelASGI(asgi_view), lab=lab, units={"user": "header:X-User-Id"}, request_class=None
    )
    user = next(f"x{i}" for i in range(1000) if lab.assign("checkout-redesign", f"x{i}").variant == "control")
    token = lab.make_token("checkout-redesign", "treatment", 600)

    async def run() -> list[str]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=mw), base_url="http://t") as client:
            seen = []
            for headers in (
                {"X-User-Id": user},
                {"X-User-Id": user},
                {"X-User-Id": user, "X-Fieldlab-Override": token},
                {"X-User-Id": user, "Cookie": f"theme=dark; fieldlab_override={token}"},
                {"X-User-Id": user, "Cookie": "fieldlab_override=checkout-redesign%3Dtreatment"},
                {"X-User-Id": user, "Cookie": "theme=dark"},
            ):
                seen.append((await client.get("/", headers=headers)).json()["checkout"])
            return seen

    assert asyncio.run(run()) == ["control", "control", "treatment", "treatment", "control", "control"]
    cache = mw.config.cache
    assert cache is not None and cache.get(user) is not None  # one evaluation, found by the id
    spans = otel.server_spans()
    plain = [dict(spans[i].attributes) for i in (0, 1, 5)]
    assert plain[0] == plain[1] == plain[2]  # a raw-id hit writes what the first request wrote
    assert [A.forced_attr("checkout-redesign") in s.attributes for s in spans] == [
        False,
        False,
        True,
        True,
        False,
        False,
    ]


def test_asgi_passes_websocket_and_lifespan_through() -> None:
    seen: list[Any] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        seen.append((scope["type"], fieldlab.current()))

    mw = fl_asgi.FieldLabMiddleware(app, lab=make_lab())
    for kind in ("lifespan", "websocket"):
        asyncio.run(mw({"type": kind}, None, None))
    assert seen == [("lifespan", None), ("websocket", None)]


def test_repeat_units_reuse_their_evaluation_and_stay_exact(otel: Any, tmp_path: Any) -> None:
    """Without targeting, assignments are cached per unit ids; overrides, baggage and reloads bypass or reset it."""
    config = tmp_path / "lab.toml"
    config.write_text('[[experiments]]\nkey = "checkout-redesign"\nvariants = ["control", "treatment"]\n')
    lab = Lab.from_file(config, secret=SECRET, reload_interval=0)
    client = wsgi_client(lab, fieldlab_outer=True)
    users = [f"r{i}" for i in range(30)]
    for _ in range(2):
        for u in users:
            assert (
                client.get("/", headers={"X-User-Id": u}).json["checkout"] == lab.assign("checkout-redesign", u).variant
            )
    cache = client.application.config.cache
    assert cache is not None and len(cache) == len(users)
    spans = otel.server_spans()
    by_user: dict[str, list[Any]] = {}
    for s in spans:
        by_user.setdefault(s.attributes[A.unit_attr("user")], []).append(
            (dict(s.attributes), [(e.name, dict(e.attributes)) for e in s.events])
        )
    assert all(len(v) == 2 and v[0] == v[1] for v in by_user.values())  # a cache hit writes what a miss wrote
    assert all(v[0][1] and v[0][1][0][0] == A.FLAG_EVENT for v in by_user.values())
    control = next(u for u in users if lab.assign("checkout-redesign", u).variant == "control")
    token = lab.make_token("checkout-redesign", "treatment", 60)
    assert client.get("/", headers={"X-User-Id": control, "X-Fieldlab-Override": token}).json["checkout"] == "treatment"
    assert client.get("/", headers={"X-User-Id": control}).json["checkout"] == "control"  # the override was not cached
    config.write_text(
        '[[experiments]]\nkey = "checkout-redesign"\nvariants = ["control", "treatment"]\nsalt = "fresh-population"\n'
    )
    os.utime(config, (time.time() + 5, time.time() + 5))
    assert lab.reload()
    for u in users:
        assert client.get("/", headers={"X-User-Id": u}).json["checkout"] == lab.assign("checkout-redesign", u).variant
