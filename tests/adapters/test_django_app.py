"""fieldlab's Django app on a real blog (SQLite, contrib.auth, sessions): system checks, template tags, session unit.

Django settings live once per process, so each wiring runs in its own
process: ``python -m django check`` (what ``manage.py check`` runs), the
scenarios of ``webapps/djblog/scenarios.py`` through Django's test client,
and the blog under gunicorn.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from serverkit import HERE, Server, read_spans

from fieldlab import Lab

BLOG_LAB = HERE / "webapps" / "djblog" / "blog.toml"
SRC = Path(__file__).resolve().parents[2] / "src"


def _env(tmp_path: Path, **env: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE)]),
        "DJBLOG_DB": str(tmp_path / "blog.sqlite3"),
        **env,
    }


def manage_check(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "django", "check", "--settings=webapps.djblog.settings"],
        cwd=HERE,
        env=_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def scenario(tmp_path: Path, name: str, **env: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "webapps.djblog.scenarios", name],
        cwd=HERE,
        env=_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def ids(text: str) -> list[str]:
    return sorted(re.findall(r"fieldlab\.[EW]\d{3}", text))


# --------------------------------------------------------------------------- system checks
@pytest.mark.parametrize(
    ("env", "expected", "fails"),
    [
        ({}, [], False),
        ({"DJBLOG_FIELDLAB": "missing"}, ["fieldlab.E001"], True),
        ({"DJBLOG_FIELDLAB": "not_dict"}, ["fieldlab.E002"], True),
        ({"DJBLOG_FIELDLAB": "unknown_key"}, ["fieldlab.E002", "fieldlab.W004"], True),
        ({"DJBLOG_FIELDLAB": "bad_create"}, ["fieldlab.E002"], True),
        ({"DJBLOG_FIELDLAB": "bad_lab"}, ["fieldlab.E003"], True),
        ({"DJBLOG_ORDER": "fieldlab_first"}, ["fieldlab.E004", "fieldlab.E005"], True),
        ({"DJBLOG_ORDER": "fieldlab_first", "DJBLOG_FIELDLAB": "no_session_exp"}, [], False),  # no user/session unit
        ({"DJBLOG_ORDER": "no_auth"}, ["fieldlab.W002", "fieldlab.W003"], False),
        ({"DJBLOG_ORDER": "none"}, ["fieldlab.W001"], False),
        ({"DJBLOG_ORDER": "twice"}, ["fieldlab.W005"], False),
        ({"DJBLOG_FIELDLAB": "no_create"}, ["fieldlab.W004"], False),
    ],
    ids=lambda v: "-".join(v.values()) if isinstance(v, dict) else None,
)
def test_manage_py_check_reports_fieldlab_wiring_mistakes(
    tmp_path: Path, env: dict[str, str], expected: list[str], fails: bool
) -> None:
    done = manage_check(tmp_path, **env)
    out = done.stdout + done.stderr
    assert ids(out) == expected, out
    assert (done.returncode != 0) is fails, out
    if not expected:
        assert "no issues" in out


def test_check_messages_name_the_problem_and_the_fix(tmp_path: Path) -> None:
    out = manage_check(tmp_path, DJBLOG_ORDER="fieldlab_first").stderr
    assert "comes before AuthenticationMiddleware" in out and "(welcome)" in out and "reason no_unit" in out
    assert (
        "HINT: move 'fieldlab.adapters.django.FieldLabMiddleware' after "
        "'django.contrib.auth.middleware.AuthenticationMiddleware'" in out
    )
    bad = manage_check(tmp_path, DJBLOG_FIELDLAB="bad_lab").stderr
    assert "experiments[0].traffic" in bad and "outside 0-100" in bad  # the ConfigError text


def test_checks_run_through_call_command(tmp_path: Path) -> None:
    assert scenario(tmp_path, "check") == {"error": None}
    failed = scenario(tmp_path, "check", DJBLOG_ORDER="fieldlab_first")["error"]
    assert ids(failed) == ["fieldlab.E004", "fieldlab.E005"]


def test_without_the_app_manage_py_check_cannot_see_fieldlab(tmp_path: Path) -> None:
    # documented: INSTALLED_APPS is what registers the checks before Django runs them
    out = manage_check(tmp_path, DJBLOG_APP="0", DJBLOG_ORDER="fieldlab_first")
    assert ids(out.stdout + out.stderr) == [] and out.returncode == 0


def test_silenced_checks_stay_silent(tmp_path: Path) -> None:
    settings = tmp_path / "silenced_settings.py"
    settings.write_text(
        "from webapps.djblog.settings import *  # noqa: F403\nSILENCED_SYSTEM_CHECKS = ['fieldlab.W004']\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "django", "check", "--settings=silenced_settings"],
        cwd=HERE,
        env={
            **_env(tmp_path, DJBLOG_FIELDLAB="no_create"),
            "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE), str(tmp_path)]),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ids(done.stdout + done.stderr) == [] and "1 silenced" in done.stdout


@pytest.mark.parametrize("app", ["1", "0"])
def test_wiring_mistakes_are_logged_at_gunicorn_start_up(tmp_path: Path, app: str) -> None:
    # gunicorn runs no Django checks: the middleware logs fieldlab's findings once when it is built
    server = Server(
        "gunicorn",
        "webapps.djblog.wsgi:application",
        tmp_path / "spans",
        env={
            "DJBLOG_APP": app,
            "DJBLOG_ORDER": "fieldlab_first",
            "DJBLOG_DB": str(tmp_path / "b.db"),
            "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE)]),
        },
    )
    server.start()
    try:
        assert requests.get(server.url + "/health", timeout=10).status_code == 200
        assert requests.get(server.url + "/health", timeout=10).status_code == 200
    finally:
        server.stop()
    log = server.log.read_text()
    assert ids(log) == ["fieldlab.E004", "fieldlab.E005"], log  # once each, not per request
    assert "move 'fieldlab.adapters.django.FieldLabMiddleware' after" in log


# --------------------------------------------------------------------------- template tags
def test_template_tags_read_variants_and_expose_them(tmp_path: Path) -> None:
    got = scenario(tmp_path, "template")
    first = got["first"]
    assert first["status"] == 200
    page = first["page"]
    assert page["variant"] == first["expect_quote"]
    assert page["words"] == str(first["expect_words"])  # {% param %}
    assert page["sidebar"] == first["expect_sidebar"] is not None  # create_session: an anonymous visitor is in it
    assert page["welcome"] == ""  # anonymous: not in the user experiment, no default -> nothing written
    assert page["missing"] == "fallback"
    span = first["span"]
    assert span["fieldlab.exposed.home-quote"] is True and span["fieldlab.exposed.sidebar"] is True
    assert span["fieldlab.variant.home-quote"] == first["expect_quote"]
    assert "fieldlab.exposed.welcome" not in span
    lazy = got["lazy"]  # a TemplateResponse renders after the view returns, still inside the middleware
    assert lazy["page"]["variant"] == first["expect_quote"] and lazy["span"]["fieldlab.exposed.home-quote"] is True


@pytest.mark.parametrize(
    ("runner", "target"),
    [("gunicorn", "webapps.djblog.wsgi:application"), ("uvicorn", "webapps.djblog.asgi:application")],
)
def test_template_tags_and_session_unit_under_a_real_server(tmp_path: Path, runner: str, target: str) -> None:
    server = Server(
        runner,
        target,
        tmp_path / "spans",
        env={"DJBLOG_DB": str(tmp_path / "b.db"), "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE)])},
    )
    migrate = subprocess.run(
        [sys.executable, "-m", "django", "migrate", "--settings=webapps.djblog.settings", "-v0"],
        cwd=HERE,
        env=_env(tmp_path, DJBLOG_DB=str(tmp_path / "b.db")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert migrate.returncode == 0, migrate.stderr
    server.start()
    lab = Lab.from_file(BLOG_LAB, reload_interval=0)
    seen = {}
    try:
        for _ in range(6):
            r = requests.get(server.url + "/", timeout=10)
            visitor = r.cookies["fieldlab_visitor"]
            session_key = r.cookies["sessionid"]
            variant = re.search(r'data-variant="([^"]*)"', r.text).group(1)  # type: ignore[union-attr]
            assert variant == lab.assign("home-quote", visitor).variant
            sidebar = re.search(r'<p id="sidebar">([^<]*)</p>', r.text).group(1)  # type: ignore[union-attr]
            assert sidebar == lab.assign("sidebar", session_key).variant
            seen[visitor] = variant
    finally:
        server.stop()
    exposed = {}
    for s in read_spans(server.span_dir):
        if s["kind"] == 2 and s["attrs"].get("fieldlab.exposed.home-quote"):
            exposed[s["attrs"]["fieldlab.unit.visitor"]] = s["attrs"]["fieldlab.variant.home-quote"]
    assert exposed == seen
    assert ids(server.log.read_text()) == []  # good wiring: nothing logged at start-up


def test_template_tag_outside_a_request_and_bad_syntax() -> None:
    from django.template import Context, Engine, TemplateSyntaxError

    import fieldlab
    from fieldlab import Experiment, context

    engine = Engine(libraries={"fieldlab": "fieldlab.adapters.django_app.templatetags.fieldlab"})
    tpl = engine.from_string(
        '{% load fieldlab %}[{% variant "exp" %}][{% variant "exp" default=danger %}]'
        '[{% param "exp" "size" default=fallback %}]{% variant "exp" as v %}[{{ v }}]'
    )
    # outside a request: the defaults, autoescaped like any output
    assert tpl.render(Context({"fallback": "f", "danger": "<b>"})) == "[][&lt;b&gt;][f][None]"
    lab = Lab([Experiment("exp", {"a": 1}, unit="user", params={"a": {"size": "L"}})])
    ctx = context.start(lab, {"user": "u1"})
    token = context.bind(ctx)
    try:
        assert tpl.render(Context({"fallback": "f", "danger": "<b>"})) == "[a][a][L][a]"
        assert "exp" in ctx.exposed
        assert fieldlab.current() is ctx
    finally:
        context.reset(token)
    for bad in ("{% variant %}", '{% variant "a" "b" %}', '{% variant "a" colour="x" %}', '{% param "a" %}'):
        with pytest.raises(TemplateSyntaxError, match="usage"):
            engine.from_string("{% load fieldlab %}" + bad)


# --------------------------------------------------------------------------- the session unit
def test_create_session_gives_anonymous_visitors_a_session_variant(tmp_path: Path) -> None:
    got = scenario(tmp_path, "session")
    assert got["anon_key"] is not None and got["again_key"] == got["anon_key"]  # created once, then kept
    assert got["page_anon"]["sidebar"] == got["expect_sidebar_anon"] is not None
    assert got["asgi_key"] is not None  # the async middleware path creates it too (asave)
    # login() cycles the session key: the session unit is drawn again (documented); the user unit is stable
    assert got["login_status"] == 200 and got["login_key"] != got["anon_key"]
    assert got["page_in"]["sidebar"] == got["expect_sidebar_in"]
    assert got["page_in"]["welcome"] == got["expect_welcome"]
    assert got["span_in"]["fieldlab.unit.user"] == got["user_pk"]


def test_without_create_session_anonymous_visitors_are_not_in_session_experiments(tmp_path: Path) -> None:
    got = scenario(tmp_path, "session", DJBLOG_FIELDLAB="no_create")
    assert got["anon_key"] is None and got["asgi_key"] is None
    assert got["page_anon"]["sidebar"] == "none"  # the template's default: not in the experiment
    assert got["page_in"]["sidebar"] == got["expect_sidebar_in"]  # logged in: the session exists


# --------------------------------------------------------------------------- HTTP caches (docs recipe)
def test_cache_page_recipe_serves_each_visitor_their_own_variant(tmp_path: Path) -> None:
    got = scenario(tmp_path, "cached")
    # docs/integration.md "HTTP caches and CDNs": @vary_on_cookie, and private on a first visit
    assert got["/cached"] == {"pages": 60, "wrong": 0}
    # without it, cache_page serves the first visitor's page to everyone (each of 30 fresh visitors is
    # in either variant with probability 1/2, so no wrong page at all would have probability 2**-29)
    assert got["/cached-naive"]["wrong"] > 0


def test_vary_on_variants_under_cache_page_serves_each_visitor_their_own_variant(tmp_path: Path) -> None:
    got = scenario(tmp_path, "cached")
    for path in ("/cached-auto", "/cached-auto-lazy"):  # render() and a TemplateResponse rendered later
        assert got[path]["pages"] == 60 and got[path]["wrong"] == 0, (path, got[path])
        assert "Cookie" in (got[path + " headers"]["vary"] or "")


@pytest.mark.parametrize(("fieldlab", "safe"), [("no_session_exp", True), ("no_session_exp_no_headers", False)])
def test_per_site_cache_middleware_serves_each_visitor_their_own_variant(
    tmp_path: Path, fieldlab: str, safe: bool
) -> None:
    # a visitor experiment on a view that never touches the session: only fieldlab's headers key the cache
    got = scenario(tmp_path, "sitecache", DJBLOG_ORDER="sitecache", DJBLOG_FIELDLAB=fieldlab)
    assert got["pages"] == 60
    if safe:
        assert got["wrong"] == 0, got
        assert got["last"]["vary"] == "Cookie"
        assert "Vary" not in got["health"] and got["health"]["Cache-Control"] == "max-age=600"  # no variant read
    else:  # cache_headers=False: the app said it handles caching, and the per-site cache mixes variants
        assert got["wrong"] > 0, got
        assert got["last"]["vary"] is None


# --------------------------------------------------------------------------- Django under ASGI without a span
def test_django_asgi_without_the_asgi_instrumentation_warns_once(tmp_path: Path) -> None:
    got = scenario(tmp_path, "asgi_span", DJBLOG_NO_ASGI_OTEL="1")
    assert got["statuses"] == [200, 200, 200]
    assert got["server_spans"] == 0  # DjangoInstrumentor skips ASGI requests without the package: silently
    assert len(got["asgi_warnings"]) == 1, got  # once, for three requests
    assert "install opentelemetry-instrumentation-asgi" in got["asgi_warnings"][0]


def test_django_asgi_with_the_asgi_instrumentation_does_not_warn(tmp_path: Path) -> None:
    got = scenario(tmp_path, "asgi_span")
    assert got["statuses"] == [200, 200, 200] and got["server_spans"] == 3
    assert got["asgi_warnings"] == []
