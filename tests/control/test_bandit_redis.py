"""Bandit weights through a real Redis state store: the controller publishes, Labs on it follow within a poll."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from redis_kit import RedisServer
from span_kit import write_spans
from test_bandit_wiring import KEY, NOW, _doc, _exp, _traffic, _wait

import fieldlab
from fieldlab import Lab
from fieldlab._assignment import SPLIT
from fieldlab.control.bandit_controller import run_bandits
from fieldlab.control.state import RedisStore

pytestmark = pytest.mark.server  # starts redis-server

POLL = 0.2


def test_the_controller_publishes_to_redis_and_every_lab_follows_within_a_poll(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    builder = Lab.from_dict(_doc(_exp(slice=50)))
    spans = write_spans(
        str(tmp_path / "spans.jsonl"),
        _traffic(builder, NOW, 2400, {"control": 0.05, "bold": 0.05, "calm": 0.30}),
    )
    doc = _doc(_exp(slice=50))
    doc["lab"] = {"state": redis_server.url, "state_poll_interval": POLL}
    labs = [Lab.from_dict(doc) for _ in range(2)]  # two processes' Labs on one store
    for lab in labs:
        lab.assign(KEY, "warm-up")
    store = RedisStore(redis_server.url)
    try:
        (started,) = run_bandits(labs[0].experiments, spans, store, now=NOW - 7200, engine="python")
        assert started.action == "started" and store.read().bandits[KEY]["version"] == 0
        (ev,) = run_bandits(labs[0].experiments, spans, store, now=NOW, engine="python")
        published = time.monotonic()
        assert ev.action == "updated" and ev.version == 1 and ev.weights_bp[2] > 9000, ev
        for lab in labs:
            _wait(lambda lab=lab: lab.bandit_views[KEY].version == 1)
        assert time.monotonic() - published < POLL + 1.0  # one poll interval, with room for a loaded machine
        raw = store.read().bandits[KEY]
        assert raw["weights_bp"] == list(ev.weights_bp) and [p["version"] for p in raw["periods"]] == [0, 1]
        units = [f"later-{i}" for i in range(4000)]
        got = [[lab.assign(KEY, u) for u in units] for lab in labs]
        assert got[0] == got[1]  # deterministic given the version
        newcomers = [a for u, a in zip(units, got[0], strict=True) if fieldlab.bucket(KEY, u) >= 5000]
        assert {a.period for a in newcomers} == {1} and all(a.reason == SPLIT for a in newcomers)
        assert Counter(a.variant for a in newcomers)["calm"] / len(newcomers) > 0.85
        # a second controller round before the interval: nothing new in the store
        seq = store.read().seq
        (waiting,) = run_bandits(labs[0].experiments, spans, store, now=NOW + 60, engine="python")
        assert waiting.action == "waiting" and store.read().seq == seq
    finally:
        store.close()
        for lab in labs:
            lab.close()
