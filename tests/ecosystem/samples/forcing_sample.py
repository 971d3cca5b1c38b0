"""A user's test file run by tests/ecosystem/test_pytest_plugin.py in a pytest subprocess (the plugin comes from
the ``pytest11`` entry point). The apps are module-level and used unforced first, so evaluations prepared before a
forcing exist when it starts."""

from __future__ import annotations

import django
import pytest
from django.conf import settings
from django.http import JsonResponse
from django.urls import path
from fastapi import FastAPI
from flask import Flask, jsonify
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import fieldlab
from fieldlab import Lab
from fieldlab.adapters.asgi import FieldLabMiddleware as AsgiMiddleware
from fieldlab.adapters.fastapi import FieldLabMiddleware as FastApiMiddleware
from fieldlab.adapters.flask import FieldLab

LAB = Lab.from_dict(
    {
        "experiments": [
            {
                "key": "checkout-redesign",
                "variants": [{"name": "control"}, {"name": "one-page", "params": {"steps": 1}}],
            },
            {"key": "search", "variants": ["classic", "semantic"]},
        ]
    }
)
UNITS = {"user": "header:X-User-Id"}
USER = {"X-User-Id": "alice"}
REAL = {key: LAB.assign(key, "alice").variant for key in LAB.experiments}
OTHER = {
    "checkout-redesign": "control" if REAL["checkout-redesign"] == "one-page" else "one-page",
    "search": "classic" if REAL["search"] == "semantic" else "semantic",
}


def payload() -> dict:
    return {
        "checkout": fieldlab.variant("checkout-redesign", "none"),
        "search": fieldlab.variant("search", "none"),
        "steps": fieldlab.param("checkout-redesign", "steps", 3),
    }


flask_app = Flask(__name__)
flask_app.get("/")(lambda: jsonify(payload()))
FlaskInstrumentor().instrument_app(flask_app)
FieldLab(flask_app, lab=LAB, units=UNITS)

starlette_app = Starlette(routes=[Route("/", lambda request: JSONResponse(payload()))])
starlette_app.add_middleware(AsgiMiddleware, lab=LAB, units=UNITS)

fastapi_app = FastAPI()
fastapi_app.get("/")(lambda: payload())
fastapi_app.add_middleware(FastApiMiddleware, lab=LAB, units=UNITS)

settings.configure(
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["*"],
    SECRET_KEY="test-only",
    MIDDLEWARE=["fieldlab.adapters.django.FieldLabMiddleware"],
    FIELDLAB={"lab": LAB, "units": UNITS},
)
django.setup()
urlpatterns = [path("", lambda request: JsonResponse(payload()))]

from django.test import Client

CLIENTS = {
    "flask": lambda: flask_app.test_client().get("/", headers=USER).get_json(),
    "starlette": lambda: TestClient(starlette_app).get("/", headers=USER).json(),
    "fastapi": lambda: TestClient(fastapi_app).get("/", headers=USER).json(),
    "django": lambda: Client().get("/", headers=USER).json(),
}
FRAMEWORKS = sorted(CLIENTS)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_1_unforced_is_the_real_assignment(fw):
    body = CLIENTS[fw]()
    assert (body["checkout"], body["search"]) == (REAL["checkout-redesign"], REAL["search"])


@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.fieldlab(**OTHER)
def test_2_marker_forces_every_test_client(fw):
    body = CLIENTS[fw]()
    assert (body["checkout"], body["search"]) == (OTHER["checkout-redesign"], OTHER["search"])
    assert body["steps"] == (1 if OTHER["checkout-redesign"] == "one-page" else 3)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_3_after_the_marker_nothing_is_forced(fw):
    body = CLIENTS[fw]()
    assert (body["checkout"], body["search"]) == (REAL["checkout-redesign"], REAL["search"])


@pytest.mark.fieldlab(**{"checkout-redesign": OTHER["checkout-redesign"]})
class TestClassMarker:
    @pytest.mark.fieldlab(search=OTHER["search"])
    def test_4_class_and_function_markers_merge(self):
        body = CLIENTS["flask"]()
        assert (body["checkout"], body["search"]) == (OTHER["checkout-redesign"], OTHER["search"])

    def test_5_fixture_forces_more_during_the_test(self, fieldlab_variants):
        assert CLIENTS["fastapi"]()["search"] == REAL["search"]
        fieldlab_variants.force("search", OTHER["search"])
        assert CLIENTS["fastapi"]()["search"] == OTHER["search"]
        assert LAB.assign("search", "alice").forced


def test_6_fixture_binds_a_request_for_code_outside_the_web(fieldlab_variants):
    fieldlab_variants.force("checkout-redesign", "one-page")
    assert fieldlab.variant("checkout-redesign", "none") == "none"
    with fieldlab_variants.request(LAB, {"user": "bob"}):
        assert fieldlab.variant("checkout-redesign") == "one-page"


@pytest.mark.fieldlab(**{"checkout-redesign": "one-page"})
def test_7_spans_show_the_forced_variant(fieldlab_spans):
    CLIENTS["flask"]()
    (span,) = fieldlab_spans.spans
    assert fieldlab_spans.variants() == [{"checkout-redesign": "one-page", "search": REAL["search"]}]
    assert fieldlab_spans.exposed() == [{"checkout-redesign", "search"}]
    assert span.attributes["fieldlab.forced.checkout-redesign"] is True
    assert "fieldlab.forced.search" not in span.attributes


def test_8_spans_unforced(fieldlab_spans):
    CLIENTS["flask"]()
    assert fieldlab_spans.variants() == [REAL]


@pytest.mark.fieldlab(**{"checkout-redesign": "three-page"})
def test_9_a_variant_the_experiment_lacks_fails_the_test():
    CLIENTS["flask"]()
