"""The decision rules: burn in both windows AND worse than control; environment; metrics; budget; evidence."""

from __future__ import annotations

import numpy as np
import pytest
from guard_kit import arm

from fieldlab.analysis import stats
from fieldlab.control.budget import (
    ArmData,
    Counts,
    Moments,
    budget_status,
    burn_rate,
    difference_interval,
    excess_bad,
    relative_interval,
)
from fieldlab.control.guardrails import (
    ExperimentData,
    decide_round,
    evaluate_experiment,
)
from fieldlab.control.settings import LabGuardrails, parse_experiment_guardrails
from fieldlab.control.state import Decision, JsonFileStore, LabState, apply_decision

LAB = LabGuardrails()
GUARD = parse_experiment_guardrails({"error_slo": 99.5}, "experiments[0].guardrails", LAB)
AT, BY = "2026-12-04T21:00:00.000Z", "fieldlab-controller@test"


def one(variant: ArmData, control: ArmData, guard=GUARD, lab=LAB):
    ev = evaluate_experiment(
        ExperimentData("checkout", "control", {"control": control, "one-page": variant}), guard, lab
    )
    (v,) = ev.verdicts
    return ev, v


def test_burn_rate() -> None:
    assert burn_rate(7, 100, 99.5) == pytest.approx(14.0)
    assert burn_rate(0, 0, 99.9) == 0.0
    assert burn_rate(1, 1000, 99.9) == pytest.approx(1.0)


def test_moments_reproduce_the_analysis_ratio_estimate_and_confidence_sequence() -> None:
    rng = np.random.default_rng(3)
    xc, xt = 1 + rng.poisson(3, 800), 1 + rng.poisson(3, 700)
    yc, yt = rng.binomial(xc, 0.02), rng.binomial(xt, 0.05)
    mc, mt = Moments.of_units(yc, xc), Moments.of_units(yt, xt)
    ref_c, ref_t = stats.ratio_estimate(yc, xc), stats.ratio_estimate(yt, xt)
    assert mc.estimate().value == pytest.approx(ref_c.value)
    assert mc.estimate().variance == pytest.approx(ref_c.variance, rel=1e-9)
    ref = stats.compare(ref_c, ref_t, alpha=0.01, sequential=True)
    iv = difference_interval(mc, mt, 0.01)
    assert (iv.low, iv.high) == (pytest.approx(ref["ci_low"]), pytest.approx(ref["ci_high"]))
    assert (mc + mt).n == 1500


def test_a_variant_failing_ten_percent_against_a_995_slo_is_paused_with_its_evidence() -> None:
    rng = np.random.default_rng(1)
    ev, v = one(arm(rng, 2000, 0.10), arm(rng, 2000, 0.001))
    assert (v.outcome, v.cause) == ("pause", "guardrail") and not ev.environment
    e = v.evidence
    assert e["units"] == {"control": 2000, "variant": 2000} and e["min_units"] == 100
    errors = e["slis"]["errors"]
    assert errors["slo"] == 99.5 and errors["worse_than_control"] is True
    first = errors["windows"][0]
    assert first["pair"] == "1h/5m" and first["firing"] and first["threshold"] == 14.4
    assert first["long"]["burn_rate"] > 14.4 and first["short"]["burn_rate"] > 14.4
    assert first["control"]["firing"] is False
    assert errors["interval"]["ci_low"] > 0 and errors["interval"]["kind"] == "always-valid confidence sequence"
    assert "burns the 99.5 % SLO" in v.reason and "worse than control" in v.reason


def test_when_control_burns_as_fast_the_environment_is_blamed_not_the_variant() -> None:
    rng = np.random.default_rng(2)
    ev, v = one(arm(rng, 2000, 0.10), arm(rng, 2000, 0.10))
    assert v.outcome == "environment" and ev.environment and "environment" in ev.environment_reason
    rnd = decide_round(
        [ExperimentData("checkout", "control", {"control": arm(rng, 2000, 0.10), "one-page": arm(rng, 2000, 0.10)})],
        {"checkout": GUARD},
        LAB,
        None,
        LabState(),
        at=AT,
        by=BY,
    )
    assert [(d.action, d.experiment, d.cause) for d in rnd.decisions] == [("halt_faults", None, "environment")]
    # the next round, control is healthy again: the controller lifts its own halt
    state = LabState(all=rnd.decisions[0].mark(1))
    rnd = decide_round(
        [ExperimentData("checkout", "control", {"control": arm(rng, 2000, 0.001), "one-page": arm(rng, 2000, 0.001)})],
        {"checkout": GUARD},
        LAB,
        None,
        state,
        at=AT,
        by=BY,
    )
    assert [(d.action, d.cause) for d in rnd.decisions] == [("resume_faults", "environment")]


def test_worse_but_within_the_burn_threshold_is_not_paused() -> None:
    rng = np.random.default_rng(4)
    _, v = one(arm(rng, 5000, 0.025), arm(rng, 5000, 0.001))  # 5x a 0.5 % budget: under 14.4x and 6x
    assert v.outcome == "ok" and v.evidence["slis"]["errors"]["worse_than_control"] is True


def test_a_variant_that_recovered_in_the_short_window_is_not_paused() -> None:
    rng = np.random.default_rng(5)
    variant = arm(rng, 3000, 0.10)
    healed = ArmData(
        {**variant.windows, 300.0: Counts(40, 160, 0, 0), 1800.0: Counts(200, 1000, 0, 0)}, variant.errors, variant.slow
    )
    _, v = one(healed, arm(rng, 3000, 0.001))
    assert v.outcome == "ok"
    assert [w["firing"] for w in v.evidence["slis"]["errors"]["windows"]] == [False, False]


def test_burning_but_not_yet_shown_worse_is_watched() -> None:
    rng = np.random.default_rng(6)
    variant = ArmData(arm(rng, 300, 0.10, window_error_rate=0.10).windows, Moments.of_units([0] * 300, [4] * 300))
    _, v = one(variant, arm(rng, 300, 0.001))
    assert v.outcome == "watch" and "not yet shown worse" in v.reason


def test_no_decision_below_min_units_per_arm() -> None:
    rng = np.random.default_rng(7)
    _, v = one(arm(rng, 99, 0.5), arm(rng, 5000, 0.001))
    assert v.outcome == "insufficient" and "below 100 per arm" in v.reason
    guard = parse_experiment_guardrails({"error_slo": 99.5, "min_units": 50}, "g", LAB)
    _, v = one(arm(rng, 99, 0.5), arm(rng, 5000, 0.001), guard)
    assert v.outcome == "pause"


def test_action_alert_records_an_alert_instead_of_a_pause() -> None:
    rng = np.random.default_rng(8)
    guard = parse_experiment_guardrails({"error_slo": 99.5, "action": "alert"}, "g", LAB)
    rnd = decide_round(
        [ExperimentData("checkout", "control", {"control": arm(rng, 2000, 0.001), "one-page": arm(rng, 2000, 0.10)})],
        {"checkout": guard},
        LAB,
        None,
        LabState(),
        at=AT,
        by=BY,
    )
    assert [(d.action, d.variant, d.cause) for d in rnd.decisions] == [("alert", "one-page", "guardrail")]


def test_a_slow_variant_burns_the_latency_slo() -> None:
    rng = np.random.default_rng(9)
    guard = parse_experiment_guardrails({"error_slo": 99.5, "latency_slo": {"ms": 800, "percent": 99}}, "g", LAB)
    _, v = one(arm(rng, 2000, 0.001, slow_rate=0.2), arm(rng, 2000, 0.001, slow_rate=0.002), guard)
    assert v.outcome == "pause" and "slow-request rate" in v.reason
    assert v.evidence["slis"]["latency"]["threshold_ms"] == 800
    assert v.evidence["slis"]["errors"]["worse_than_control"] is False


def test_non_inferiority_metric_pauses_only_wholly_beyond_the_margin() -> None:
    rng = np.random.default_rng(10)
    guard = parse_experiment_guardrails(
        {"error_slo": 99.5, "metrics": [{"name": "app.checkout.completed", "kind": "conversion", "margin": -2.0}]},
        "g",
        LAB,
    )
    _, v = one(arm(rng, 20000, 0.001, conversion=0.06), arm(rng, 20000, 0.001, conversion=0.10), guard)
    m = v.evidence["metrics"]["app.checkout.completed"]
    assert (v.outcome, v.cause) == ("pause", "metric") and m["inferior"] and m["relative"]["ci_high"] < -0.02
    _, v = one(arm(rng, 20000, 0.001, conversion=0.10), arm(rng, 20000, 0.001, conversion=0.10), guard)
    assert v.outcome == "ok" and not v.evidence["metrics"]["app.checkout.completed"]["inferior"]
    # lower is better: +5 % allowed, the variant is +50 %
    lower = parse_experiment_guardrails({"metrics": [{"name": "q", "kind": "numeric", "margin": 5}]}, "g", LAB)
    none = Moments.of_units([0] * 3000, [1] * 3000)
    c = ArmData(errors=none, metrics={"q": Moments.of_units(rng.normal(100, 10, 3000))})
    t = ArmData(errors=none, metrics={"q": Moments.of_units(rng.normal(150, 10, 3000))})
    _, v = one(t, c, lower)
    assert (v.outcome, v.cause) == ("pause", "metric")
    iv = relative_interval(c.metrics["q"], t.metrics["q"], 0.01)
    assert iv.low > 0.4


def _budget_case(variant_errors: int):
    lab = LabGuardrails(service_slo=99.9, experiment_share=25)

    def c(errors: int) -> Counts:
        return Counts(1000, 100_000, errors, 0)

    period = {
        "checkout": {"control": c(100), "a": c(100 + variant_errors), "b": c(90)},
        "search": {"control": c(100), "x": c(100 + variant_errors // 4)},
    }
    # one full period observed with 1M service requests: the budget is 1000 errors, experiments may cause 250
    b = budget_status(
        lab, Counts(0, 1_000_000, 0, 0), lab.budget_period, period, {"checkout": "control", "search": "control"}
    )
    return lab, b


def test_budget_charges_excess_errors_only() -> None:
    assert excess_bad(Counts(0, 1000, 30, 0), Counts(0, 2000, 20, 0)) == pytest.approx(20.0)
    assert excess_bad(Counts(0, 1000, 5, 0), Counts(0, 2000, 20, 0)) == 0.0
    _, b = _budget_case(100)
    assert b.allowed == pytest.approx(250.0)
    assert b.per_variant[("checkout", "a")] == pytest.approx(100) and b.per_variant[("checkout", "b")] == 0
    assert b.per_experiment == {"checkout": pytest.approx(100), "search": pytest.approx(25)}
    assert b.fraction == pytest.approx(0.5) and not b.exhausted
    assert b.to_json()["experiments"] == {"checkout": 100.0, "search": 25.0}


def test_a_partial_period_projects_the_budget_from_the_traffic_seen() -> None:
    lab = LabGuardrails()
    b = budget_status(lab, Counts(0, 10_000, 0, 0), 86400.0, {}, {})
    assert b.allowed == pytest.approx(10_000 * 30 * 0.001 * 0.25)


def test_spent_budget_halts_faults_and_pauses_the_costliest_until_it_recovers() -> None:
    lab, b = _budget_case(400)
    assert b.exhausted
    rng = np.random.default_rng(11)
    exps = [
        ExperimentData("checkout", "control", {n: arm(rng, 1000, 0.001) for n in ("control", "a", "b")}),
        ExperimentData("search", "control", {n: arm(rng, 1000, 0.001) for n in ("control", "x")}),
    ]
    rnd = decide_round(exps, {}, lab, b, LabState(), at=AT, by=BY)
    acts = [(d.action, d.experiment, d.variant, d.cause) for d in rnd.decisions]
    # a spent 400 of 500 (80 %): it alone covers the cover share; x (100) is not paused
    assert acts == [("halt_faults", None, None, "budget"), ("pause", "checkout", "a", "budget")]
    assert rnd.decisions[1].evidence["variant_excess"] == pytest.approx(400)
    state = LabState()
    for i, d in enumerate(rnd.decisions, 1):
        state, _ = apply_decision(state, d, i)
    state, _ = apply_decision(state, Decision("pause", "search", "x", "guardrail", by=BY), 9)
    _, low = _budget_case(100)
    rnd = decide_round(exps, {}, lab, low, state, at=AT, by=BY)
    acts = [(d.action, d.experiment, d.variant, d.cause) for d in rnd.decisions]
    assert acts == [("resume_faults", None, None, "budget"), ("resume", "checkout", "a", "budget")]


def test_a_halt_handed_from_environment_to_budget_never_gaps() -> None:
    lab, spent = _budget_case(400)
    rng = np.random.default_rng(13)
    exps = [ExperimentData("checkout", "control", {n: arm(rng, 1000, 0.001) for n in ("control", "a", "b")})]
    state = LabState(all=Decision("halt_faults", None, None, "environment", by=BY).mark(1), seq=1)
    rnd = decide_round(exps, {}, lab, spent, state, at=AT, by=BY)
    assert [(d.action, d.cause) for d in rnd.decisions][:2] == [
        ("resume_faults", "environment"),
        ("halt_faults", "budget"),
    ]
    for d in rnd.decisions:  # one write applies them all: readers never see faults unhalted in between
        state, _ = apply_decision(state, d, 2)
    assert state.all is not None and state.all.cause == "budget"


def test_a_round_recorded_twice_changes_the_state_once(tmp_path) -> None:
    rng = np.random.default_rng(12)
    data = [
        ExperimentData(
            "checkout",
            "control",
            {"control": arm(rng, 2000, 0.001), "one-page": arm(rng, 2000, 0.1), "aa": arm(rng, 2000, 0.001)},
        )
    ]
    store = JsonFileStore(str(tmp_path / "state.json"))
    rnd = decide_round(data, {"checkout": GUARD}, LAB, None, store.read(), at=AT, by=BY)
    state, applied = store.record(rnd.decisions, report=rnd.to_json())
    assert [(d.action, d.variant) for d in applied] == [("pause", "one-page")]
    assert state.is_paused("checkout", "one-page") and not state.is_paused("checkout", "aa")
    assert state.report["experiments"][0]["variants"][0]["variant"] == "aa"
    state, applied = store.record(decide_round(data, {"checkout": GUARD}, LAB, None, state, at=AT, by=BY).decisions)
    assert applied == [] and state.seq == 1
