"""Bandits: Thompson weights with floor and burn-in, sticky enrolment slices, per-period analysis without Simpson."""

from __future__ import annotations

import json
import random

import pytest

from fieldlab._hashing import BUCKETS, bucket
from fieldlab.control import bandit as B
from fieldlab.errors import ConfigError


def test_burn_in_keeps_an_equal_split_until_every_arm_has_100_units() -> None:
    arms = [B.ArmStats(500, 100), B.ArmStats(99, 60), B.ArmStats(500, 10)]
    res = B.thompson_weights(arms, seed=1)
    assert not res.updated and res.weights == pytest.approx((1 / 3,) * 3) and "burn-in" in res.reason
    res = B.thompson_weights([B.ArmStats(500, 100), B.ArmStats(100, 60), B.ArmStats(500, 10)], seed=1)
    assert res.updated and max(range(3), key=lambda i: res.weights[i]) == 1


def test_the_floor_holds_even_for_a_hopeless_arm() -> None:
    arms = [B.ArmStats(5000, 100), B.ArmStats(5000, 900), B.ArmStats(5000, 120)]
    res = B.thompson_weights(arms, seed=3)
    assert min(res.weights) >= 0.01 - 1e-12 and res.weights[1] > 0.97
    bp = B.to_basis_points(res.weights, floor=0.01)
    assert sum(bp) == BUCKETS and min(bp) >= 100
    with pytest.raises(ConfigError, match="floor"):
        B.thompson_weights(arms, floor=0.4)


def test_weights_are_a_pure_function_of_counts_and_seed() -> None:
    arms = [B.ArmStats(400, 40), B.ArmStats(400, 48)]
    assert B.thompson_weights(arms, seed=7) == B.thompson_weights(arms, seed=7)
    a, b = B.thompson_weights(arms, seed=7), B.thompson_weights(arms, seed=8)
    assert a.weights != b.weights and a.weights == pytest.approx(b.weights, abs=0.03)


def test_error_and_numeric_metrics_pick_the_right_direction() -> None:
    err = B.thompson_weights([B.ArmStats(2000, 20), B.ArmStats(2000, 60)], kind="error", seed=1)
    assert err.weights[0] > 0.9  # fewer errors wins
    num = [
        B.ArmStats(1000, total=1000 * 10.0, total_sq=1000 * (100 + 4)),
        B.ArmStats(1000, total=1000 * 10.5, total_sq=1000 * (110.25 + 4)),
    ]
    assert B.thompson_weights(num, kind="numeric", seed=1).weights[1] > 0.9
    assert B.thompson_weights(num, kind="numeric", higher_is_better=False, seed=1).weights[0] > 0.9


def test_assign_with_weights_cuts_the_buckets_in_arm_order() -> None:
    w = (1000, 2500, 6500)
    assert [B.assign_with_weights(b, w) for b in (0, 999, 1000, 3499, 3500, 9999)] == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError):
        B.assign_with_weights(10_000, w)
    rng = random.Random(1)
    arms = [B.assign_with_weights(bucket("exp", f"u{rng.getrandbits(64)}"), w) for _ in range(30_000)]
    for i, wi in enumerate(w):
        assert abs(arms.count(i) / len(arms) - wi / BUCKETS) < 0.01


def test_user_units_keep_their_first_arm_when_the_weights_change() -> None:
    sched = B.EnrolmentSchedule(cap=6000)
    sched = sched.open_period(B.BanditWeights(1, (5000, 5000)), 2000)
    first = {b: sched.assign(b) for b in range(BUCKETS)}
    assert sum(v is not None for v in first.values()) == 2000
    sched = sched.open_period(B.BanditWeights(2, (1000, 9000)), 2000)
    sched = sched.open_period(B.BanditWeights(3, (9000, 1000)), 2000)
    later = {b: sched.assign(b) for b in range(BUCKETS)}
    assert all(later[b] == v for b, v in first.items() if v is not None), "an enrolled unit moved"
    p2 = [later[b][0] for b in range(2000, 4000)]  # type: ignore[index]
    assert p2.count(1) == 1800 and p2.count(0) == 200
    p3 = [later[b][0] for b in range(4000, 6000)]  # type: ignore[index]
    assert p3.count(0) == 1800
    assert all(later[b] is None for b in range(6000, BUCKETS))
    assert sched.open_period(B.BanditWeights(4, (5000, 5000)), 2000) == sched  # the cap: no more adaptation
    assert B.EnrolmentSchedule.from_dict(json.loads(json.dumps(sched.to_dict()))) == sched
    w = B.BanditWeights(2, (1000, 9000), "why", (0.1, 0.9))
    assert B.BanditWeights.from_dict(json.loads(json.dumps(w.to_dict()))) == w


def _simpson_periods(seed: int) -> list[B.PeriodData]:
    """Baseline conversion falls from 30 % to 10 % while the bandit moves traffic to B, which is 2 points better."""
    rng = random.Random(seed)
    periods = []
    for base, wb in ((0.30, 0.5), (0.20, 0.8), (0.10, 0.95)):
        counts = [[0, 0], [0, 0]]
        for _ in range(20_000):
            arm = 1 if rng.random() < wb else 0
            counts[arm][0] += 1
            counts[arm][1] += rng.random() < base + 0.02 * arm
        periods.append(B.PeriodData((1 - wb, wb), tuple(B.ArmStats(n, s) for n, s in counts)))
    return periods


def test_per_period_analysis_recovers_the_effect_where_pooling_reverses_its_sign() -> None:
    periods = _simpson_periods(5)
    naive = B.pooled_effect(periods)
    assert naive < -0.03, "the construction must show Simpson's paradox"
    for method in ("stratified", "inverse_variance"):
        res = B.per_period_effect(periods, method=method)
        assert res["ci_low"] < 0.02 < res["ci_high"], res
        assert res["ci_low"] > 0, "B is better in every period and the analysis must say so"
    assert all(not r["mismatch"] for r in B.srm_by_period(periods))


def test_per_period_analysis_is_unbiased_over_many_seeds() -> None:
    ests = [B.per_period_effect(_simpson_periods(s))["estimate"] for s in range(20)]
    assert abs(sum(ests) / len(ests) - 0.02) < 0.003


def test_srm_is_checked_per_period_against_that_periods_weights() -> None:
    ok = B.PeriodData((0.5, 0.5), (B.ArmStats(5000), B.ArmStats(5050)))
    skew = B.PeriodData((0.2, 0.8), (B.ArmStats(2000), B.ArmStats(8000)))
    broken = B.PeriodData((0.2, 0.8), (B.ArmStats(5000), B.ArmStats(5000)))
    res = B.srm_by_period([ok, skew, broken])
    assert [r["mismatch"] for r in res] == [False, False, True]
    assert [r["period"] for r in res] == [0, 1, 2]


def test_thompson_sampling_has_less_regret_than_an_equal_split() -> None:
    rates = (0.10, 0.12, 0.15)
    rng = random.Random(2)
    counts = [[0, 0] for _ in rates]
    regret = 0.0
    weights: tuple[float, ...] = (1 / 3,) * 3
    min_weight = 1.0
    for period in range(20):
        bp = B.to_basis_points(weights, floor=0.01)
        for _ in range(1000):
            arm = B.assign_with_weights(bucket("regret", f"u{rng.getrandbits(64)}"), bp)
            counts[arm][0] += 1
            counts[arm][1] += rng.random() < rates[arm]
            regret += max(rates) - rates[arm]
        res = B.thompson_weights([B.ArmStats(n, s) for n, s in counts], seed=period, draws=2000)
        weights = res.weights
        min_weight = min(min_weight, *weights)
    equal_regret = 20_000 * (max(rates) - sum(rates) / 3)
    assert regret < 0.5 * equal_regret
    assert min_weight >= 0.01 - 1e-12
    assert max(range(3), key=lambda i: weights[i]) == 2
