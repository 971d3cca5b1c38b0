"""One controller round over real OTLP files (embedded ClickHouse and the Python reader) and otel_traces."""

from __future__ import annotations

import os
import sys

import pytest
from span_kit import Request, traffic, write_spans

from fieldlab import attributes as A
from fieldlab.analysis.sources import ClickHouseSource, FileSource
from fieldlab.control.controller import (
    Controller,
    ExperimentSpec,
    experiment_specs,
    measure,
)
from fieldlab.control.settings import parse_guardrails_config
from fieldlab.control.state import JsonFileStore

NOW = 1_796_000_000.0  # 2026-11-30T00:53:20Z
DOC = {
    "guardrails": {"service_slo": 99.9},
    "experiments": [
        {
            "key": "checkout",
            "variants": [{"name": "control"}, {"name": "one-page"}, {"name": "aa"}],
            "guardrails": {
                "error_slo": 99.5,
                "latency_slo": {"ms": 800, "percent": 99},
                "metrics": [{"name": "app.checkout.completed", "kind": "conversion", "margin": -2.0}],
            },
        }
    ],
}


@pytest.fixture(scope="module")
def spans(tmp_path_factory) -> str:
    """Control and an A/A arm healthy, one-page failing 10 % of its requests; a few requests to ignore."""
    reqs = traffic(
        "checkout",
        NOW,
        units={"control": 400, "one-page": 400, "aa": 400},
        error_rate={"control": 0.001, "one-page": 0.10, "aa": 0.001},
        conversion={"control": 0.3, "one-page": 0.3, "aa": 0.3},
    )
    t = int(NOW * 1e9) - 60_000_000_000
    forced = {A.variant_attr("checkout"): "one-page", A.forced_attr("checkout"): True, A.unit_attr("user"): "qa"}
    reqs += [Request(t, 5.0, True, dict(forced)) for _ in range(50)]  # a QA override: never counted
    both = {A.unit_attr("user"): "switcher"}
    reqs += [Request(t, 5.0, False, {**both, A.variant_attr("checkout"): v}) for v in ("control", "aa")]
    reqs += [Request(int((NOW + 60) * 1e9), 5.0, True, {A.variant_attr("checkout"): "aa", A.unit_attr("user"): "late"})]
    reqs += [Request(t, 5.0, False, {A.HTTP_STATUS_CODE: 200}) for _ in range(100)]  # not in any experiment
    return write_spans(str(tmp_path_factory.mktemp("spans") / "traces.jsonl"), reqs)


def _controller(source, tmp_path, engine="auto") -> Controller:
    cfg = parse_guardrails_config(DOC)
    return Controller(
        cfg,
        experiment_specs(DOC),
        source,
        JsonFileStore(str(tmp_path / "state.json")),
        engine=engine,
        by="fieldlab-controller@test",
    )


def test_experiment_specs_from_a_config_document() -> None:
    specs = experiment_specs(
        {
            "experiments": [
                {"key": "a", "variants": [{"name": "c"}, {"name": "t"}], "unit": "session"},
                {"key": "b", "variants": {"x": 1, "y": 1}, "control": "y"},
            ]
        }
    )
    assert specs == {"a": ExperimentSpec("a", "c", "session"), "b": ExperimentSpec("b", "y", "user")}


def _summary(m):
    out = {}
    for e in m.experiments:
        for v, a in e.arms.items():
            out[(e.key, v)] = (a.errors, a.slow, dict(a.windows), dict(a.metrics))
    return out, round(m.budget.service.requests), round(m.budget.observed_seconds)


def test_embedded_clickhouse_and_the_python_reader_measure_the_same(spans, tmp_path) -> None:
    ctl = _controller(spans, tmp_path)
    q = ctl.query(NOW)
    ch = measure(FileSource(spans, engine="chdb"), q, ctl.config)
    py = measure(FileSource(spans, engine="python"), q, ctl.config)
    assert ch.engine == "chdb" and py.engine == "python"
    assert _summary(ch) == _summary(py)
    arms = {v: a for e in ch.experiments for v, a in e.arms.items()}
    assert sorted(arms) == ["aa", "control", "one-page"]
    # forced requests, the unit seen in two variants and the span after `now` are left out
    assert arms["control"].units == 400 and arms["aa"].units == 400 and arms["one-page"].units == 400
    assert ch.budget.service.requests == sum(a.errors.sx for a in arms.values()) + 50 + 2 + 100
    one = arms["one-page"]
    assert one.window(21600.0).requests == one.errors.sx  # everything happened in the last 6 hours
    assert 0 < one.window(300.0).requests < one.window(3600.0).requests < one.window(21600.0).requests


def test_the_otel_traces_table_measures_the_same(spans, tmp_path) -> None:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "analysis"))
    from analysis_helpers import OTEL_TRACES_DDL, chdb_session, load_into_otel_traces

    ctl = _controller(spans, tmp_path)
    q = ctl.query(NOW)
    py = measure(FileSource(spans, engine="python"), q, ctl.config)
    sess = chdb_session(str(tmp_path / "ch"))
    try:
        sess.query(OTEL_TRACES_DDL.format(table="otel_traces", duration_type="UInt64"))
        load_into_otel_traces(sess, "otel_traces", spans)
        tb = measure(ClickHouseSource.from_chdb(sess, "otel_traces"), q, ctl.config)
    finally:
        sess.close()
    assert tb.engine == "clickhouse"
    assert _summary(tb) == _summary(py)


@pytest.mark.parametrize("engine", ["chdb", "python"])
def test_a_round_pauses_the_failing_variant_only_and_records_why(spans, tmp_path, engine) -> None:
    ctl = _controller(spans, tmp_path, engine)
    rnd = ctl.run_round(NOW)
    verdicts = {v.variant: v for e in rnd.experiments for v in e.verdicts}
    assert verdicts["one-page"].outcome == "pause" and verdicts["aa"].outcome == "ok"
    # 10 % errors on a third of the traffic also spends the experimentation budget (25 % of a 99.9 % SLO's)
    assert [(d.action, d.variant, d.cause) for d in rnd.decisions] == [
        ("pause", "one-page", "guardrail"),
        ("halt_faults", None, "budget"),
        ("pause", "one-page", "budget"),
    ]
    assert rnd.budget is not None and rnd.budget.exhausted
    state = ctl.store.read()
    assert state.is_paused("checkout", "one-page") and not state.is_paused("checkout", "aa")
    assert state.paused["checkout"]["one-page"].cause == "guardrail"  # the first reason stays on record
    assert state.all is not None and state.all.cause == "budget"
    d = state.history[0]
    assert d.by == "fieldlab-controller@test" and d.at == "2026-11-30T00:53:20.000Z"
    ev = d.evidence
    assert ev["units"] == {"control": 400, "variant": 400}
    assert ev["slis"]["errors"]["windows"][0]["firing"] and ev["slis"]["errors"]["interval"]["ci_low"] > 0
    assert ev["slis"]["latency"]["worse_than_control"] is False
    assert ev["metrics"]["app.checkout.completed"]["inferior"] is False
    assert state.report["engine"].startswith(engine) and state.report["budget"]["experiments"]["checkout"] > 0
    # the next round changes nothing: the pause stays, one report is written
    ctl.run_round(NOW + 60)
    again = ctl.store.read()
    assert len(again.history) == 2 and again.seq == 2


def test_control_failing_alike_is_the_environment(tmp_path) -> None:
    reqs = traffic(
        "checkout",
        NOW,
        units={"control": 300, "one-page": 300, "aa": 300},
        error_rate={"control": 0.10, "one-page": 0.10, "aa": 0.10},
        seed=5,
    )
    path = write_spans(str(tmp_path / "env.jsonl"), reqs)
    ctl = _controller(path, tmp_path)
    rnd = ctl.run_round(NOW)
    assert all(v.outcome in ("environment", "ok") for e in rnd.experiments for v in e.verdicts)
    assert rnd.experiments[0].environment
    acts = [(d.action, d.experiment, d.cause) for d in rnd.decisions]
    assert ("halt_faults", None, "environment") in acts and not any(a == "pause" for a, _, _ in acts)
    state = ctl.store.read()
    assert state.all is not None and state.all.cause == "environment" and not state.paused


def test_slow_requests_and_a_since_cut_are_counted_alike_by_both_engines(tmp_path) -> None:
    reqs = traffic(
        "checkout",
        NOW,
        units={"control": 250, "one-page": 250, "aa": 250},
        error_rate={"control": 0.001, "one-page": 0.001, "aa": 0.001},
        slow_ms={"control": 100.0, "one-page": 2000.0, "aa": 100.0},
        seed=9,
    )
    path = write_spans(str(tmp_path / "slow.jsonl"), reqs)
    ctl = _controller(path, tmp_path)
    q = ctl.query(NOW)
    ch = measure(FileSource(path, engine="chdb"), q, ctl.config)
    py = measure(FileSource(path, engine="python"), q, ctl.config)
    assert _summary(ch) == _summary(py)
    arms = {v: a for e in ch.experiments for v, a in e.arms.items()}
    assert arms["one-page"].slow.sy == arms["one-page"].errors.sx  # 1000-3000 ms: every request is over 800 ms
    assert arms["control"].slow.sy == 0
    rnd = ctl.run_round(NOW, record=False)
    (v,) = [v for e in rnd.experiments for v in e.verdicts if v.variant == "one-page"]
    assert v.outcome == "pause" and "slow-request rate" in v.reason
    # only the last half hour
    from dataclasses import replace

    half = replace(q, since=NOW - 1800)
    ch2 = measure(FileSource(path, engine="chdb"), half, ctl.config)
    py2 = measure(FileSource(path, engine="python"), half, ctl.config)
    assert _summary(ch2) == _summary(py2)
    late = {v: a for e in ch2.experiments for v, a in e.arms.items()}
    assert 0 < late["one-page"].errors.sx < arms["one-page"].errors.sx
    assert late["one-page"].errors.sx == arms["one-page"].window(1800.0).requests


def test_a_sick_canary_spends_the_experimentation_budget_and_a_spent_budget_halts_it(tmp_path) -> None:
    """Issue 13: the canaries stay inside the guardrails' experimentation budget. Their excess bad requests
    are charged with the variants'; when that spends the budget every fault halts, and the canary with it."""
    import dataclasses

    from fieldlab.control import canary as C
    from fieldlab.control.canary_config import parse_canaries
    from fieldlab.control.canary_controller import CanaryController
    from fieldlab.control.controller import canary_charges

    healthy = traffic(
        "checkout",
        NOW,
        units={"control": 400, "one-page": 400, "aa": 400},
        error_rate={"control": 0.001, "one-page": 0.001, "aa": 0.001},
        conversion={"control": 0.3, "one-page": 0.3, "aa": 0.3},
    )
    source = write_spans(str(tmp_path / "traces.jsonl"), healthy)
    ctl = _controller(source, tmp_path, "python")
    (canary,) = parse_canaries(
        [{"key": "inventory-latency", "point": "inventory.reserve", "traffic": 5, "doses": {"latency_ms": [25, 50]}}]
    )
    # without a canary the healthy traffic spends (almost) nothing
    assert not ctl.run_round(NOW).budget.exhausted
    allowed = ctl.store.read().report["budget"]["allowed"]
    sick = C.start(canary.spec)
    sick = dataclasses.replace(
        sick,
        control=C.ArmCounts(1000, 1),
        arms=[C.DoseArm(25.0, requests=1000, errors=5, bad=5), C.DoseArm(50.0, requests=1000, bad=int(allowed) + 50)],
    )
    doc = {**sick.to_dict(), "started_at": NOW - 600}
    ctl.store.update(lambda cur: dataclasses.replace(cur, seq=cur.seq + 1, canaries={"inventory-latency": doc}))
    rnd = ctl.run_round(NOW + 60)
    assert rnd.budget is not None and rnd.budget.exhausted
    assert rnd.budget.per_experiment["inventory-latency"] > allowed
    assert [(d.action, d.experiment, d.cause) for d in rnd.decisions] == [("halt_faults", None, "budget")]
    state = ctl.store.read()
    assert state.all is not None and state.all.cause == "budget"
    assert state.report["budget"]["experiments"]["inventory-latency"] > allowed
    # the canary's next round sees the halt and stops
    after = CanaryController([canary], [source], ctl.store, engine="python").run_round(now=NOW + 61)
    assert after["inventory-latency"]["phase"] == "stopped" and after["inventory-latency"]["outcome"] == "halted"
    # a canary started before the budget period is not charged any more
    old = {**doc, "started_at": NOW + 60 - ctl.config.lab.budget_period - 1}
    assert canary_charges(dataclasses.replace(state, canaries={"inventory-latency": old}), NOW + 60, 30 * 86400) == {}
