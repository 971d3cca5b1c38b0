"""The sick canary: finds a known breaking point, never doses above a failure, decides per trace, persists."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from typing import Any

import pytest

from fieldlab.control import canary as C
from fieldlab.errors import ConfigError

STEADY = {"error_slo": 99.5, "latency_slo": {"ms": 1000, "percent": 99}}


def make_spec(**tuning: Any) -> C.CanarySpec:
    return C.CanarySpec.from_table(
        {"key": "inv", "doses": {"start": 25, "factor": 2, "max": 1600}, "steady_state": STEADY}, **tuning
    )


def timeout_service(timeout_ms: float, median_ms: float = 40.0, sigma: float = 0.4) -> Callable[[float], float]:
    """Error rate at a dose: lognormal base latency plus the dose exceeds a client timeout; 0.05 % background."""
    nd = __import__("statistics").NormalDist()

    def rate(dose: float) -> float:
        room = timeout_ms - dose
        tail = 1.0 if room <= 0 else 1.0 - nd.cdf(math.log(room / median_ms) / sigma)
        return 0.0005 + 0.9995 * tail

    return rate


def truth_of(rate: Callable[[float], float], allowance: float = 0.005) -> float:
    lo, hi = 0.0, 10_000.0
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if rate(mid) >= allowance else (mid, hi)
    return hi


def drive(
    spec: C.CanarySpec,
    rate: Callable[[float], float],
    seed: int,
    per_round: int = 100,
    check: Callable[[C.CanaryState], None] | None = None,
    max_rounds: int = 3000,
) -> C.CanaryState:
    """Route requests by trace id through choose_arm, draw outcomes, advance until the canary finishes."""
    rng = random.Random(seed)
    state = C.start(spec)
    totals: dict[str, list[int]] = {}
    for _ in range(max_rounds):
        if state.finished:
            return state
        table = C.weight_table(state.weights)
        for _ in range(per_round):
            arm = C.choose_arm(spec.key, f"{rng.getrandbits(128):032x}", table)
            if arm is None:
                continue
            t = totals.setdefault(arm, [0, 0, 0])
            t[0] += 1
            t[1] += rng.random() < rate(0.0 if arm == C.CONTROL else float(arm[:-2]))
        state = C.advance(spec, state, {k: C.ArmCounts(*v) for k, v in totals.items()})
        if check is not None:
            check(state)
    raise AssertionError("the canary did not finish")


@pytest.mark.parametrize("timeout_ms, seed", [(300, 1), (420, 2), (650, 3), (1000, 4)])
def test_the_canary_finds_a_known_breaking_point_within_ten_percent(timeout_ms: float, seed: int) -> None:
    rate = timeout_service(timeout_ms)
    truth = truth_of(rate)
    state = drive(make_spec(), rate, seed)
    assert state.outcome == "found", state.history[-1].reason
    assert state.breaking_point is not None
    assert abs(state.breaking_point / truth - 1) <= 0.10, (state.breaking_point, truth)
    lo, hi = state.bracket
    assert lo is not None and hi is not None and lo < truth * 1.1 and hi > truth * 0.9
    assert hi / lo <= make_spec().target_ratio + 1e-9
    assert state.weights == {} and state.history[-1].action == "conclude"


def test_no_traffic_ever_goes_to_a_dose_above_a_known_failure() -> None:
    spec = make_spec()
    seen_broken: list[float] = []

    def check(state: C.CanaryState) -> None:
        broken = [a.dose for a in state.arms if a.status == C.BROKEN]
        if broken:
            seen_broken.append(min(broken))
            for label, w in state.weights.items():
                if label != C.CONTROL:
                    assert float(label[:-2]) < min(broken), (label, w, min(broken))
        # every dose with traffic is active, and no active dose sits above a broken one
        for label in state.weights:
            if label != C.CONTROL:
                arm = state.arm(float(label[:-2]))
                assert arm is not None and arm.status == C.ACTIVE

    drive(spec, timeout_service(350), seed=7, check=check)
    assert seen_broken, "the run never found a failure: the check never ran"


def test_every_active_dose_keeps_its_floor_and_the_control_its_share() -> None:
    spec = make_spec()
    checked = []

    def check(state: C.CanaryState) -> None:
        if state.finished:
            return
        active = [a for a in state.arms if a.status == C.ACTIVE]
        assert state.weights[C.CONTROL] == pytest.approx(spec.control_share)
        for a in active:
            assert state.weights[a.label] >= spec.floor - 1e-4
        assert sum(state.weights.values()) <= 1.0 + 1e-3  # shares are published to 4 decimals
        checked.append(len(active))

    drive(spec, timeout_service(300, sigma=0.7), seed=11, check=check)  # a soft transition: doses stall, flanks open
    assert max(checked) >= 2, "never two doses at once: the floor was not exercised"


def test_the_dose_of_a_request_is_a_pure_function_of_its_trace_id_and_the_weights() -> None:
    weights = {"control": 0.1, "25ms": 0.3, "50ms": 0.6}
    rng = random.Random(3)
    ids = [f"{rng.getrandbits(128):032x}" for _ in range(20_000)]
    first = [C.choose_arm("inv", t, weights) for t in ids]
    assert first == [C.choose_arm("inv", t, C.weight_table(dict(reversed(list(weights.items()))))) for t in ids]
    counts = {k: first.count(k) for k in weights}
    for k, w in weights.items():
        assert abs(counts[k] / len(ids) - w) < 0.015, counts
    # a canary on 2 % of traffic: the rest is outside it, and the in-canary split keeps the weights
    small = [C.choose_arm("inv", t, weights, traffic=2) for t in ids]
    inside = [a for a in small if a is not None]
    assert 0.01 < len(inside) / len(ids) < 0.03
    assert all(
        a is None or a == b for a, b in zip(small, first, strict=False)
    )  # the canary's slice agrees with the full split
    # shares summing below 1 leave the rest outside the canary
    partial = [C.choose_arm("inv", t, {"control": 0.1, "25ms": 0.05}) for t in ids]
    assert abs(partial.count(None) / len(ids) - 0.85) < 0.015
    assert C.choose_arm("inv", ids[0], {}) is None
    assert [C.dose_of(x) for x in (None, "control", "25ms", "141.4ms")] == [None, None, 25.0, 141.4]


def test_the_state_round_trips_through_json_and_resumes_identically() -> None:
    spec = make_spec()
    rate = timeout_service(400)
    state = C.start(spec)
    counts = {"control": C.ArmCounts(300, 0, 0), "25ms": C.ArmCounts(250, 0, 0)}
    state = C.advance(spec, state, counts)
    counts.update({"50ms": C.ArmCounts(40, 0, 0)})
    state = C.advance(spec, state, counts)
    text = json.dumps(state.to_dict())
    restored = C.CanaryState.from_dict(json.loads(text))
    assert restored.to_dict() == state.to_dict()
    more = dict(counts, control=C.ArmCounts(400, 1, 0), **{"50ms": C.ArmCounts(260, int(rate(50) * 260), 0)})
    assert C.advance(spec, restored, more).to_dict() == C.advance(spec, state, more).to_dict()
    assert state.history and all(d.reason for d in state.history)


def test_a_control_that_breaks_the_slo_stops_the_canary_as_the_environment() -> None:
    spec = make_spec()
    state = C.advance(spec, C.start(spec), {"control": C.ArmCounts(400, 40, 0), "25ms": C.ArmCounts(400, 41, 0)})
    assert state.phase == C.STOPPED and state.outcome == "environment"
    assert state.weights == {} and "environment" in state.history[-1].reason
    assert not any(a.status == C.BROKEN for a in state.arms), "the dose must not be blamed"


def test_halt_stops_all_doses_and_records_why() -> None:
    spec = make_spec()
    state = C.halt(C.start(spec), "kill switch: fieldlab kill inventory-latency")
    assert state.finished and state.weights == {} and state.outcome == "halted"
    assert state.history[-1].reason.startswith("kill switch")
    assert C.advance(spec, state, {"control": C.ArmCounts(10)}).to_dict() == state.to_dict()


def test_a_service_that_survives_the_whole_ladder_reports_no_breaking_point() -> None:
    spec = C.CanarySpec.from_table({"key": "k", "doses": {"latency_ms": [10, 20, 40]}, "steady_state": STEADY})
    state = drive(spec, lambda d: 0.0, seed=5)
    assert state.outcome == "survived" and state.breaking_point is None
    assert [a.status for a in state.arms] == [C.SAFE, C.SAFE, C.SAFE]


def test_a_service_broken_at_the_first_dose_steps_down_below_the_ladder() -> None:
    rate = timeout_service(120, median_ms=30, sigma=0.3)  # breaks near 55 ms
    spec = C.CanarySpec.from_table({"key": "k", "doses": {"latency_ms": [100, 200]}, "steady_state": STEADY})
    state = drive(spec, rate, seed=9)
    truth = truth_of(rate)
    assert state.outcome == "found" and state.breaking_point is not None
    assert abs(state.breaking_point / truth - 1) <= 0.10
    assert min(a.dose for a in state.arms) < 100


def test_the_slo_tests_keep_their_level_under_continuous_monitoring() -> None:
    """At the boundary rate, 'safe' is ever claimed in <= alpha of sequences, read every 25 requests."""
    a, n_max, reps = 0.005, 3000, 300
    rng = random.Random(12)
    false_safe = false_broken = 0
    for _ in range(reps):
        k = 0
        said_safe = said_broken = False
        for n in range(1, n_max + 1):
            k += rng.random() < a
            if n % 25 == 0:
                up, down = C.slo_evidence(n, k, a)
                said_safe |= down >= -math.log(0.1)
                said_broken |= up >= -math.log(0.3)
        false_safe += said_safe
        false_broken += said_broken
    assert false_safe / reps <= 0.1 + 0.03
    assert false_broken / reps <= 0.3 + 0.05
    # and they have power: a clearly safe and a clearly broken dose are recognised
    assert C.slo_evidence(1500, 0, a)[1] > -math.log(0.1)
    assert C.slo_evidence(10, 5, a)[0] > -math.log(0.3)


def test_beta_tail_matches_known_values() -> None:
    assert C.beta_tail(1, 1, 0.3) == pytest.approx(0.7)
    assert C.beta_tail(2, 1, 0.5) == pytest.approx(0.75)  # P(p > x) = 1 - x^2
    assert C.beta_tail(1, 3, 0.2) == pytest.approx(0.8**3)
    assert C.beta_tail(0.5, 200.5, 0.005) == pytest.approx(C.beta_tail(0.5, 200.5, 0.005))


def test_dose_ladders_parse_and_bad_ones_name_the_field() -> None:
    assert C.parse_doses({"start": 25, "factor": 2, "max": 1600}) == (25, 50, 100, 200, 400, 800, 1600)
    assert C.parse_doses({"latency_ms": [5, 7.5]}) == (5.0, 7.5)
    with pytest.raises(ConfigError, match=r"canaries\[0\].doses.latency_ms"):
        C.parse_doses({"latency_ms": [50, 25]}, "canaries[0].doses")
    with pytest.raises(ConfigError, match=r"doses.factor"):
        C.parse_doses({"start": 25, "factor": 1, "max": 100})
    with pytest.raises(ConfigError, match=r"either latency_ms"):
        C.parse_doses({"start": 25})
    with pytest.raises(ConfigError, match=r"steady_state.error_slo"):
        C.parse_steady_state({"error_slo": 100})
    with pytest.raises(ConfigError, match=r"steady_state.latency_slo"):
        C.parse_steady_state({"latency_slo": {"percent": 99}})
    st = C.parse_steady_state(STEADY)
    assert st.error_allowance == pytest.approx(0.005) and st.slow_allowance == pytest.approx(0.01)


def test_the_request_side_of_the_canary_and_the_bandit_needs_no_numpy() -> None:
    import subprocess
    import sys

    code = (
        "import sys\nfrom fieldlab.control import canary, bandit\n"
        "canary.choose_arm('k', 'ab' * 16, {'control': 0.5, '25ms': 0.5})\n"
        "bandit.assign_with_weights(17, (5000, 5000))\n"
        "print(sorted(m for m in ('numpy', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_the_dose_response_table_shows_each_dose_against_control() -> None:
    spec = make_spec()
    state = drive(spec, timeout_service(400), seed=21)
    rows = C.dose_response(spec, state)
    assert rows[0]["arm"] == C.CONTROL and [r["dose_ms"] for r in rows[1:]] == sorted(a.dose for a in state.arms)
    hi = state.bracket[1]
    top = next(r for r in rows if r["dose_ms"] == hi)
    assert top["status"] == C.BROKEN and top["vs_control"]["ci_low"] > 0 and top["p_breaks"] > 0.5
    assert not any(r["status"] == C.ACTIVE for r in rows), "a finished canary has no active dose"
    json.dumps(rows)


def test_two_background_errors_in_the_first_control_requests_do_not_stop_the_canary() -> None:
    """Defect: the control was judged at alpha_break (0.3), so 2 errors in 36 requests halted the whole canary."""
    spec = make_spec()
    state = C.start(spec)
    for counts in (
        {"control": C.ArmCounts(9, 1, 0), "25ms": C.ArmCounts(5)},
        {"control": C.ArmCounts(21, 1, 0), "25ms": C.ArmCounts(11)},
        {"control": C.ArmCounts(36, 2, 0), "25ms": C.ArmCounts(22)},
    ):
        state = C.advance(spec, state, counts)
    assert not state.finished, state.history[-1].reason
    # a control that really breaks the SLO (6 % errors) still stops it
    state = C.advance(spec, state, {"control": C.ArmCounts(200, 12, 0), "25ms": C.ArmCounts(120)})
    assert state.outcome == "environment"


def test_dose_failing_every_request_against_a_clean_control_is_broken() -> None:
    """Found by the shop demo: a 400 ms dose failed 2230/2230 requests against control's 0/3134 and was never
    called broken (both rates without variance: no interval, so never 'worse than control')."""
    spec = make_spec()
    st = C.advance(spec, C.start(spec), {"control": C.ArmCounts(3134), "25ms": C.ArmCounts(2230, 2230, 0)})
    assert st.arm(25).status == C.BROKEN, st.history[-1].reason
    (row,) = [r for r in C.dose_response(spec, st) if r["arm"] == "25ms"]
    assert row["vs_control"]["ci_low"] > 0.9
