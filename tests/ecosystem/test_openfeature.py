"""fieldlab.openfeature.FieldLabProvider through the real OpenFeature SDK, in and outside real adapter requests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("openfeature")
flask = pytest.importorskip("flask")

from openfeature import api
from openfeature.contrib.hook.opentelemetry import TracingHook
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason
from opentelemetry.instrumentation.flask import FlaskInstrumentor

import fieldlab
from fieldlab import Lab, bucket
from fieldlab.adapters.flask import FieldLab
from fieldlab.openfeature import FieldLabProvider

CONFIG: dict[str, Any] = {
    "layers": [{"key": "checkout"}],
    "experiments": [
        {
            "key": "checkout-redesign",
            "variants": [{"name": "control"}, {"name": "one-page", "params": {"steps": 1, "title": "Pay"}}],
        },
        {"key": "page-size", "traffic": 30, "variants": [{"name": "10"}, {"name": "20"}]},
        {
            "key": "new-search",
            "variants": [{"name": "off", "params": {"value": False}}, {"name": "on", "params": {"value": True}}],
            "targeting": {"attr": "country", "op": "eq", "value": "DE"},
        },
        {"key": "paused-one", "status": "paused", "variants": ["a", "b"]},
        {"key": "done", "status": "concluded", "winner": "b", "variants": ["a", "b"]},
        {"key": "layered", "layer": "checkout", "layer_range": [0, 50], "variants": ["x", "y"]},
        {"key": "by-session", "unit": "session", "variants": ["s1", "s2"]},
    ],
}
USERS = [f"user-{i}" for i in range(60)]


@pytest.fixture
def lab() -> Lab:
    return Lab.from_dict(CONFIG)


@pytest.fixture
def client(lab: Lab) -> Iterator[Any]:
    api.set_provider(FieldLabProvider(lab))
    yield api.get_client()
    api.clear_hooks()
    api.shutdown()


def ec(user: str, **attrs: Any) -> EvaluationContext:
    return EvaluationContext(targeting_key=user, attributes=attrs)


def test_string_flag_is_the_variant_with_split_reason_and_metadata(client, lab):
    for user in USERS:
        d = client.get_string_details("checkout-redesign", "fallback", ec(user))
        a = lab.assign("checkout-redesign", user)
        assert (d.value, d.variant, d.reason) == (a.variant, a.variant, Reason.SPLIT)
        assert d.error_code is None
        assert d.flag_metadata["bucket"] == bucket("checkout-redesign", user) == a.bucket
        assert d.flag_metadata["version"] == lab.version
        assert d.flag_metadata["reason"] == "split" and d.flag_metadata["unitKind"] == "user"


def test_unknown_key_is_flag_not_found_with_the_default(client):
    d = client.get_string_details("checkout-redesing", "control", ec("alice"))
    assert d.value == "control" and d.error_code == ErrorCode.FLAG_NOT_FOUND and d.reason == Reason.ERROR


def test_not_in_experiment_gets_the_default_and_reason_default(client, lab):
    misses = [u for u in USERS if lab.assign("page-size", u).variant is None]
    assert misses, "traffic 30% should leave some of 60 users out"
    d = client.get_integer_details("page-size", 5, ec(misses[0]))
    assert (d.value, d.variant, d.reason) == (5, None, Reason.DEFAULT)
    assert d.flag_metadata["reason"] == "traffic"
    d = client.get_boolean_details("new-search", False, ec("alice", country="FR"))
    assert (d.value, d.reason, d.flag_metadata["reason"]) == (False, Reason.DEFAULT, "targeting")
    d = client.get_string_details("checkout-redesign", "control", EvaluationContext())
    assert (d.value, d.reason, d.flag_metadata["reason"]) == ("control", Reason.DEFAULT, "no_unit")


def test_status_reasons_disabled_and_static(client):
    d = client.get_string_details("paused-one", "a", ec("alice"))
    assert (d.value, d.reason) == ("a", Reason.DISABLED)
    d = client.get_string_details("done", "a", ec("alice"))
    assert (d.value, d.variant, d.reason) == ("b", "b", Reason.STATIC)


def test_typed_flags_use_the_value_param_or_the_variant_name(client, lab):
    for user in USERS[:20]:
        a = lab.assign("new-search", user, {"country": "DE"})
        assert client.get_boolean_value("new-search", None, ec(user, country="DE")) is (a.variant == "on")
        p = lab.assign("page-size", user)
        assert client.get_integer_value("page-size", -1, ec(user)) == (int(p.variant) if p.variant else -1)
        assert client.get_float_value("page-size", -1.0, ec(user)) == (float(p.variant) if p.variant else -1.0)


def test_a_variant_that_is_not_of_the_flag_type_is_type_mismatch(client):
    d = client.get_boolean_details("checkout-redesign", False, ec("alice"))
    assert d.value is False and d.error_code == ErrorCode.TYPE_MISMATCH and "string" in (d.error_message or "")


def test_object_flag_is_the_variant_params(client, lab):
    for user in USERS[:20]:
        a = lab.assign("checkout-redesign", user)
        assert client.get_object_value("checkout-redesign", {"default": True}, ec(user)) == dict(a.params)


def test_layer_is_flag_set_and_unit_kind_comes_from_the_attribute(client, lab):
    d = client.get_string_details("layered", "none", ec("alice"))
    assert d.flag_metadata["layer"] == d.flag_metadata["flagSetId"] == "checkout"
    d = client.get_string_details("by-session", "none", ec("alice", session="s-123"))
    assert d.variant == lab.assign("by-session", "s-123").variant and d.flag_metadata["unitKind"] == "session"


def test_reload_emits_configuration_changed(tmp_path):
    from openfeature.event import ProviderEvent

    path = tmp_path / "lab.json"
    path.write_text(json.dumps({"experiments": [{"key": "a", "variants": ["x", "y"]}]}))
    file_lab = Lab.from_file(path, reload_interval=0)
    seen: list[Any] = []
    api.set_provider(FieldLabProvider(file_lab))
    api.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, seen.append)
    try:
        path.write_text(
            json.dumps({"experiments": [{"key": "a", "variants": ["x", "y"]}, {"key": "b", "variants": ["p", "q"]}]})
        )
        assert file_lab.reload()
        assert seen and "b" in seen[0].flags_changed
        assert api.get_client().get_string_details("b", "-", ec("alice")).variant in {"p", "q"}
    finally:
        api.remove_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, seen.append)
        api.shutdown()


# ------------------------------------------------------------------ inside a real adapter request
def flask_app(lab: Lab, instrument: bool) -> Any:
    app = flask.Flask(__name__)
    of = api.get_client()

    @app.get("/checkout")
    def checkout() -> Any:
        # the evaluation context names someone else: inside a request the request's unit wins
        d = of.get_string_details("checkout-redesign", "control", ec("somebody-else"))
        obj = of.get_object_value("checkout-redesign", {}, ec("somebody-else"))
        return flask.jsonify(
            openfeature=d.value,
            reason=str(d.reason),
            obj=obj,
            fieldlab=fieldlab.variant("checkout-redesign", default="control"),
            exposed=sorted(fieldlab.current().exposed),
        )

    if instrument:
        FlaskInstrumentor().instrument_app(app)
    FieldLab(app, lab=lab, units={"user": "header:X-User-Id"})
    return app


def test_inside_a_flask_request_openfeature_agrees_with_fieldlab_and_exposes(client, lab, spans):
    app = flask_app(lab, instrument=True)
    web = app.test_client()
    try:
        for user in USERS[:30]:
            spans.clear()
            body = web.get("/checkout", headers={"X-User-Id": user}).get_json()
            expected = lab.assign("checkout-redesign", user)
            assert body["openfeature"] == body["fieldlab"] == expected.variant
            assert body["obj"] == dict(expected.params)
            assert body["exposed"] == ["checkout-redesign"]
            (server,) = [s for s in spans.get_finished_spans() if s.kind.name == "SERVER"]
            assert server.attributes["fieldlab.variant.checkout-redesign"] == expected.variant
            assert server.attributes["fieldlab.exposed.checkout-redesign"] is True
            events = [e for e in server.events if e.name == "feature_flag.evaluation"]
            assert len(events) == 1  # one exposure, however many times the flag was read
    finally:
        FlaskInstrumentor().uninstrument_app(app)


def test_with_the_opentelemetry_hook_each_records_its_own_event(client, lab, spans):
    """fieldlab: one event per exposure (no value); the hook: one per evaluation, with the value."""
    api.add_hooks([TracingHook()])
    app = flask_app(lab, instrument=True)
    try:
        app.test_client().get("/checkout", headers={"X-User-Id": "alice"})
    finally:
        FlaskInstrumentor().uninstrument_app(app)
    (server,) = [s for s in spans.get_finished_spans() if s.kind.name == "SERVER"]
    events = [dict(e.attributes) for e in server.events if e.name == "feature_flag.evaluation"]
    ours = [e for e in events if "feature_flag.result.value" not in e]
    hooks = [e for e in events if "feature_flag.result.value" in e]
    variant = lab.assign("checkout-redesign", "alice").variant
    assert len(ours) == 1 and ours[0]["feature_flag.result.variant"] == variant
    assert len(hooks) == 2  # the string and the object evaluation
    assert {e["feature_flag.provider.name"] for e in hooks} == {"fieldlab"}
    assert hooks[0]["feature_flag.result.variant"] == variant and hooks[0]["feature_flag.result.reason"] == "split"


def test_outside_a_request_nothing_is_exposed_and_no_event_is_written(client, lab, spans):
    from opentelemetry import trace

    with trace.get_tracer("t").start_as_current_span("job"):
        client.get_string_value("checkout-redesign", "control", ec("alice"))
    (job,) = spans.get_finished_spans()
    assert not job.events and not any(k.startswith("fieldlab.") for k in job.attributes)


def test_a_request_of_another_lab_does_not_answer_for_this_provider(client, lab):
    other = Lab.from_dict(
        {"experiments": [{"key": "checkout-redesign", "salt": "other-salt", "variants": ["control", "one-page"]}]}
    )
    app = flask.Flask(__name__)

    @app.get("/")
    def index() -> Any:
        return api.get_client().get_string_value("checkout-redesign", "none", ec("bob"))

    FieldLab(app, lab=other, units={"user": "header:X-User-Id"})
    assert (
        app.test_client().get("/", headers={"X-User-Id": "alice"}).text
        == lab.assign("checkout-redesign", "bob").variant
    )


def test_inside_an_asgi_request_the_async_api_agrees_with_fieldlab(client, lab):
    starlette = pytest.importorskip("starlette")
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from fieldlab.adapters.asgi import FieldLabMiddleware

    async def checkout(request: Any) -> Any:
        value = await api.get_client().get_string_value_async("checkout-redesign", "control", ec("somebody-else"))
        return JSONResponse({"openfeature": value, "fieldlab": fieldlab.variant("checkout-redesign")})

    app = Starlette(routes=[Route("/checkout", checkout)])
    app.add_middleware(FieldLabMiddleware, lab=lab, units={"user": "header:X-User-Id"})
    assert starlette
    with TestClient(app) as web:
        for user in USERS[:20]:
            body = web.get("/checkout", headers={"X-User-Id": user}).json()
            assert body["openfeature"] == body["fieldlab"] == lab.assign("checkout-redesign", user).variant
