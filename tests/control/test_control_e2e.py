"""Issue 12 end to end: a fleet of real servers, a controller process and a real Redis.

An app under gunicorn (two workers) and under uvicorn writes its spans to OTLP
JSON files; ``fieldlab watch CONFIG SPANS --interval 1`` reads them and writes
its decisions to Redis, which every worker follows. Under load:

* ``checkout/bad`` fails 10 % of its requests against a 99.5 % SLO: it is
  paused, and every worker serves its units control (reason ``guardrail``,
  recorded on the span) within one poll interval of the decision;
* ``checkout/aa`` (identical to control) is not paused;
* on ``/search`` control and ``v2`` fail alike: nothing is paused and the
  controller reports the environment (and halts faults);
* Redis killed: the last state holds, and the request path's p99 (measured
  in-process on a Lab following the same Redis) grows by less than 1 ms;
  Redis back: the workers read it again, and a ``fieldlab resume`` reaches
  every worker within one poll interval.

The measured times are printed (``pytest -s``) and quoted in docs/guardrails.md.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from redis_kit import NO_REDIS, REDIS_BIN, RedisServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "adapters"))
from serverkit import Server, read_spans

import fieldlab
from fieldlab import attributes as A
from fieldlab.control.state import RedisStore

APPS = Path(__file__).resolve().parent / "apps"
POLL = 1.0  # the default state_poll_interval
#: Scheduling slack on two shared cores: a poller thread waits for the GIL of a busy worker. 0.5 s failed once
#: in a run of the whole control suite on a loaded machine; the measured times are printed and go to the docs.
SLACK = 1.0

CONFIG = """
[lab]
state = "{url}"

[guardrails]
service_slo = 99.5
budget_period = "1h"
experiment_share = 100
windows = [{{ long = "30s", short = "5s", burn_rate = 10 }}]
min_units = 40

[[experiments]]
key = "checkout"
variants = [{{ name = "control" }}, {{ name = "bad" }}, {{ name = "aa" }}]
[experiments.guardrails]
error_slo = 99.5

[[experiments]]
key = "search"
unit = "session"
variants = [{{ name = "control" }}, {{ name = "v2" }}]
"""

pytestmark = pytest.mark.skipif(REDIS_BIN is None, reason=NO_REDIS)


class Load:
    """Threads sending /checkout (X-User-Id) and /search (X-Session-Id) to every server, answers kept."""

    def __init__(self, urls: list[str], threads: int = 4) -> None:
        self.urls = urls
        self.stop = threading.Event()
        self.answers: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, seed: int) -> None:
        rnd = random.Random(seed)
        users: list[str] = []
        with requests.Session() as s:
            n = 0
            while not self.stop.is_set():
                n += 1
                if not users or rnd.random() < 0.4:
                    users.append(f"u{seed}-{len(users)}")
                unit = rnd.choice(users)
                search = n % 3 == 0
                url = self.urls[n % len(self.urls)] + ("/search" if search else "/checkout")
                headers = {"X-Session-Id" if search else "X-User-Id": unit}
                try:
                    r = s.get(url, headers=headers, timeout=10)
                    body = r.json()
                except (requests.RequestException, ValueError):
                    continue
                body.update(status=r.status_code, path="search" if search else "checkout", server=url, done=time.time())
                with self.lock:
                    self.answers.append(body)

    def start(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)

    def since(self, t: float) -> list[dict[str, Any]]:
        with self.lock:
            return [a for a in self.answers if a["t"] >= t]


def _epoch(iso: str) -> float:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _wait(cond: Any, timeout: float, what: str, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def _p99(samples: list[float]) -> float:
    return sorted(samples)[int(0.99 * len(samples))]


def _hot_path_p99(lab: fieldlab.Lab, n: int = 20000) -> float:
    """p99 seconds of one request's evaluation (assign_all of a user), timed in this process."""
    units = [{"user": f"m-{i}", "session": f"s-{i}"} for i in range(500)]
    out = []
    clock = time.perf_counter
    for i in range(n):
        u = units[i % 500]
        t0 = clock()
        lab.assign_all(u)
        out.append(clock() - t0)
    return _p99(out)


def test_a_burning_variant_is_paused_across_the_fleet_and_redis_loss_keeps_the_last_state(tmp_path: Path) -> None:
    redis = RedisServer(str(tmp_path), persist=True)
    redis.start()
    cfg = tmp_path / "lab.toml"
    cfg.write_text(CONFIG.format(url=redis.url))
    spans = tmp_path / "spans"
    env = {
        "GUARD_TEST_LAB": str(cfg),
        "GUARD_TEST_SPANS": str(spans),
        "PYTHONPATH": os.pathsep.join([str(APPS), os.environ.get("PYTHONPATH", "")]),
    }
    servers = [
        Server("gunicorn", "guard_wsgi:app", spans, env=env, workers=2),
        Server("uvicorn", "guard_asgi:app", spans, env=env),
    ]
    controller: subprocess.Popen[bytes] | None = None
    load: Load | None = None
    store = RedisStore(redis.url)
    try:
        for s in servers:
            s.start()
        load = Load([s.url for s in servers]).start()
        _wait(lambda: any(a["variant"] == "bad" and a["status"] == 500 for a in load.since(0)), 30, "a bad request")
        with open(tmp_path / "watch.jsonl", "wb") as out, open(tmp_path / "watch.err", "wb") as err:
            controller = subprocess.Popen(
                [sys.executable, "-m", "fieldlab.cli", "watch", str(cfg), str(spans), "--interval", "1", "--json"],
                stdout=out,
                stderr=err,
            )

        # 1. the controller pauses checkout/bad; every worker follows within one poll interval
        state = _wait(
            lambda: (lambda st: st if st.is_paused("checkout", "bad") else None)(store.read()),
            90,
            "the controller to pause checkout/bad",
            step=0.02,
        )
        pause = next(d for d in state.history if d.action == "pause" and d.variant == "bad")
        assert pause.cause == "guardrail" and pause.by.startswith("fieldlab-controller@")
        paused_at = _epoch(pause.at)
        first_bad = min(a["t"] for a in load.since(0) if a["variant"] == "bad" and a["status"] == 500)
        pids = {a["pid"] for a in load.since(0)}
        assert len(pids) == 3, f"expected 2 gunicorn workers and 1 uvicorn process, saw {pids}"
        _wait(
            lambda: {a["pid"] for a in load.since(paused_at + POLL + SLACK) if a["path"] == "checkout"} == pids,
            30,
            "every process to answer after the pause",
        )
        after = load.since(paused_at)
        switched = {}
        for pid in pids:
            seen = [a for a in after if a["pid"] == pid and "checkout/bad" in a["pauses"]]
            assert seen, f"process {pid} never learned of the pause"
            switched[pid] = min(a["read_at"] for a in seen) - paused_at
        worst = max(switched.values())
        print(
            f"\nfirst bad request -> pause: {paused_at - first_bad:.2f} s; pause -> last worker's switch: "
            f"{worst:.3f} s (per process: {', '.join(f'{v:.3f}' for v in switched.values())})"
        )
        assert worst <= POLL + SLACK, f"a worker took {worst:.2f} s to follow the pause"
        late = [
            a for a in after if a["path"] == "checkout" and a["variant"] == "bad" and a["t"] > paused_at + POLL + SLACK
        ]
        assert late == [], f"{len(late)} requests still served the paused variant: {late[:3]}"
        guarded = [a for a in after if a["reason"] == "guardrail"]
        assert guarded and all(a["variant"] == "control" and a["paused"] == "bad" for a in guarded)
        assert not state.is_paused("checkout", "aa") and not state.paused.get("search")

        # the spans say so too: control, with the paused variant beside it
        attrs = [s["attrs"] for s in read_spans(spans) if s["kind"] == 2]
        marked = [a for a in attrs if a.get(A.guardrail_attr("checkout")) == "bad"]
        assert marked and all(a[A.variant_attr("checkout")] == "control" for a in marked)

        # the environment: control and v2 of search fail alike; nothing paused, faults halted for it
        def environment() -> Any:
            st = store.read()
            rep = {ev["experiment"]: ev for ev in st.report.get("experiments", [])}
            return st if rep.get("search", {}).get("environment") else None

        st = _wait(environment, 30, "the controller to report the environment on search")
        assert st.all is not None and st.all.cause == "environment"
        assert not st.paused.get("search") and not st.is_paused("checkout", "aa")
        status = subprocess.run(
            [sys.executable, "-m", "fieldlab.cli", "status", str(cfg), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stderr
        rows = {(r["experiment"], r["variant"]): r for r in json.loads(status.stdout)["variants"]}
        assert rows[("checkout", "bad")]["state"] == "paused"
        assert rows[("checkout", "aa")]["state"] == "running" and rows[("search", "v2")]["state"] == "running"
        assert rows[("search", "v2")]["outcome"] == "environment"

        # the controller stops cleanly on SIGTERM
        controller.send_signal(signal.SIGTERM)
        assert controller.wait(30) == 0
        rounds = [json.loads(line) for line in (tmp_path / "watch.jsonl").read_text().splitlines() if line.strip()]
        assert rounds and any(d["action"] == "pause" and d["variant"] == "bad" for r in rounds for d in r["decisions"])

        # 2. Redis killed: the last state holds everywhere; the request path does not wait for it
        local = fieldlab.Lab.from_file(cfg)
        local.assign_all({"user": "warm-up"})
        _wait(lambda: local.paused_variants.get("checkout") == frozenset({"bad"}), 5, "the local Lab to follow")
        up = _hot_path_p99(local)
        redis.stop()
        killed_at = time.time()
        down = _hot_path_p99(local)
        _wait(lambda: local.state_snapshot.status == "stale", 5, "the local poller to notice the loss")
        down = max(down, _hot_path_p99(local))
        print(
            f"request path p99 with Redis up {up * 1e6:.1f} us, killed {down * 1e6:.1f} us "
            f"(added {(down - up) * 1e6:+.1f} us)"
        )
        assert down - up < 1e-3
        assert local.paused_variants.get("checkout") == frozenset({"bad"})
        time.sleep(POLL + SLACK + 0.5)
        stale = load.since(killed_at + POLL + SLACK)
        assert stale and all(a["store"] == "stale" for a in stale)
        assert all(a["variant"] != "bad" for a in stale if a["path"] == "checkout")
        assert {a["pid"] for a in stale} == pids

        # 3. Redis back (its append-only file kept the state): polling resumes, a resume reaches every worker
        redis.start()
        back_at = time.time()
        _wait(
            lambda: (lambda xs: xs and {a["pid"] for a in xs} == pids and all(a["store"] == "ok" for a in xs))(
                load.since(back_at + POLL + SLACK)
            ),
            30,
            "every process to read Redis again",
        )
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "fieldlab.cli",
                "resume",
                str(cfg),
                "checkout",
                "--variant",
                "bad",
                "--reason",
                "test",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0 and "resumed checkout/bad" in done.stdout, done.stderr
        resumed_at = _epoch(next(d for d in store.read().history if d.action == "resume").at)
        _wait(
            lambda: {a["pid"] for a in load.since(resumed_at + POLL + SLACK) if a["variant"] == "bad"} == pids,
            30,
            "every process to serve checkout/bad again",
        )
        still = [a for a in load.since(resumed_at + POLL + SLACK) if a["reason"] == "guardrail"]
        assert still == [], f"{len(still)} requests got control after the resume had reached every process"
    finally:
        if load is not None:
            load.finish()
        if controller is not None and controller.poll() is None:
            controller.kill()
            controller.wait(10)
        for s in servers:
            s.stop()
        store.close()
        redis.stop()
