"""Zero-code wiring: the ``fieldlab`` OpenTelemetry instrumentor under real ``opentelemetry-instrument`` runs
(gunicorn, uvicorn, a Django script), in-process ordering and ``uninstrument()``, and fieldlab.otel's span files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from ecokit import (
    APPS,
    BIN,
    LAB_PATH,
    InstrumentedServer,
    declared_entry_points,
    python_path,
    wait_for_spans,
)

from fieldlab import ConfigError, Lab
from fieldlab.instrumentation import FieldLabInstrumentor, parse_units

for _name in ("flask", "fastapi", "django", "opentelemetry.instrumentation.flask"):
    pytest.importorskip(_name)

USERS = [f"user-{i}" for i in range(24)]
GROUPS = ["opentelemetry_instrumentor", "opentelemetry_traces_exporter"]


@pytest.fixture(scope="module")
def lab() -> Lab:
    return Lab.from_file(LAB_PATH, reload_interval=0)


def instrument_env(tmp: Path, spans: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": python_path(tmp, GROUPS, APPS),
        "FIELDLAB_CONFIG": str(LAB_PATH),
        "FIELDLAB_UNITS": "user=header:X-User-Id",
        "OTEL_TRACES_EXPORTER": "fieldlab_jsonl",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "FIELDLAB_SPANS_DIR": str(spans),
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_SERVICE_NAME": "zero-code",
    }
    env.pop("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", None)
    return env


def server_spans(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in spans if s["kind"] in (2, "SPAN_KIND_SERVER") and "/checkout" in str(s["name"])]


def check_served(url: str, lab: Lab, spans_dir: Path) -> list[dict[str, Any]]:
    for user in USERS:
        body = requests.get(url + "/checkout", headers={"X-User-Id": user}, timeout=10).json()
        assert body["variant"] == lab.assign("checkout-redesign", user).variant, body
        assert body["span"] is True  # the request had a server span for fieldlab to write on
    spans = server_spans(wait_for_spans(spans_dir, lambda s: len(server_spans(s)) >= len(USERS)))
    assert len(spans) == len(USERS)
    for span in spans:
        attrs = span["attributes"]
        user = attrs["fieldlab.unit.user"]
        assert attrs["fieldlab.variant.checkout-redesign"] == lab.assign("checkout-redesign", user).variant
        assert attrs["fieldlab.exposed.checkout-redesign"] is True
        assert attrs["fieldlab.config.version"] == lab.version
        search = lab.assign("search", user).variant
        assert attrs.get("fieldlab.variant.search") == search and "fieldlab.exposed.search" not in attrs
    return spans


def test_entry_points_are_declared():
    assert declared_entry_points("opentelemetry_instrumentor") == {
        "fieldlab": "fieldlab.instrumentation:FieldLabInstrumentor"
    }
    assert declared_entry_points("opentelemetry_traces_exporter") == {
        "fieldlab_jsonl": "fieldlab.otel:SpanFilesExporter"
    }


def test_flask_under_gunicorn_with_two_workers_one_span_file_each(tmp_path, lab):
    spans_dir = tmp_path / "spans"
    argv = [str(BIN / "gunicorn"), "-w", "2", "-b", "127.0.0.1:{port}", "--log-level", "warning", "zero_flask:app"]
    with InstrumentedServer(argv, instrument_env(tmp_path, spans_dir), tmp_path / "server.log") as server:
        spans = check_served(server.url, lab, spans_dir)
    files = {s["file"] for s in spans}
    assert all(f.startswith("spans-zero-code-") and f.endswith(".jsonl") for f in files)
    pids = {int(f.rsplit("-", 1)[1].split(".")[0]) for f in files}
    assert server.proc is not None and server.proc.pid not in pids  # written by the workers, not the master


def test_fastapi_under_uvicorn(tmp_path, lab):
    spans_dir = tmp_path / "spans"
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--log-level",
        "warning",
        "zero_fastapi:app",
    ]
    # `python -m uvicorn`: opentelemetry-instrument runs the command it is given, with its sitecustomize on the path
    with InstrumentedServer(argv, instrument_env(tmp_path, spans_dir), tmp_path / "server.log") as server:
        check_served(server.url, lab, spans_dir)


def test_django_script_under_opentelemetry_instrument_python(tmp_path, lab):
    env = {**instrument_env(tmp_path, tmp_path / "spans"), "DJANGO_SETTINGS_MODULE": "zero_django_settings"}
    run = subprocess.run(
        [str(BIN / "opentelemetry-instrument"), sys.executable, "zero_django.py", *USERS[:8]],
        cwd=APPS,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 8, run.stdout + run.stderr
    for line in lines:
        assert line["variant"] == lab.assign("checkout-redesign", line["user"]).variant
    middleware = lines[0]["middleware"]
    assert middleware[-1] == "fieldlab.adapters.django.FieldLabMiddleware"
    assert middleware.index("django.contrib.auth.middleware.AuthenticationMiddleware") < len(middleware) - 1
    otel = [i for i, m in enumerate(middleware) if m.startswith("opentelemetry.")]
    assert otel and otel[0] < len(middleware) - 1  # OpenTelemetry's middleware outside fieldlab's


def test_without_fieldlab_config_nothing_is_added(tmp_path, lab):
    env = instrument_env(tmp_path, tmp_path / "spans")
    env.pop("FIELDLAB_CONFIG")
    env["DJANGO_SETTINGS_MODULE"] = "zero_django_settings"
    run = subprocess.run(
        [str(BIN / "opentelemetry-instrument"), sys.executable, "zero_django.py", "alice"],
        cwd=APPS,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    (line,) = [json.loads(x) for x in run.stdout.splitlines() if x.startswith("{")]
    assert line["variant"] == "none" and "fieldlab.adapters.django.FieldLabMiddleware" not in line["middleware"]
    assert "FIELDLAB_CONFIG is not set" in run.stderr


def test_a_bad_config_is_logged_and_the_app_still_runs(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[experiments]]\nkey = "x"\ntrafic = 5\nvariants = ["a", "b"]\n')
    env = {
        **instrument_env(tmp_path, tmp_path / "spans"),
        "FIELDLAB_CONFIG": str(bad),
        "DJANGO_SETTINGS_MODULE": "zero_django_settings",
    }
    run = subprocess.run(
        [str(BIN / "opentelemetry-instrument"), sys.executable, "zero_django.py", "alice"],
        cwd=APPS,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0 and '"variant": "none"' in run.stdout, run.stderr
    assert "fieldlab: not added to the apps" in run.stderr and "did you mean 'traffic'" in run.stderr


# ------------------------------------------------------------------------------------------ in process
def test_parse_units():
    assert parse_units(" user=header:X-User-Id , visitor=cookie:vid,") == {
        "user": "header:X-User-Id",
        "visitor": "cookie:vid",
    }
    for bad in ("user", "user=X-User-Id", "user=query:id", "=header:X", "user=header:"):
        with pytest.raises(ConfigError, match="FIELDLAB_UNITS"):
            parse_units(bad)
    with pytest.raises(ConfigError, match="twice"):
        parse_units("user=header:A,user=header:B")


@pytest.mark.parametrize("fieldlab_first", [True, False], ids=["fieldlab-first", "otel-first"])
def test_flask_in_process_order_and_uninstrument(lab, fieldlab_first, spans):
    import flask
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    order = [FieldLabInstrumentor(), FlaskInstrumentor()]
    if not fieldlab_first:
        order.reverse()
    for instrumentor in order:
        instrumentor.instrument(
            **(
                {"lab": lab, "units": {"user": "header:X-User-Id"}}
                if isinstance(instrumentor, FieldLabInstrumentor)
                else {}
            )
        )
    try:
        app = flask.Flask(__name__)
        app.get("/checkout")(lambda: {"variant": __import__("fieldlab").variant("checkout-redesign", "none")})
        web = app.test_client()
        for user in USERS[:6]:
            assert (
                web.get("/checkout", headers={"X-User-Id": user}).json["variant"]
                == lab.assign("checkout-redesign", user).variant
            )
        names = [getattr(f, "__qualname__", "") for f in app.before_request_funcs[None]]
        assert any("_before_request" in n for n in names[:-1]) and "FieldLab" in names[-1]  # OTel first: outside
        server = [s for s in spans.get_finished_spans() if s.kind.name == "SERVER"]
        assert len(server) == 6 and all("fieldlab.variant.checkout-redesign" in s.attributes for s in server)
    finally:
        for instrumentor in reversed(order):
            instrumentor.uninstrument()
    assert "fieldlab" not in app.extensions and len(app.before_request_funcs.get(None, [])) <= 1
    assert web.get("/checkout", headers={"X-User-Id": "alice"}).json["variant"] == "none"
    fresh = flask.Flask(__name__)
    fresh.get("/")(lambda: "x")
    fresh.test_client().get("/")
    assert "fieldlab" not in fresh.extensions


def test_a_flask_app_that_wires_fieldlab_itself_is_left_alone(lab):
    import flask

    from fieldlab.adapters.flask import FieldLab

    FieldLabInstrumentor().instrument(lab=lab)
    try:
        app = flask.Flask(__name__)
        own = FieldLab(app, lab=lab, units={"user": "header:X-Own"})
        app.get("/")(lambda: __import__("fieldlab").variant("checkout-redesign", "none"))
        assert (
            app.test_client().get("/", headers={"X-Own": "bob"}).text == lab.assign("checkout-redesign", "bob").variant
        )
        assert app.extensions["fieldlab"] is own
    finally:
        FieldLabInstrumentor().uninstrument()


@pytest.mark.parametrize("framework", ["starlette", "fastapi"])
def test_asgi_in_process_order_mounts_and_uninstrument(lab, framework, spans):
    from starlette.responses import JSONResponse
    from starlette.routing import Mount, Route
    from starlette.testclient import TestClient

    import fieldlab

    if framework == "fastapi":
        import fastapi
        from opentelemetry.instrumentation.fastapi import (
            FastAPIInstrumentor as OtelInstrumentor,
        )
    else:
        import starlette.applications
        from opentelemetry.instrumentation.starlette import (
            StarletteInstrumentor as OtelInstrumentor,
        )

    def view(request: Any) -> Any:
        ctx = fieldlab.current()
        return JSONResponse(
            {
                "variant": fieldlab.variant("checkout-redesign", "none"),
                "span": ctx is not None and ctx.server_span is not None,
            }
        )

    OtelInstrumentor().instrument()
    FieldLabInstrumentor().instrument(lab=lab, units={"user": "header:X-User-Id"})
    try:
        if framework == "fastapi":
            app = fastapi.FastAPI()
            sub = fastapi.FastAPI()
            app.add_api_route("/checkout", lambda: view(None))
            sub.add_api_route("/checkout", lambda: view(None))
            app.mount("/sub", sub)
        else:
            sub = starlette.applications.Starlette(routes=[Route("/checkout", view)])
            app = starlette.applications.Starlette(routes=[Route("/checkout", view), Mount("/sub", sub)])
        with TestClient(app) as web:
            for path in ("/checkout", "/sub/checkout"):
                for user in USERS[:5]:
                    body = web.get(path, headers={"X-User-Id": user}).json()
                    assert body == {"variant": lab.assign("checkout-redesign", user).variant, "span": True}
        if framework == "starlette":
            names = [m.cls.__name__ for m in app.user_middleware]
            assert names.index("OpenTelemetryMiddleware") < names.index("_AutoASGI")
        server = [s for s in spans.get_finished_spans() if s.kind.name == "SERVER"]
        assert server and all(s.attributes.get("fieldlab.exposed.checkout-redesign") is True for s in server)
    finally:
        FieldLabInstrumentor().uninstrument()
        OtelInstrumentor().uninstrument()
    with TestClient(app) as web:
        assert web.get("/checkout", headers={"X-User-Id": "alice"}).json()["variant"] == "none"
