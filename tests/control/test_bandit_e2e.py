"""A bandit end to end: gunicorn workers assign and write spans, ``fieldlab watch`` publishes, the fleet follows.

Two gunicorn workers serve ``/hero`` (experiment ``hero-banner``, sticky
``user`` units, slices of 50 %) and write their SERVER spans to OTLP JSON
files; ``bold`` converts far better. ``fieldlab watch --once`` (a real process)
records version 0, then, one interval later, measures the arms from the span
files and publishes version 1 to the JSON state file. Every worker assigns by
it within one poll interval: the users of version 0 keep their arm, new users
enter version 1's slice mostly as ``bold``, and their spans say so
(``fieldlab.bandit.hero-banner = 1``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "adapters"))
from serverkit import Server, read_spans

from fieldlab import attributes as A

pytestmark = pytest.mark.server  # gunicorn and fieldlab watch processes

APPS = Path(__file__).resolve().parent / "apps"
KEY = "hero-banner"
POLL = 0.2
SLACK = 1.0  # scheduling on two shared cores

CONFIG = f"""
[lab]
state = "state.json"
state_poll_interval = {POLL}

[[experiments]]
key = "{KEY}"
kind = "bandit"
unit = "user"
variants = [{{ name = "control" }}, {{ name = "bold" }}, {{ name = "calm" }}]
[experiments.bandit]
metric = "app.cart.added"
interval = "1s"
burn_in = 100
slice = 50
"""


def _hero(session: requests.Session, url: str, user: str) -> dict[str, Any]:
    r = session.get(f"{url}/hero", headers={"X-User-Id": user}, timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _watch(cfg: Path, spans: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "fieldlab.cli", "watch", str(cfg), str(spans), "--once", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout.strip().splitlines()[-1])["bandits"])


def test_watch_publishes_weights_and_every_worker_follows(tmp_path: Path) -> None:
    cfg = tmp_path / "lab.toml"
    cfg.write_text(CONFIG)
    spans = tmp_path / "spans"
    env = {
        "GUARD_TEST_LAB": str(cfg),
        "GUARD_TEST_SPANS": str(spans),
        "PYTHONPATH": os.pathsep.join([str(APPS), os.environ.get("PYTHONPATH", "")]),
    }
    server = Server("gunicorn", "bandit_wsgi:app", spans, env=env, workers=2)
    session = requests.Session()
    try:
        server.start()
        (started,) = _watch(cfg, spans)
        assert (started["action"], started["version"]) == ("started", 0)
        first = {f"user-{i}": _hero(session, server.url, f"user-{i}") for i in range(1000)}
        enrolled = {u: a for u, a in first.items() if a["reason"] == "split"}
        assert {a["period"] for a in enrolled.values()} == {0} and 400 < len(enrolled) < 600
        assert {a["version"] for a in first.values()} == {0}
        time.sleep(1.1)  # the interval
        (updated,) = _watch(cfg, spans)
        published = time.monotonic()
        assert updated["action"] == "updated" and updated["version"] == 1, updated
        assert updated["weights_bp"][1] > 5000 and min(updated["weights_bp"]) >= 100
        # every worker follows within a poll interval
        pids: set[int] = set()
        seen: dict[int, float] = {}
        i = 0
        while len(seen) < 2:
            assert time.monotonic() - published < 30, f"workers seen on version 1: {seen}"
            a = _hero(session, server.url, f"probe-{i}")
            i += 1
            pids.add(a["pid"])
            if a["version"] == 1:
                seen.setdefault(a["pid"], time.monotonic() - published)
        print(f"\nbandit v1 reached the workers after {sorted(round(t, 3) for t in seen.values())} s")
        assert max(seen.values()) < POLL + SLACK
        # version 0's users keep their arm; new users enter version 1's slice
        again = {u: _hero(session, server.url, u) for u in enrolled}
        assert all((again[u]["variant"], again[u]["period"]) == (a["variant"], 0) for u, a in enrolled.items())
        later = [_hero(session, server.url, f"later-{j}") for j in range(400)]
        new = [a for a in later if a["period"] == 1]
        assert len(new) > 120 and {a["period"] for a in later if a["reason"] == "split"} <= {0, 1}
        assert Counter(a["variant"] for a in new)["bold"] / len(new) > updated["weights_bp"][1] / 10_000 - 0.15
    finally:
        server.stop()
    # the spans carry the period that decided each variant
    served = [s for s in read_spans(spans) if s["kind"] in (2, "SPAN_KIND_SERVER") and "/hero" in s["name"]]
    periods = Counter(s["attrs"].get(A.bandit_attr(KEY)) for s in served if A.variant_attr(KEY) in s["attrs"])
    assert set(periods) == {0, 1}, periods
