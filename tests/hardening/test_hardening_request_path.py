"""Adversarial input on the request path: nothing a client sends may crash a process or bend the contract.

Each test names the defect it pins (issue 10, section 1). Inputs that used to
kill the interpreter (MurmurHash's C code segfaults on a ``str`` holding a lone
surrogate) run in a child process, so the old behaviour fails the test instead
of the test run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import fieldlab
from fieldlab import Experiment, Lab

LAB_TOML = """
[[experiments]]
key = "exp-a"
variants = ["control", "treatment"]
"""


def _child(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (a segfault there is a return code here)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)


# ----------------------------------------------------------- 1. lone surrogates never reach the C hash
def test_lone_surrogate_unit_id_does_not_segfault_and_gets_no_unit():
    proc = _child("""
        import json, fieldlab
        from fieldlab import Experiment, Holdout, Layer, Lab
        simple = Lab([Experiment("exp-a", {"control": 1, "treatment": 1})])
        full = Lab([Experiment("exp-b", {"control": 1, "treatment": 1}, layer="l1", layer_range=(0, 100),
                               targeting={"attr": "country", "op": "eq", "value": "DE"})],
                   layers=[Layer("l1")], holdouts=[Holdout("h", percent=10, experiments=["exp-b"])])
        out = []
        for unit in ("x\\udcff", "\\ud800", "\\udcff\\udcfe"):
            out.append(simple.assign("exp-a", unit).reason)
            out.append(simple.assign_all({"user": unit})["exp-a"].reason)
            out.append(full.assign("exp-b", unit, {"country": "DE"}).reason)
            out.append(full.assign_all({"user": unit}, {"country": "DE"})["exp-b"].reason)
        print(json.dumps({"reasons": out, "simple": simple.stats, "full": full.stats}))
    """)
    assert proc.returncode == 0, f"child died with {proc.returncode}: {proc.stderr[-2000:]}"
    result = json.loads(proc.stdout)
    assert set(result["reasons"]) == {"no_unit"}
    assert result["simple"]["invalid_units"] == 6 and result["full"]["invalid_units"] == 6
    assert result["simple"]["errors"] == 0 and result["full"]["errors"] == 0


def test_lone_surrogate_in_a_salt_is_a_config_error_not_a_traceback_or_segfault():
    proc = _child("""
        from fieldlab import ConfigError, Experiment, Lab
        try:
            lab = Lab([Experiment("exp-a", {"control": 1, "treatment": 1}, salt="s\\udcff")])
            print("built", lab.assign("exp-a", "alice").reason)
        except ConfigError as exc:
            print("ConfigError", exc.path)
    """)
    assert proc.returncode == 0, f"child died with {proc.returncode}: {proc.stderr[-2000:]}"
    assert proc.stdout.strip() == "ConfigError experiments[0].salt"


def test_lone_surrogate_in_public_hash_raises_value_error_instead_of_segfault():
    proc = _child("""
        import fieldlab
        for call in (lambda: fieldlab.hash32("\\ud800"), lambda: fieldlab.bucket("salt", "x\\udcff")):
            try:
                call()
            except ValueError as exc:
                print("ValueError", "lone surrogate" in str(exc))
    """)
    assert proc.returncode == 0, f"child died with {proc.returncode}: {proc.stderr[-2000:]}"
    assert proc.stdout.split("\n")[:2] == ["ValueError True", "ValueError True"]


def test_valid_non_ascii_unit_ids_keep_their_contract_bucket():
    lab = Lab([Experiment("exp-a", {"control": 1, "treatment": 1})])
    salt = lab.experiments["exp-a"].salt
    for unit in ("ü", "Ã¼", "用户-42", "😀", "é" * 300):
        a = lab.assign("exp-a", unit)
        assert a.reason in ("split", "traffic") and a.bucket == fieldlab.bucket(salt, unit)
        assert lab.assign_all({"user": unit})["exp-a"] == a
    assert fieldlab.hash32("ü") == fieldlab.hash32("ü".encode().decode("utf-8"))
    assert lab.stats["invalid_units"] == 0


def _cli(*argv: bytes | str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "fieldlab.cli", *argv], input=stdin, capture_output=True, timeout=60)


def test_cli_assign_non_utf8_unit_is_one_line_exit_2_not_segfault(tmp_path: Path):
    config = tmp_path / "lab.toml"
    config.write_text(LAB_TOML)
    for argv in ((b"--unit", b"\xff\xfe"), (b"--unit", b"ok", b"--unit-kind", b"user=\xed\xa0\x80")):
        proc = _cli(b"assign", str(config).encode(), *argv)
        assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
        assert proc.stdout == b""
        err = proc.stderr.decode("utf-8", "replace")
        assert err.count("\n") == 1 and "not valid UTF-8" in err and "Traceback" not in err
    ok = _cli(b"assign", str(config).encode(), "--unit", "ü", "--json")
    assert ok.returncode == 0
    lab = Lab.from_file(config, reload_interval=0)
    assert json.loads(ok.stdout)["bucket"] == fieldlab.bucket(lab.experiments["exp-a"].salt, "ü")


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_cli_segment_non_utf8_unit_is_one_line_exit_2_not_segfault(tmp_path: Path, source: str):
    config = tmp_path / "lab.toml"
    config.write_text(LAB_TOML)
    units = tmp_path / "units.txt"
    units.write_bytes(b"alice\n\xff\xfe\n")
    if source == "file":
        proc = _cli(b"segment", str(config).encode(), b"exp-a", b"--units", str(units).encode())
    else:
        proc = _cli(b"segment", str(config).encode(), b"exp-a", b"--units", b"-", stdin=units.read_bytes())
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    err = proc.stderr.decode("utf-8", "replace")
    assert err.count("\n") == 1 and "line 2" in err and "not valid UTF-8" in err and "Traceback" not in err


# ----------------------------------------------------------- 2. header and cookie ids are UTF-8 text
def _two_kind_lab() -> Lab:
    return Lab(
        [
            Experiment("exp-a", {"control": 1, "treatment": 1}),
            Experiment("exp-s", {"a": 1, "b": 1, "c": 1}, unit="session"),
        ]
    )


def _app_payload() -> bytes:
    ctx = fieldlab.context.current()
    out = {
        "units": dict(ctx.units) if ctx else None,
        "a": {k: a.to_dict() for k, a in ctx.assignments.items()} if ctx else None,
    }
    return json.dumps(out).encode()


def _wsgi_get(app, headers: dict[str, bytes]) -> dict:
    """One request through a WSGI app, headers given as the bytes on the wire (PEP 3333: latin-1 in environ)."""
    from wsgiref.util import setup_testing_defaults

    environ: dict = {"REQUEST_METHOD": "GET", "PATH_INFO": "/"}
    setup_testing_defaults(environ)
    for name, raw in headers.items():
        environ["HTTP_" + name.upper().replace("-", "_")] = raw.decode("latin-1")
    status: list[str] = []
    body = b"".join(app(environ, lambda s, h, e=None: status.append(s)))
    assert status[0].startswith("200")
    return json.loads(body)


def _asgi_get(app, headers: dict[str, bytes]) -> dict:
    import asyncio

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "scheme": "http",
        "headers": [(name.lower().encode("latin-1"), raw) for name, raw in headers.items()],
    }
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 200
    return json.loads(b"".join(m.get("body", b"") for m in sent[1:]))


def _wsgi_app(lab: Lab, units: dict):
    from fieldlab.adapters.wsgi import FieldLabMiddleware

    def inner(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/json")])
        return [_app_payload()]

    return FieldLabMiddleware(inner, lab=lab, units=units), _wsgi_get


def _flask_app(lab: Lab, units: dict):
    import flask

    from fieldlab.adapters.flask import FieldLab

    app = flask.Flask("hardening")
    app.get("/")(lambda: flask.Response(_app_payload(), mimetype="application/json"))
    FieldLab(app, lab=lab, units=units)
    return app.wsgi_app, _wsgi_get


def _asgi_app(lab: Lab, units: dict):
    from fieldlab.adapters.asgi import FieldLabMiddleware

    async def inner(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": _app_payload()})

    return FieldLabMiddleware(inner, lab=lab, units=units), _asgi_get


@pytest.fixture(scope="module")
def cli_bucket_of_u_umlaut(tmp_path_factory: pytest.TempPathFactory) -> int:
    config = tmp_path_factory.mktemp("cli") / "lab.toml"
    config.write_text(LAB_TOML)
    proc = _cli(b"assign", str(config).encode(), "--unit", "ü", "--experiment", "exp-a", "--json")
    assert proc.returncode == 0, proc.stderr
    return int(json.loads(proc.stdout)["bucket"])


@pytest.mark.parametrize("make", [_wsgi_app, _flask_app, _asgi_app], ids=["wsgi", "flask", "asgi"])
@pytest.mark.parametrize(
    "units",
    [{"user": "header:X-User-Id"}, {"user": "header:X-User-Id", "session": "cookie:sid"}],
    ids=["one-header", "header+cookie"],
)
def test_header_unit_ids_are_decoded_as_utf8_not_latin1(make, units: dict, cli_bucket_of_u_umlaut: int):
    lab = _two_kind_lab()
    app, get = make(lab, units)
    salt_a, salt_s = lab.experiments["exp-a"].salt, lab.experiments["exp-s"].salt
    assert fieldlab.bucket(salt_a, "ü") == cli_bucket_of_u_umlaut
    cookie = {"Cookie": b"sid=" + "é-42".encode()} if "session" in units else {}
    for attempt in range(2):  # the first evaluates, the second comes from the adapter's prepared cache
        got = get(app, {"X-User-Id": "ü".encode(), **cookie})
        assert got["units"]["user"] == "ü", attempt
        assert got["a"]["exp-a"]["bucket"] == fieldlab.bucket(salt_a, "ü") == cli_bucket_of_u_umlaut
        if cookie:
            assert got["units"]["session"] == "é-42"
            assert got["a"]["exp-s"]["bucket"] == fieldlab.bucket(salt_s, "é-42")
    assert lab.stats["invalid_units"] == 0
    # bytes that are not UTF-8 are no unit, never their latin-1 reading (0xFC alone is latin-1 "ü",
    # which must not share the prepared evaluation of the UTF-8 "ü" above)
    for raw in (b"\xfc", b"\xff\xfe", b"ok\xed\xa0\x80"):
        for attempt in range(2):
            got = get(app, {"X-User-Id": raw})
            assert got["units"]["user"] is None, (raw, attempt)
            assert got["a"]["exp-a"]["reason"] == "no_unit"
    assert lab.stats["invalid_units"] >= 3
    if cookie:
        got = get(app, {"X-User-Id": b"bob", "Cookie": b"other=\xff; sid=\xe9"})
        assert got["units"] == {"user": "bob", "session": None}
        assert got["a"]["exp-a"]["bucket"] == fieldlab.bucket(salt_a, "bob")


# ----------------------------------------------------------- 3. a context's version names the config that assigned
def _config(tag: str, variants: int) -> str:
    names = ", ".join(f'"{tag}{i}"' for i in range(variants))
    return "".join(f'[[experiments]]\nkey = "exp-{n}"\nvariants = [{names}]\n\n' for n in range(8))


def _flip_configs(path: Path, lab: Lab, stop: threading.Event, count: list[int]) -> None:
    configs = [_config("a", 2), _config("b", 3)]  # different sizes: every write is a new file signature
    i = 0
    while not stop.is_set():
        i += 1
        path.write_text(configs[i % 2])
        lab.reload()
        count[0] += 1


def _versions(tmp_path: Path) -> dict[str, str]:
    out = {}
    for tag, n in (("a", 2), ("b", 3)):
        p = tmp_path / f"probe-{tag}.toml"
        p.write_text(_config(tag, n))
        out[Lab.from_file(p, reload_interval=0).version] = tag
    return out


def _check_snapshot(ctx: fieldlab.context.RequestContext, versions: dict[str, str]) -> bool:
    tag = versions[ctx.version]
    return all(a.variant is None or a.variant.startswith(tag) for a in ctx.assignments.values())


def test_config_version_and_assignments_come_from_one_snapshot_while_reloading(tmp_path: Path):
    path = tmp_path / "lab.toml"
    path.write_text(_config("a", 2))
    lab = Lab.from_file(path, reload_interval=0)
    versions = _versions(tmp_path)
    stop, count = threading.Event(), [0]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as CPython allows: the race window is a few bytecodes
    flipper = threading.Thread(target=_flip_configs, args=(path, lab, stop, count), daemon=True)
    flipper.start()
    try:
        mixed = checked = 0
        deadline = time.monotonic() + 20
        while (checked < 200_000 or count[0] < 200) and time.monotonic() < deadline:
            ctx = fieldlab.context.start(lab, {"user": f"u{checked}"})
            checked += 1
            if not _check_snapshot(ctx, versions):
                mixed += 1
    finally:
        stop.set()
        flipper.join()
        sys.setswitchinterval(old)
    assert count[0] >= 50, "the config was hardly reloaded; the test proved nothing"
    assert mixed == 0, f"{mixed} of {checked} contexts carry another config's version than their assignments"


def test_adapter_prepared_cache_never_mixes_configs_while_reloading(tmp_path: Path):
    from fieldlab.adapters.wsgi import FieldLabMiddleware

    path = tmp_path / "lab.toml"
    path.write_text(_config("a", 2))
    lab = Lab.from_file(path, reload_interval=0)
    versions = _versions(tmp_path)
    seen: list[bool] = []

    def inner(environ, start_response):
        seen.append(_check_snapshot(fieldlab.context.current(), versions))
        start_response("200 OK", [])
        return [b""]

    app = FieldLabMiddleware(inner, lab=lab, units={"user": "header:X-User-Id"})
    stop, count = threading.Event(), [0]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    flipper = threading.Thread(target=_flip_configs, args=(path, lab, stop, count), daemon=True)
    flipper.start()
    try:
        deadline = time.monotonic() + 20
        n = 0
        while (n < 40_000 or count[0] < 200) and time.monotonic() < deadline:
            _wsgi_status(app, f"u{n % 50}")  # few ids: most requests come from the prepared cache
            n += 1
    finally:
        stop.set()
        flipper.join()
        sys.setswitchinterval(old)
    assert count[0] >= 50 and all(seen), f"{seen.count(False)} of {len(seen)} requests mixed configs"
    # after the last reload, every id (cached or not) is served by the config in force
    seen.clear()
    for n in range(50):
        _wsgi_status(app, f"u{n}")
    final = versions[lab.version]
    assert all(seen)
    assert all(fieldlab.context.start(lab, {"user": f"u{n}"}).version == lab.version for n in range(3))
    ctxs: list = []

    def grab(environ, start_response):
        ctxs.append(fieldlab.context.current())
        start_response("200 OK", [])
        return [b""]

    app.app = grab
    for n in range(50):
        _wsgi_status(app, f"u{n}")
    assert {versions[c.version] for c in ctxs} == {final}


def test_prepared_cache_refuses_an_evaluation_made_under_the_previous_config(tmp_path: Path):
    """Deterministic form of the race above: a reload and another request land while a request prepares."""
    from fieldlab.adapters.wsgi import FieldLabMiddleware

    path = tmp_path / "lab.toml"
    path.write_text(_config("a", 2))
    lab = Lab.from_file(path, reload_interval=0)
    versions = _versions(tmp_path)
    ctxs: list = []

    def inner(environ, start_response):
        ctxs.append(fieldlab.context.current())
        start_response("200 OK", [])
        return [b""]

    app = FieldLabMiddleware(inner, lab=lab, units={"user": "header:X-User-Id"})
    cfg = app.config
    real_unit_values = cfg.recorder.unit_values
    racing = [True]

    def unit_values_then_reload(units):  # runs inside the request's preparation, after it evaluated
        if racing:
            racing.clear()
            path.write_text(_config("b", 3))
            assert lab.reload()
            cfg.plan()  # what the next request (in another thread) does first: a fresh cache for the new config
        return real_unit_values(units)

    cfg.recorder.unit_values = unit_values_then_reload
    _wsgi_status(app, "alice")  # evaluated under config a, while config b took over
    _wsgi_status(app, "alice")  # must be config b, not a cached config-a evaluation
    assert [versions[c.version] for c in ctxs] == ["a", "b"]
    assert all(_check_snapshot(c, versions) for c in ctxs)


def _wsgi_status(app, user: str) -> None:
    from wsgiref.util import setup_testing_defaults

    environ: dict = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "HTTP_X_USER_ID": user}
    setup_testing_defaults(environ)
    b"".join(app(environ, lambda s, h, e=None: None))


def test_rebinding_the_request_unit_after_a_reload_keeps_one_snapshot(tmp_path: Path):
    def config(tag: str) -> str:
        return (
            f'[[experiments]]\nkey = "per-user"\nvariants = ["{tag}0", "{tag}1"]\n\n'
            f'[[experiments]]\nkey = "per-request"\nunit = "request"\nvariants = ["{tag}0", "{tag}1", "{tag}2"]\n'
        )

    path = tmp_path / "lab.toml"
    path.write_text(config("a"))
    lab = Lab.from_file(path, reload_interval=0)
    ctx = fieldlab.context.start(lab, {"user": "alice", "request": None})
    first = ctx.version
    path.write_text(config("bb"))
    assert lab.reload()
    ctx.rebind_unit("request", "4bf92f3577b34da6a3ce929d0e0e4736")  # the server span appeared after the reload
    assert ctx.version == lab.version != first
    assert {a.variant[:2] for a in ctx.assignments.values()} == {"bb"}
    assert ctx.assignments["per-request"].reason == "split"


# ----------------------------------------------------------- 4. per-id caches are bounded in bytes, not only entries
#: the documented limit (README, docs/integration.md; fieldlab._units.MAX_CACHED_ID_LENGTH)
MAX_CACHED_ID_LENGTH = 256


@pytest.mark.parametrize("make", [_wsgi_app, _asgi_app], ids=["wsgi", "asgi"])
@pytest.mark.parametrize(
    "units",
    [{"user": "header:X-User-Id"}, {"user": "header:X-User-Id", "session": "cookie:sid"}],
    ids=["one-header", "header+cookie"],
)
def test_huge_unit_ids_are_not_cached_so_memory_stays_bounded(make, units: dict):
    import gc
    import tracemalloc

    lab = _two_kind_lab()
    app, get = make(lab, units)
    salt = lab.experiments["exp-a"].salt
    cfg = app.config
    get(app, {"X-User-Id": b"warm-up", "Cookie": b"sid=s"})  # imports, plans and the first cache entries
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(150):
            uid = f"{n:06d}-" + "x" * (64 * 1024)
            got = get(app, {"X-User-Id": uid.encode(), "Cookie": b"sid=" + uid.encode()})
            if n % 50 == 0:  # long ids still work: assigned like any other id, just not remembered
                assert got["a"]["exp-a"]["bucket"] == fieldlab.bucket(salt, uid)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    keys = list(cfg.cache)
    for key in keys:
        parts = key if isinstance(key, tuple) else (key,)
        assert all(p is None or len(p) <= MAX_CACHED_ID_LENGTH for p in parts), "a huge id was cached"
    hashed = list(cfg.recorder._hasher._cache)
    assert hashed and all(len(k) <= MAX_CACHED_ID_LENGTH for k in hashed), "a huge id was cached by the unit hasher"
    # 150 ids of 64 KB are ~10 MB each time they are kept anywhere; nothing of them may stay
    assert grown < 2 * 1024 * 1024, f"the request path kept {grown / 2**20:.1f} MB after 150 requests"


# ----------------------------------------------------------- real servers: a worker survives what clients send
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "adapters"))
from serverkit import Server


def _raw_request(
    server: Server, method: str, headers: list[tuple[bytes, bytes]], body: bytes = b""
) -> tuple[int, dict]:
    """One request with header values given as the exact bytes to put on the wire."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    try:
        conn.putrequest(method, "/checkout")
        for name, value in headers:
            conn.putheader(name, value)
        if body:
            conn.putheader(b"Content-Type", b"application/json")
        conn.putheader(b"Content-Length", str(len(body)).encode())
        conn.endheaders(body or None)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@pytest.fixture(scope="module", params=["gunicorn", "uvicorn"])
def request_path_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    kind = request.param
    target = "request_path_app:app" if kind == "gunicorn" else "request_path_app:asgi_app"
    env = {"PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent / "adapters"), os.environ.get("PYTHONPATH", "")])}
    server = Server(kind, target, tmp_path_factory.mktemp(f"hardening-{kind}"), env=env).start()
    yield server
    server.stop()


def test_server_worker_survives_lone_surrogates_and_non_utf8_header_bytes(request_path_server: Server):
    server = request_path_server
    user_header = (b"X-User-Id", b"bob")
    status, first = _raw_request(server, "POST", [user_header], b'{"user": "bob"}')
    assert status == 200 and first["units"]["user"] == "bob"
    pid = first["pid"]
    attacks = [
        # a JSON body with an escaped lone surrogate: json.loads gives "\ud800" (Flask's resolver reads it)
        ([(b"X-User-Id", b"\xed\xa0\x80")], b'{"user": "\\ud800"}'),
        ([(b"X-User-Id", b"\xff\xfe")], b'{"user": "x\\udcff"}'),
        # header bytes that are not UTF-8
        ([user_header, (b"X-Account-Id", b"\xff\xfe\xfd")], b'{"user": "bob"}'),
        ([user_header, (b"X-Account-Id", b"\xfc")], b'{"user": "bob"}'),
    ]
    for headers, body in attacks:
        for _ in range(3):  # the first evaluates, the next may come from the prepared cache
            status, got = _raw_request(server, "POST", headers, body)
            assert status == 200, (headers, body, server.log_tail())
            assert got["pid"] == pid, f"the worker was replaced (crashed?):\n{server.log_tail()}"
    # the requests took the default path for the bad unit, and were counted
    status, got = _raw_request(server, "POST", [(b"X-User-Id", b"\xff\xfe")], b'{"user": "\\ud800"}')
    assert status == 200 and got["pid"] == pid
    assert got["units"]["user"] is None and got["layout"] == "classic"
    assert got["assignments"]["by-user"]["reason"] == "no_unit"
    status, got = _raw_request(server, "POST", [user_header, (b"X-Account-Id", b"\xff\xfe\xfd")], b'{"user": "bob"}')
    assert got["units"] == {"user": "bob", "account": None}
    assert got["assignments"]["by-account"]["reason"] == "no_unit"
    assert got["assignments"]["by-user"]["bucket"] == fieldlab.bucket("by-user", "bob")
    assert got["invalid_units"] >= 4


def test_server_buckets_utf8_header_ids_like_the_cli(request_path_server: Server, tmp_path: Path):
    config = tmp_path / "lab.toml"  # the server app's lab, as a file for the CLI
    config.write_text(
        '[[experiments]]\nkey = "by-user"\nvariants = ["control", "treatment"]\n\n'
        '[[experiments]]\nkey = "by-account"\nunit = "account"\nvariants = ["control", "treatment"]\n'
    )
    proc = _cli(b"assign", str(config).encode(), "--unit", "ü", "--json")
    assert proc.returncode == 0, proc.stderr
    cli = {d["experiment"]: d["bucket"] for d in map(json.loads, proc.stdout.splitlines())}
    status, got = _raw_request(
        request_path_server, "GET", [(b"X-User-Id", "ü".encode()), (b"X-Account-Id", "ü".encode())]
    )
    assert status == 200 and got["units"]["account"] == "ü"
    assert got["assignments"]["by-account"]["bucket"] == cli["by-account"] == fieldlab.bucket("by-account", "ü")
    if request_path_server.server == "uvicorn":  # there the user comes from a header too
        assert got["assignments"]["by-user"]["bucket"] == cli["by-user"]
