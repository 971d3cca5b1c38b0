"""End to end through real servers on 127.0.0.1: uvicorn (Starlette, async) and gunicorn (Flask, sync).

The apps use the real adapters and OTel instrumentations and export spans to
OTLP JSON lines files, which the test reads back. The two servers stand in for
two services on one trace: given the same ``traceparent``, they decide alike.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

import fieldlab
from fieldlab import attributes as A

APPS = Path(__file__).resolve().parent / "apps"
BIN = Path(sys.executable).parent
RELOAD = 0.3
CONFIG = f"""
[lab]
reload_interval = {RELOAD}

[faults]
enabled = true
max_blast_radius = 5

[[experiments]]
key = "slow-db"
traffic = 4
[[experiments.variants]]
name = "control"
[[experiments.variants]]
name = "slow"
faults = [
  {{point = "db.query", latency_ms = 200}},
  {{point = "payments.charge", exception = "db_timeout"}},
]

[[experiments]]
key = "flaky-api"
traffic = 2
[[experiments.variants]]
name = "control"
[[experiments.variants]]
name = "down"
faults = [{{status = 503, body = "injected outage", rate = 50}}]

[[experiments]]
key = "crashy"
traffic = 2
[[experiments.variants]]
name = "control"
[[experiments.variants]]
name = "crash"
faults = [{{point = "payments.charge", kind = "exception"}}]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, kind: str, cfg: Path, spans: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.spans_dir = spans
        self.log = spans.parent / f"{kind}.log"
        env = {
            **os.environ,
            "FAULT_TEST_LAB": str(cfg),
            "FAULT_TEST_SPANS": str(spans),
            "PYTHONPATH": os.pathsep.join([str(APPS), os.environ.get("PYTHONPATH", "")]),
        }
        env.pop("FIELDLAB_FAULTS", None)
        if kind == "uvicorn":
            cmd = [
                sys.executable,
                "-m",
                "uvicorn",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--app-dir",
                str(APPS),
                "--log-level",
                "warning",
                "--no-access-log",
                "asgi_app:app",
            ]
        else:
            cmd = [
                str(BIN / "gunicorn"),
                "-w",
                "1",
                "--threads",
                "4",
                "-b",
                f"127.0.0.1:{self.port}",
                "--chdir",
                str(APPS),
                "--log-level",
                "warning",
                "wsgi_app:app",
            ]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, env=env, cwd=str(APPS), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{kind} exited:\n{self.log.read_text()}")
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{kind} did not answer:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)

    def call(self, method: str, path: str, user: str, tid: str) -> requests.Response:
        headers = {"X-User-Id": user, "traceparent": f"00-{tid}-{'1' * 16}-01"}
        return requests.request(method, self.url + path, headers=headers, timeout=10)

    def server_spans(self, tid: str, timeout: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            found = [s for s in read_spans(self.spans_dir) if s["trace_id"] == tid and s["kind"] == 2]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.1)


def _value(v: dict[str, Any]) -> Any:
    for key, cast in (("stringValue", str), ("boolValue", bool), ("intValue", int), ("doubleValue", float)):
        if key in v:
            return cast(v[key])
    return None


def _attrs(items: Any) -> dict[str, Any]:
    return {a["key"]: _value(a.get("value", {})) for a in items or ()}


def read_spans(directory: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            for rs in doc.get("resourceSpans", []):
                for ss in rs.get("scopeSpans", []):
                    for s in ss.get("spans", []):
                        out.append(
                            {
                                "trace_id": s["traceId"],
                                "kind": s.get("kind"),
                                "attrs": _attrs(s.get("attributes")),
                                "events": [(e["name"], _attrs(e.get("attributes"))) for e in s.get("events", [])],
                            }
                        )
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("fault-servers")
    cfg = root / "shop.toml"
    cfg.write_text(CONFIG)
    lab = fieldlab.Lab.from_file(cfg, reload_interval=0)

    fault_variants = {"slow-db": "slow", "flaky-api": "down", "crashy": "crash"}

    def user(key: str | None) -> str:
        """A unit in the fault variant of ``key`` only (None: in no fault variant, but in slow-db's control)."""
        for i in range(300_000):
            u = f"user-{i}"
            got = {k: lab.assign(k, u).variant for k in fault_variants}
            if key is None and got["slow-db"] != "control":
                continue
            if all((got[k] == v) == (k == key) for k, v in fault_variants.items()):
                return u
        raise AssertionError(key)

    users = {"slow": user("slow-db"), "control": user(None), "down": user("flaky-api"), "crash": user("crashy")}
    servers = {}
    try:
        servers["uvicorn"] = Server("uvicorn", cfg, root / "spans-uvicorn")
        servers["gunicorn"] = Server("gunicorn", cfg, root / "spans-gunicorn")
        yield {"cfg": cfg, "users": users, **servers}
    finally:
        for s in servers.values():
            s.stop()


def tid(n: int) -> str:
    return f"{0xFA017000 + n:032x}"


@pytest.mark.parametrize("server, path", [("uvicorn", "/db"), ("uvicorn", "/sync-db"), ("gunicorn", "/db")])
def test_latency_fault_reaches_the_fault_variant_and_its_span(setup: dict[str, Any], server: str, path: str) -> None:
    srv: Server = setup[server]
    n = {"/db": 1, "/sync-db": 2}[path] + (10 if server == "gunicorn" else 0)
    t0 = time.monotonic()
    slow = srv.call("GET", path, setup["users"]["slow"], tid(n))
    elapsed = time.monotonic() - t0
    assert slow.status_code == 200 and slow.json()["took_ms"] >= 195 and elapsed >= 0.195
    control = srv.call("GET", path, setup["users"]["control"], tid(n + 100))
    assert control.status_code == 200 and control.json()["took_ms"] < 50

    (span,) = srv.server_spans(tid(n))
    assert span["attrs"][A.FAULT_INJECTED] is True
    assert span["attrs"][A.variant_attr("slow-db")] == "slow"
    assert (
        A.FAULT_EVENT,
        {
            A.FAULT_POINT: "db.query",
            A.FAULT_KIND: "latency",
            A.FAULT_EXPERIMENT: "slow-db",
            A.FAULT_VARIANT: "slow",
            A.FAULT_DELAY_MS: 200.0,
        },
    ) in span["events"]
    (plain,) = srv.server_spans(tid(n + 100))
    assert A.FAULT_INJECTED not in plain["attrs"] and not [e for e in plain["events"] if e[0] == A.FAULT_EVENT]


@pytest.mark.parametrize("server", ["uvicorn", "gunicorn"])
def test_exceptions_reach_the_client_as_configured_and_the_server_stays_up(setup: dict[str, Any], server: str) -> None:
    srv: Server = setup[server]
    users = setup["users"]
    timeout = srv.call("POST", "/charge", users["slow"], tid(20))
    assert (timeout.status_code, timeout.text) == (504, "upstream timeout")  # TimeoutError, mapped by the app
    crash = srv.call("POST", "/charge", users["crash"], tid(21))
    assert crash.status_code == 500  # InjectedFault, unhandled by the app
    ok = srv.call("POST", "/charge", users["control"], tid(22))
    assert (ok.status_code, ok.text) == (200, "charged")
    assert requests.get(srv.url + "/health", timeout=5).status_code == 200
    (span,) = srv.server_spans(tid(20))
    events = [e for e in span["events"] if e[0] == A.FAULT_EVENT]
    assert events == [
        (
            A.FAULT_EVENT,
            {
                A.FAULT_POINT: "payments.charge",
                A.FAULT_KIND: "exception",
                A.FAULT_EXPERIMENT: "slow-db",
                A.FAULT_VARIANT: "slow",
                A.FAULT_EXCEPTION: "db_timeout",
            },
        )
    ]


def test_aborts_follow_the_trace_id_identically_in_both_services(setup: dict[str, Any]) -> None:
    down = setup["users"]["down"]
    ids = [tid(1000 + i) for i in range(24)]
    expected = [fieldlab.bucket("flaky-api:down:fault", t) < 5000 for t in ids]
    assert 0 < sum(expected) < len(ids)
    for name in ("uvicorn", "gunicorn"):
        srv: Server = setup[name]
        got = []
        for t in ids:
            r = srv.call("GET", "/db", down, t)
            assert (r.status_code, r.text) in ((200, r.text), (503, "injected outage"))
            got.append(r.status_code == 503)
        assert got == expected, f"{name} decided differently from the trace-id rule"
    first = ids[expected.index(True)]
    for name in ("uvicorn", "gunicorn"):
        (span,) = setup[name].server_spans(first)
        assert span["attrs"][A.FAULT_INJECTED] is True
        assert (
            A.FAULT_EVENT,
            {
                A.FAULT_POINT: "http",
                A.FAULT_KIND: "abort",
                A.FAULT_EXPERIMENT: "flaky-api",
                A.FAULT_VARIANT: "down",
                A.FAULT_STATUS: 503,
            },
        ) in span["events"]


def test_kill_switch_stops_faults_in_running_servers(setup: dict[str, Any]) -> None:
    cfg, slow = setup["cfg"], setup["users"]["slow"]

    def took(name: str, n: int) -> float:
        return float(setup[name].call("GET", "/db", slow, tid(n)).json()["took_ms"])

    assert took("uvicorn", 2000) >= 195 and took("gunicorn", 2001) >= 195
    cli = [sys.executable, "-m", "fieldlab.cli"]
    out = subprocess.run(
        [*cli, "kill", "slow-db", "--config", str(cfg), "--reason", "test"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    try:
        time.sleep(RELOAD + 0.2)
        assert took("uvicorn", 2002) < 50 and took("gunicorn", 2003) < 50
        (span,) = setup["uvicorn"].server_spans(tid(2002))
        assert A.FAULT_INJECTED not in span["attrs"]
    finally:
        subprocess.run([*cli, "unkill", "slow-db", "--config", str(cfg)], capture_output=True, timeout=30)
    time.sleep(RELOAD + 0.2)
    assert took("uvicorn", 2004) >= 195
