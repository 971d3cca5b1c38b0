"""``kind = "bandit"`` wired end to end: config, the state store, every process's assignment, the span, the controller.

The pure parts (Thompson weights, enrolment slices, per-period analysis) are tested in ``test_bandit.py``;
here they run through the real Lab, the real request path (Flask + the OpenTelemetry SDK), real span files
read by the analysis's reader, and a real JSON-file state store. Redis: ``test_bandit_redis.py``.
"""

from __future__ import annotations

import copy
import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from span_kit import Request, write_spans

import fieldlab
from fieldlab import Lab
from fieldlab import attributes as A
from fieldlab._assignment import GUARDRAIL, SPLIT, TRAFFIC
from fieldlab.cli import main
from fieldlab.control.bandit import BanditWeights, EnrolmentSchedule, Period
from fieldlab.control.bandit_config import initial_entry, next_entry, view_of
from fieldlab.control.bandit_controller import run_bandits, seed_of
from fieldlab.control.state import Decision, JsonFileStore, LabState
from fieldlab.errors import ConfigError

KEY = "hero-banner"
ARMS = ["control", "bold", "calm"]
METRIC = "app.cart.added"
FAST = 0.05  # state_poll_interval of the tests that follow a store


def _exp(unit: str = "user", traffic: float = 100, **bandit: Any) -> dict[str, Any]:
    return {
        "key": KEY,
        "kind": "bandit",
        "unit": unit,
        "traffic": traffic,
        "variants": [{"name": n} for n in ARMS],
        "bandit": {"metric": METRIC, "interval": "1h", **bandit},
    }


def _doc(exp: dict[str, Any] | None = None, state: Path | str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"experiments": [exp or _exp()]}
    if state is not None:
        doc["lab"] = {"state": str(state), "state_poll_interval": FAST}
    return doc


def _wait(cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def _publish(store: Any, entry: dict[str, Any]) -> None:
    """Write one bandit entry, as the controller does (one atomic update, the sequence bumped)."""
    import dataclasses

    store.update(lambda cur: dataclasses.replace(cur, seq=cur.seq + 1, bandits={**cur.bandits, KEY: entry}))


def _versions(lab: Lab, weights: list[tuple[int, ...]], t0: float = 1.8e9) -> list[dict[str, Any]]:
    """Entries of versions 0..len(weights) of the lab's bandit, each opening the next slice (sticky units)."""
    exp = lab.experiments[KEY]
    entries = [initial_entry(exp, t0)]
    for i, w in enumerate(weights, start=1):
        nxt = next_entry(exp, entries[-1], BanditWeights(i, w, f"test v{i}"), t0 + 3600 * i)
        assert nxt is not None
        entries.append(nxt)
    return entries


# ----------------------------------------------------------------------------- config


def _with(change: Any, exp: dict[str, Any] | None = None) -> dict[str, Any]:
    e = copy.deepcopy(exp or _exp())
    change(e)
    return {"experiments": [e]}


BAD_CONFIGS = [
    ("unknown key", lambda e: e["bandit"].update(metrc="x"), "experiments[0].bandit.metrc", "metric"),
    ("table without kind", lambda e: e.pop("kind"), "experiments[0].kind", 'kind = "bandit"'),
    ("kind without table", lambda e: e.pop("bandit"), "experiments[0].bandit", "metric"),
    ("unknown kind", lambda e: e.update(kind="thompson"), "experiments[0].kind", '"bandit"'),
    ("floor below 1", lambda e: e["bandit"].update(floor=0.5), "experiments[0].bandit.floor", "at least 1"),
    ("floor too big", lambda e: e["bandit"].update(floor=40), "experiments[0].bandit.floor", "33.33"),
    ("burn_in 0", lambda e: e["bandit"].update(burn_in=0), "experiments[0].bandit.burn_in", "units"),
    ("burn_in 99", lambda e: e["bandit"].update(burn_in=99), "experiments[0].bandit.burn_in", "at least 100"),
    ("burn_in text", lambda e: e["bandit"].update(burn_in="100"), "experiments[0].bandit.burn_in", "units"),
    ("slice 0", lambda e: e["bandit"].update(slice=0), "experiments[0].bandit.slice", "e.g. 10"),
    ("slice 150", lambda e: e["bandit"].update(slice=150), "experiments[0].bandit.slice", "e.g. 10"),
    ("metric kind", lambda e: e["bandit"].update(metric_kind="ratio"), "experiments[0].bandit.metric_kind", "latency"),
    (
        "error with an attribute",
        lambda e: e["bandit"].update(metric_kind="error"),
        "experiments[0].bandit.metric",
        'metric = "error"',
    ),
    ("missing metric", lambda e: e["bandit"].pop("metric"), "experiments[0].bandit.metric", "span attribute"),
    ("bad interval", lambda e: e["bandit"].update(interval="soon"), "experiments[0].bandit.interval", '"5m"'),
    ("zero interval", lambda e: e["bandit"].update(interval="0s"), "experiments[0].bandit.interval", "positive"),
    ("one arm", lambda e: e.update(variants=[{"name": "control"}]), "experiments[0].variants", "alternative"),
    (
        "an arm below the floor",
        lambda e: e.update(variants=[{"name": "control", "weight": 1}, {"name": "bold", "weight": 200}]),
        "experiments[0].variants[0].weight",
        "floor",
    ),
    (
        "faults",
        lambda e: e.update(faults={"bold": [{"point": "db.query", "latency_ms": 5}]}),
        "experiments[0].faults",
        "[[canaries]]",
    ),
    (
        "higher latency",
        lambda e: e.update(bandit={"metric": "latency", "direction": "higher"}),
        "experiments[0].bandit.direction",
        "lower is better",
    ),
    (
        "value on numeric",
        lambda e: e["bandit"].update(metric_kind="numeric", value="1"),
        "experiments[0].bandit.value",
        "drop",
    ),
    ("table not a table", lambda e: e.update(bandit="thompson"), "experiments[0].bandit", "metric"),
]


@pytest.mark.parametrize(("change", "path", "fix"), [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_a_bad_bandit_config_names_the_field_and_the_fix(change: Any, path: str, fix: str) -> None:
    with pytest.raises(ConfigError) as info:
        Lab.from_dict(_with(change))
    assert info.value.path == path, str(info.value)
    assert fix in info.value.fix, str(info.value)


def test_slice_on_units_that_are_not_sticky_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        Lab.from_dict({"experiments": [_exp("request", slice=10)]})
    assert info.value.path == "experiments[0].bandit.slice"
    assert "request and session" in info.value.fix


def test_a_bandit_table_from_a_toml_file_with_defaults(tmp_path: Path) -> None:
    cfg = tmp_path / "lab.toml"
    cfg.write_text(
        '[[experiments]]\nkey = "hero-banner"\nkind = "bandit"\nunit = "user"\n'
        'variants = [{ name = "control" }, { name = "bold" }]\n'
        '[experiments.bandit]\nmetric = "latency"\n'
    )
    exp = Lab.from_file(cfg, reload_interval=0).experiments[KEY]
    b = exp.bandit
    assert (exp.kind, b.metric, b.metric_kind, b.higher_is_better) == ("bandit", "latency", "latency", False)
    assert (b.interval, b.floor, b.burn_in, b.slice) == (3600.0, 1.0, 100, 10.0)
    assert exp.to_dict()["kind"] == "bandit" and exp.to_dict()["bandit"]["interval"] == "1h"
    assert Lab.from_dict({"experiments": [{"key": "plain", "variants": ["a", "b"]}]}).experiments["plain"].kind == "ab"


def test_a_bandit_may_live_in_a_layer() -> None:
    exp = _exp()
    exp.update(layer="hero", layer_range=[0, 50])
    lab = Lab.from_dict({"layers": [{"key": "hero"}], "experiments": [exp]})
    got = Counter(lab.assign(KEY, f"u{i}").reason for i in range(4000))
    assert set(got) == {"layer", SPLIT, TRAFFIC} and 0.4 < got["layer"] / 4000 < 0.6


def test_a_bad_reload_keeps_the_last_good_bandit(tmp_path: Path) -> None:
    cfg = tmp_path / "lab.json"
    cfg.write_text(json.dumps(_doc()))
    lab = Lab.from_file(cfg, reload_interval=0)
    cfg.write_text(json.dumps(_with(lambda e: e["bandit"].update(floor=0))))
    assert lab.reload() is False
    assert "bandit.floor" in (lab.config_error or "")
    assert lab.experiments[KEY].bandit.floor == 1.0


# ----------------------------------------------------------------------------- the state document


def test_the_state_document_round_trips_bandits_and_omits_them_when_empty(tmp_path: Path) -> None:
    lab = Lab.from_dict(_doc())
    entries = _versions(lab, [(2000, 7000, 1000)])
    store = JsonFileStore(str(tmp_path / "state.json"))
    assert "bandits" not in store.update(lambda cur: cur).to_json()
    _publish(store, entries[1])
    raw = json.loads((tmp_path / "state.json").read_text())
    assert raw["bandits"][KEY]["version"] == 1
    assert raw["bandits"][KEY]["periods"] == [
        {"version": 0, "at": entries[0]["at"], "weights_bp": [3334, 3333, 3333], "lo": 0, "hi": 1000},
        {"version": 1, "at": entries[1]["at"], "weights_bp": [2000, 7000, 1000], "lo": 1000, "hi": 2000},
    ]
    assert store.read().bandits[KEY] == entries[1]
    with pytest.raises(ValueError, match="bandits"):
        LabState.from_json({"version": 2, "bandits": {KEY: 3}})


# ----------------------------------------------------------------------------- assignment


def test_version_0_is_the_configs_split_over_the_first_slice() -> None:
    lab = Lab.from_dict(_doc())
    view = lab.bandit_views[KEY]
    assert (view.version, view.weights_bp, view.source, view.enrolled) == (0, (3334, 3333, 3333), "config", 1000)
    for i in range(3000):
        a = lab.assign(KEY, f"u{i}")
        b = fieldlab.bucket(KEY, f"u{i}")
        if b < 1000:
            assert (a.reason, a.period, a.variant) == (SPLIT, 0, ARMS[Period(0, 0, 1000, (3334, 3333, 3333)).arm_of(b)])
        else:
            assert (a.reason, a.variant, a.period) == (TRAFFIC, None, None)


def test_assignment_is_deterministic_given_the_published_version(tmp_path: Path) -> None:
    """Two processes (two Labs) following one store agree with each other and with the contract's bucket."""
    store = JsonFileStore(str(tmp_path / "state.json"))
    lab1 = Lab.from_dict(_doc(state=tmp_path / "state.json"))
    entries = _versions(lab1, [(2000, 7000, 1000), (500, 9000, 500)])
    _publish(store, entries[2])
    lab2 = Lab.from_dict(_doc(state=tmp_path / "state.json"))
    for lab in (lab1, lab2):
        lab.assign(KEY, "warm-up")  # the poller starts at the first evaluation
        _wait(lambda lab=lab: lab.bandit_views[KEY].version == 2)
    schedule = EnrolmentSchedule(
        10_000, tuple(Period(p["version"], p["lo"], p["hi"], tuple(p["weights_bp"])) for p in entries[2]["periods"])
    )
    seen = Counter()
    for i in range(6000):
        unit = f"user-{i}"
        a1, a2 = lab1.assign(KEY, unit), lab2.assign(KEY, unit)
        assert a1 == a2
        got = schedule.assign(fieldlab.bucket(KEY, unit))
        if got is None:
            assert a1.reason == TRAFFIC
        else:
            arm, k = got
            assert (a1.variant, a1.period) == (ARMS[arm], schedule.periods[k].version)
            seen[a1.period] += 1
    assert set(seen) == {0, 1, 2}
    lab1.close()
    lab2.close()


def test_user_units_keep_their_variant_when_new_versions_are_published(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    store = JsonFileStore(str(state))
    lab = Lab.from_dict(_doc(state=state))
    entries = _versions(lab, [(100, 9800, 100), (9800, 100, 100)])  # two very different versions
    units = [f"u{i}" for i in range(8000)]
    before = {u: lab.assign(KEY, u) for u in units}
    enrolled0 = {u for u, a in before.items() if a.reason == SPLIT}
    assert 600 < len(enrolled0) < 1000  # the first slice: 10 %
    _publish(store, entries[1])
    _wait(lambda: lab.bandit_views[KEY].version == 1)
    mid = {u: lab.assign(KEY, u) for u in units}
    _publish(store, entries[2])
    _wait(lambda: lab.bandit_views[KEY].version == 2)
    after = {u: lab.assign(KEY, u) for u in units}
    for u in enrolled0:  # enrolled in period 0: the same arm and period under v1 and v2
        assert (mid[u].variant, mid[u].period) == (after[u].variant, after[u].period) == (before[u].variant, 0)
    enrolled1 = {u for u, a in mid.items() if a.reason == SPLIT} - enrolled0
    assert enrolled1 and all(mid[u].period == 1 for u in enrolled1)
    assert all((after[u].variant, after[u].period) == (mid[u].variant, 1) for u in enrolled1)
    assert Counter(mid[u].variant for u in enrolled1)["bold"] / len(enrolled1) > 0.95  # period 1's weights
    enrolled2 = {u for u, a in after.items() if a.reason == SPLIT} - enrolled0 - enrolled1
    assert enrolled2 and Counter(after[u].variant for u in enrolled2)["control"] / len(enrolled2) > 0.95
    assert 0.25 < (len(enrolled0) + len(enrolled1) + len(enrolled2)) / len(units) < 0.35  # three slices of 10 %
    lab.close()


def test_request_units_follow_the_weights_in_force(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    store = JsonFileStore(str(state))
    lab = Lab.from_dict(_doc(_exp("request", traffic=80), state=state))
    exp = lab.experiments[KEY]
    entry = next_entry(exp, initial_entry(exp, 1.8e9), BanditWeights(1, (1000, 8000, 1000)), 1.8e9 + 3600)
    assert entry is not None and "lo" not in entry["periods"][1]
    rnd = random.Random(7)
    ids = [f"{rnd.getrandbits(128):032x}" for _ in range(20_000)]
    v0 = Counter(lab.assign(KEY, t).variant for t in ids)
    _publish(store, entry)
    _wait(lambda: lab.bandit_views[KEY].version == 1)
    got = [lab.assign(KEY, t) for t in ids]
    shares = Counter(a.variant for a in got)
    assert abs(v0[None] / len(ids) - 0.2) < 0.02 and abs(shares[None] / len(ids) - 0.2) < 0.02  # traffic 80 %
    for name, share in zip(ARMS, (0.1, 0.8, 0.1), strict=True):
        assert abs(shares[name] / len(ids) - 0.8 * share) < 0.015, shares
        assert abs(v0[name] / len(ids) - 0.8 / 3) < 0.015, v0
    assert {a.period for a in got if a.reason == SPLIT} == {1}
    lab.close()


def test_a_guardrail_pause_still_applies_to_a_bandit_arm(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    store = JsonFileStore(str(state))
    lab = Lab.from_dict(_doc(state=state))
    _publish(store, _versions(lab, [(2000, 7000, 1000)])[1])
    store.record([Decision("pause", KEY, "bold", "guardrail", "burning", "tester")])
    lab.assign(KEY, "warm-up")
    _wait(lambda: lab.bandit_views[KEY].version == 1 and lab.paused_variants.get(KEY))
    drew_bold = [a for a in (lab.assign(KEY, f"u{i}") for i in range(5000)) if a.reason == GUARDRAIL]
    assert drew_bold and all((a.variant, a.paused) == ("control", "bold") for a in drew_bold)
    assert {a.period for a in drew_bold} == {0, 1}
    all_ = lab.assign_all({"user": "u1"})
    assert all_[KEY] == lab.assign(KEY, "u1")
    lab.close()


def test_a_stored_entry_with_other_arms_is_not_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state.json"
    store = JsonFileStore(str(state))
    lab = Lab.from_dict(_doc(state=state))
    good = _versions(lab, [(2000, 7000, 1000)])[1]
    _publish(store, good)
    lab.assign(KEY, "warm-up")
    _wait(lambda: lab.bandit_views[KEY].version == 1)
    _publish(store, {**good, "arms": ["control", "bold", "other"], "version": 2})
    _wait(lambda: lab.state_snapshot.state.bandits[KEY]["version"] == 2)
    assert lab.bandit_views[KEY].version == 1  # the last good version stays in force
    assert "not usable" in caplog.text
    lab.close()


def test_no_store_means_version_0_and_labs_without_bandits_have_no_views() -> None:
    lab = Lab.from_dict(_doc())
    assert lab.bandit_views[KEY].version == 0
    plain = Lab.from_dict({"experiments": [{"key": "plain", "variants": ["a", "b"]}]})
    assert dict(plain.bandit_views) == {}
    assert plain.assign("plain", "u1").period is None


# ----------------------------------------------------------------------------- the span


def _flask_app(lab: Lab) -> tuple[Any, Any]:
    import flask
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from fieldlab.adapters.flask import FieldLab

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = flask.Flask(f"bandit-{id(lab)}")

    @app.get("/")
    def home() -> Any:
        return {"variant": fieldlab.variant(KEY)}

    FlaskInstrumentor().instrument_app(app, tracer_provider=provider)
    FieldLab(app, lab=lab, units={"user": "header:X-User-Id"})
    return app.test_client(), exporter


def test_the_server_span_carries_the_period_that_decided_the_variant(tmp_path: Path) -> None:
    """Through the real request path: a unit outside version 0's slice enters with version 1, the prepared
    evaluation of its id made before v1 is not reused, and fieldlab.bandit.<key> names the period."""
    from opentelemetry.trace import SpanKind

    state = tmp_path / "state.json"
    store = JsonFileStore(str(state))
    lab = Lab.from_dict(_doc(state=state))
    client, exporter = _flask_app(lab)
    early = next(f"u{i}" for i in range(10_000) if fieldlab.bucket(KEY, f"u{i}") < 1000)
    late = next(f"u{i}" for i in range(10_000) if 1000 <= fieldlab.bucket(KEY, f"u{i}") < 2000)
    for user in (early, late):
        client.get("/", headers={"X-User-Id": user})
    _publish(store, _versions(lab, [(2000, 7000, 1000)])[1])
    _wait(lambda: lab.bandit_views[KEY].version == 1)
    bodies = [client.get("/", headers={"X-User-Id": user}).json for user in (early, late)]
    spans = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert len(spans) == 4
    attrs = [dict(s.attributes) for s in spans]
    key = A.bandit_attr(KEY)
    assert attrs[0][key] == 0 and attrs[0][A.variant_attr(KEY)] == lab.assign(KEY, early).variant
    assert key not in attrs[1] and A.variant_attr(KEY) not in attrs[1]  # not enrolled under version 0
    assert attrs[2][key] == 0 and attrs[2][A.variant_attr(KEY)] == attrs[0][A.variant_attr(KEY)]
    assert attrs[3][key] == 1 and attrs[3][A.variant_attr(KEY)] == lab.assign(KEY, late).variant
    assert bodies == [{"variant": lab.assign(KEY, u).variant} for u in (early, late)]
    assert isinstance(attrs[3][key], int)
    lab.close()


# ----------------------------------------------------------------------------- the controller


def _traffic(lab: Lab, now: float, users: int, rates: dict[str, float], seed: int = 3) -> list[Request]:
    """Each enrolled user makes 1-3 requests in the hour before ``now``; converts with its arm's rate."""
    rnd = random.Random(seed)
    out = []
    for i in range(users):
        uid = f"user-{i}"
        a = lab.assign(KEY, uid)
        if a.variant is None:
            continue
        converts = rnd.random() < rates[a.variant]
        k = rnd.randint(1, 3)
        for j in range(k):
            attrs: dict[str, Any] = {
                A.variant_attr(KEY): a.variant,
                A.bandit_attr(KEY): a.period,
                A.unit_attr("user"): uid,
                A.HTTP_STATUS_CODE: 200,
            }
            if converts and j == k - 1:
                attrs[METRIC] = True
            out.append(Request(int((now - rnd.uniform(60, 3600)) * 1e9), rnd.uniform(5, 30), False, attrs))
    return out


NOW = 1_900_000_000.0


def _controller_setup(tmp_path: Path, users: int, rates: dict[str, float], **bandit: Any) -> tuple[Lab, Any, str]:
    state = tmp_path / "state.json"
    lab = Lab.from_dict(_doc(_exp(slice=bandit.pop("slice", 50), **bandit)))
    spans = write_spans(str(tmp_path / "spans.jsonl"), _traffic(lab, NOW, users, rates))
    return lab, JsonFileStore(str(state)), spans


def test_the_controller_records_version_0_then_publishes_thompson_weights(tmp_path: Path) -> None:
    lab, store, spans = _controller_setup(tmp_path, 2400, {"control": 0.05, "bold": 0.30, "calm": 0.05})
    first = run_bandits(lab.experiments, spans, store, now=NOW - 7200, engine="python")
    assert [(e.action, e.version) for e in first] == [("started", 0)]
    assert store.read().bandits[KEY]["periods"] == [
        {"version": 0, "at": store.read().bandits[KEY]["at"], "weights_bp": [3334, 3333, 3333], "lo": 0, "hi": 5000}
    ]
    waiting = run_bandits(lab.experiments, spans, store, now=NOW - 7200 + 60, engine="python")
    assert waiting[0].action == "waiting" and store.read().bandits[KEY]["version"] == 0
    (ev,) = run_bandits(lab.experiments, spans, store, now=NOW, engine="python")
    assert ev.action == "updated" and ev.version == 1, ev
    entry = store.read().bandits[KEY]
    assert entry["version"] == 1 and entry["weights_bp"] == list(ev.weights_bp) and sum(ev.weights_bp) == 10_000
    assert ev.weights_bp[1] > 9000 and min(ev.weights_bp) >= 100  # the winner takes most; the floor holds
    assert entry["periods"][1]["lo"] == 5000 and entry["periods"][1]["hi"] == 10_000
    assert entry["p_best"][1] > 0.95 and all(u >= 100 for u in ev.units)
    assert ev.line().startswith(f"{KEY}: weights v1 control ") and "P(best) bold" in ev.line()
    # deterministic: the same counts and seed give the same weights (a replay)
    store2 = JsonFileStore(str(tmp_path / "replay.json"))
    run_bandits(lab.experiments, spans, store2, now=NOW - 7200, engine="python")
    assert run_bandits(lab.experiments, spans, store2, now=NOW, engine="python")[0].weights_bp == ev.weights_bp
    assert seed_of(KEY, 1) == fieldlab.hash32(f"{KEY}:1")
    # the slices are all open (50 % + 50 %): new weights would reach no new user
    (frozen,) = run_bandits(lab.experiments, spans, store, now=NOW + 3601, engine="python")
    assert frozen.action == "frozen" and store.read().bandits[KEY]["version"] == 1


def test_the_controller_waits_for_the_burn_in(tmp_path: Path) -> None:
    lab, store, spans = _controller_setup(tmp_path, 400, {"control": 0.1, "bold": 0.5, "calm": 0.1})
    run_bandits(lab.experiments, spans, store, now=NOW - 7200, engine="python")
    (ev,) = run_bandits(lab.experiments, spans, store, now=NOW, engine="python")
    assert ev.action == "burn_in" and ev.version == 0 and max(ev.units) < 100, ev
    assert "burn-in" in ev.reason and store.read().bandits[KEY]["version"] == 0
    # once every arm has its 100 units, the same round updates the weights
    (tmp_path / "more").mkdir()
    lab2, store2, spans2 = _controller_setup(tmp_path / "more", 1200, {"control": 0.1, "bold": 0.5, "calm": 0.1})
    run_bandits(lab2.experiments, spans2, store2, now=NOW - 7200, engine="python")
    (ev2,) = run_bandits(lab2.experiments, spans2, store2, now=NOW, engine="python")
    assert ev2.action == "updated" and min(ev2.units) >= 100


def test_the_floor_is_kept_for_losing_arms(tmp_path: Path) -> None:
    lab, store, spans = _controller_setup(tmp_path, 2400, {"control": 0.0, "bold": 0.6, "calm": 0.0}, floor=5)
    run_bandits(lab.experiments, spans, store, now=NOW - 7200, engine="python")
    (ev,) = run_bandits(lab.experiments, spans, store, now=NOW, engine="python")
    assert ev.action == "updated"
    assert ev.weights_bp[0] == ev.weights_bp[2] == 500 and ev.weights_bp[1] == 9000


def test_a_latency_bandit_prefers_the_fast_arm(tmp_path: Path) -> None:
    lab = Lab.from_dict(_doc(_exp("request", metric="latency")))
    rnd = random.Random(5)
    reqs = []
    for _ in range(1500):
        tid = f"{rnd.getrandbits(128):032x}"
        a = lab.assign(KEY, tid)
        dur = {"control": 40.0, "bold": 20.0, "calm": 60.0}[a.variant] * rnd.uniform(0.8, 1.2)
        attrs = {A.variant_attr(KEY): a.variant, A.bandit_attr(KEY): a.period, A.unit_attr("request"): tid}
        reqs.append(Request(int((NOW - rnd.uniform(60, 3000)) * 1e9), dur, False, attrs))
    spans = write_spans(str(tmp_path / "spans.jsonl"), reqs)
    store = JsonFileStore(str(tmp_path / "state.json"))
    run_bandits(lab.experiments, spans, store, now=NOW - 7200, engine="python")
    (ev,) = run_bandits(lab.experiments, spans, store, now=NOW, engine="python")
    assert ev.action == "updated" and ev.weights_bp[1] > 9000, ev
    assert "lo" not in store.read().bandits[KEY]["periods"][1]


def test_the_chdb_engine_measures_what_the_python_reader_does(tmp_path: Path) -> None:
    pytest.importorskip("chdb")
    lab, store, spans = _controller_setup(tmp_path, 2400, {"control": 0.05, "bold": 0.30, "calm": 0.05})
    run_bandits(lab.experiments, spans, store, now=NOW - 7200, engine="python")
    store2 = JsonFileStore(str(tmp_path / "chdb.json"))
    run_bandits(lab.experiments, spans, store2, now=NOW - 7200, engine="chdb")
    (py,) = run_bandits(lab.experiments, spans, store, now=NOW, engine="python")
    (ch,) = run_bandits(lab.experiments, spans, store2, now=NOW, engine="chdb")
    assert (py.units, py.weights_bp) == (ch.units, ch.weights_bp)


def test_a_lab_following_the_store_assigns_by_the_controllers_version(tmp_path: Path) -> None:
    lab, store, spans = _controller_setup(tmp_path, 2400, {"control": 0.05, "bold": 0.30, "calm": 0.05})
    follower = Lab.from_dict(_doc(_exp(slice=50), state=tmp_path / "state.json"))
    follower.assign(KEY, "warm-up")
    run_bandits(follower.experiments, spans, store, now=NOW - 7200, engine="python")
    t0 = time.monotonic()
    (ev,) = run_bandits(follower.experiments, spans, store, now=NOW, engine="python")
    _wait(lambda: follower.bandit_views[KEY].version == 1)
    assert time.monotonic() - t0 < FAST + 1.0
    newcomers = [follower.assign(KEY, f"new-{i}") for i in range(4000) if fieldlab.bucket(KEY, f"new-{i}") >= 5000]
    shares = Counter(a.variant for a in newcomers)
    assert {a.period for a in newcomers} == {1}
    assert abs(shares["bold"] / len(newcomers) - ev.weights_bp[1] / 10_000) < 0.03
    follower.close()


# ----------------------------------------------------------------------------- the CLI


def test_watch_publishes_and_status_shows_the_bandit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lab, _store, spans = _controller_setup(tmp_path, 2400, {"control": 0.05, "bold": 0.30, "calm": 0.05})
    cfg = tmp_path / "lab.json"
    doc = _doc(_exp(slice=50, interval="1s"), state="state.json")
    cfg.write_text(json.dumps(doc))
    assert main(["watch", str(cfg), spans, "--once", "--json", "--engine", "python"]) == 0
    round1 = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(b["experiment"], b["action"], b["version"]) for b in round1["bandits"]] == [(KEY, "started", 0)]
    time.sleep(1.05)
    assert main(["watch", str(cfg), spans, "--once", "--engine", "python"]) == 0
    text = capsys.readouterr().out
    assert f"{KEY}: weights v1 control " in text and "(Thompson, P(best) bold" in text
    assert main(["status", str(cfg), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["bandits"]
    assert row["version"] == 1 and row["p_best"]["bold"] > 0.9 and row["updated_at"]
    assert abs(sum(row["weights"].values()) - 100) < 1e-9 and row["enrolled_percent"] == 100
    assert main(["status", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "bandits:" in out and f"{KEY}: v1 control" in out and "P(best) bold" in out


def test_view_of_matches_the_enrolment_schedule_bucket_for_bucket() -> None:
    lab = Lab.from_dict(_doc(_exp(traffic=35, slice=15)))
    exp = lab.experiments[KEY]
    entries = _versions(lab, [(2500, 5000, 2500), (100, 100, 9800)])
    last = entries[-1]
    view = view_of(exp, last)
    schedule = EnrolmentSchedule(
        3500, tuple(Period(p["version"], p["lo"], p["hi"], tuple(p["weights_bp"])) for p in last["periods"])
    )
    assert schedule.enrolled == 3500 and view.enrolled == 3500  # capped by the traffic: 15 + 15 + 5
    for b in range(10_000):
        got = schedule.assign(b)
        expect = None if got is None else (got[0], schedule.periods[got[1]].version)
        assert view.assign(b) == expect, b
    assert [(p["lo"], p["hi"]) for p in last["periods"]] == [(0, 1500), (1500, 3000), (3000, 3500)]
    assert next_entry(exp, last, BanditWeights(3, (3334, 3333, 3333)), 2e9) is None  # the cap is reached


def test_segment_sql_reproduces_a_published_version_on_chdb(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chdb = pytest.importorskip("chdb")
    cfg = tmp_path / "lab.json"
    cfg.write_text(json.dumps(_doc(_exp(traffic=60, slice=20), state="state.json")))
    entries = _versions(Lab.from_dict(_doc(_exp(traffic=60, slice=20))), [(2000, 7000, 1000), (500, 500, 9000)])
    _publish(JsonFileStore(str(tmp_path / "state.json")), entries[2])  # before any Lab of this process reads it
    assert main(["segment", str(cfg), KEY, "--sql", "uid"]) == 0
    expr = capsys.readouterr().out.strip()
    ids = [f"user-{i}" for i in range(4000)]
    literal = ", ".join(f"'{i}'" for i in ids)
    res = chdb.query(
        f"SELECT {expr} AS v FROM (SELECT arrayJoin([{literal}]) AS uid) FORMAT JSONEachRow", "JSONEachRow"
    )
    got = [json.loads(line)["v"] for line in str(res).strip().splitlines()]
    lab = Lab.from_file(cfg, reload_interval=0)
    want = [lab.assign(KEY, i).variant for i in ids]
    assert lab.bandit_views[KEY].version == 2
    assert got == want
    assert {lab.assign(KEY, i).period for i in ids} == {None, 0, 1, 2}
    lab.close()


def test_validate_shows_the_bandit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "lab.json"
    cfg.write_text(json.dumps(_doc()))
    assert main(["validate", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "bandit on conversion app.cart.added every 1h, floor 1%, burn-in 100, slices of 10%" in out
    assert "control [0, 333), bold [333, 666), calm [666, 1000)" in out


def test_guardrail_decisions_and_kills_keep_the_published_weights(tmp_path: Path) -> None:
    """Every writer of the state document (guardrail decisions, fieldlab kill) keeps bandits.<key> as it is."""
    cfg = tmp_path / "lab.json"
    cfg.write_text(json.dumps(_doc(state="state.json")))
    store = JsonFileStore(str(tmp_path / "state.json"))
    entry = _versions(Lab.from_dict(_doc()), [(2000, 7000, 1000)])[1]
    _publish(store, entry)
    store.record([Decision("pause", KEY, "bold", "guardrail", "burning", "tester")])
    assert main(["kill", "--all", "--config", str(cfg), "--reason", "INC-1"]) == 0
    state = store.read()
    assert state.bandits[KEY] == entry and state.all is not None and state.is_paused(KEY, "bold")


def test_a_reload_applies_the_stored_version_to_the_new_config_at_once(tmp_path: Path) -> None:
    """A reload that changes the config (here its traffic) assigns by the store's version from its first
    evaluation, not by version 0; a reload that removes the bandit drops its view."""
    cfg = tmp_path / "lab.json"
    cfg.write_text(json.dumps(_doc(state="state.json")))
    _publish(JsonFileStore(str(tmp_path / "state.json")), _versions(Lab.from_dict(_doc()), [(2000, 7000, 1000)])[1])
    lab = Lab.from_file(cfg, reload_interval=0)
    lab.assign(KEY, "warm-up")
    _wait(lambda: lab.bandit_views[KEY].version == 1)
    cfg.write_text(json.dumps(_doc(_exp(traffic=15), state="state.json")))
    assert lab.reload() is True
    view = lab.bandit_views[KEY]
    assert view.version == 1 and view.enrolled == 1500  # v1's slice, cut at the new traffic
    inside = [f"u{i}" for i in range(3000) if 1000 <= fieldlab.bucket(KEY, f"u{i}") < 1500]
    beyond = [f"u{i}" for i in range(3000) if fieldlab.bucket(KEY, f"u{i}") >= 1500]
    assert inside and {lab.assign(KEY, u).period for u in inside} == {1}
    assert {lab.assign(KEY, u).reason for u in beyond} == {TRAFFIC}
    assert lab.experiments[KEY].traffic == 15
    cfg.write_text(
        json.dumps({"experiments": [{"key": "plain", "variants": ["a", "b"]}], "lab": {"state": "state.json"}})
    )
    assert lab.reload() is True and dict(lab.bandit_views) == {}
    lab.close()
