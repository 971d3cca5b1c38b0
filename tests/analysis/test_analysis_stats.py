"""The statistics are right: A/A false-positive rates, power, SRM, scipy agreement, Holm, quantiles."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st
from simulations import simulate, theory_power_fixed, theory_power_sequential_final

from fieldlab.analysis.sources import HIST_PER_DECADE, hist_value_ms
from fieldlab.analysis.stats import (
    compare,
    cs_halfwidth,
    hist_quantiles,
    holm,
    rank_test,
    ratio_estimate,
    sequential_p_value,
    srm_test,
)

ALPHA = 0.05
REPS = 1000
MC = 3 * math.sqrt(ALPHA * (1 - ALPHA) / REPS)  # three Monte-Carlo standard errors


@pytest.mark.parametrize("kind", ["mean", "ratio"])
def test_aa_sequential_false_positive_rate_with_20_looks(kind):
    r = simulate(reps=REPS, looks=20, kind=kind, seed=21)
    assert r["sequential_any_look"] <= ALPHA + MC
    # the same data, tested naively at every look with a fixed-horizon z test, is inflated well past alpha
    assert r["naive_any_look"] > 2.5 * ALPHA
    # ... while a single fixed-horizon look at the end is fine
    assert abs(r["fixed_final_look"] - ALPHA) <= MC


def test_aa_ratio_metric_needs_the_unit_of_randomisation():
    """Errors per request in a user-randomised experiment: treating requests as independent over-rejects,
    the per-unit delta method does not."""
    r = simulate(reps=REPS, looks=1, block=2000, kind="ratio", seed=3)
    assert abs(r["fixed_final_look"] - ALPHA) <= MC
    assert r["request_level_final"] > ALPHA + MC


def test_power_fixed_horizon_matches_theory():
    n = 2000
    effect = (st.norm.ppf(1 - ALPHA / 2) + st.norm.ppf(0.8)) * math.sqrt(2 / n)
    r = simulate(reps=REPS, looks=20, block=n // 20, effect=effect, seed=5)
    assert abs(r["fixed_final_look"] - theory_power_fixed(effect, 1.0, n)) <= 0.05


def test_power_sequential_matches_theory_at_the_final_look():
    n, effect = 2000, 0.12
    theory = theory_power_sequential_final(effect, 1.0, n)
    assert 0.5 < theory < 0.95  # a point where a wrong width would show
    r = simulate(reps=REPS, looks=20, block=n // 20, effect=effect, seed=6)
    assert abs(r["sequential_final_look"] - theory) <= 0.05
    assert r["sequential_any_look"] >= r["sequential_final_look"]


def test_confidence_sequence_is_wider_than_fixed_and_its_p_value_inverts_it():
    var, n = 0.01**2, 4000
    hw = float(cs_halfwidth(var, n, 0.05))
    assert hw > 1.96 * 0.01
    p = float(sequential_p_value(hw, var, n))
    assert p == pytest.approx(0.05, rel=1e-6)
    assert float(sequential_p_value(0.0, var, n)) == 1.0
    # tightest near the tuning parameter: the ratio to the fixed interval is smallest around n* = 5000
    ratios = [float(cs_halfwidth(1.0 / m, m, 0.05)) / (1.96 * math.sqrt(1.0 / m)) for m in (500, 5000, 500000)]
    assert ratios[1] < ratios[0] and ratios[1] < ratios[2]


def test_srm_flags_a_one_point_skew_at_100k_units_and_not_a_clean_split():
    rng = np.random.default_rng(9)
    n = 100_000
    skewed = rng.binomial(n, 0.51, size=200)  # 51/49 instead of 50/50
    flagged = [srm_test([a, n - a], [1, 1])["mismatch"] for a in skewed]
    assert np.mean(flagged) >= 0.99
    clean = rng.binomial(n, 0.5, size=3000)
    false_alarms = np.mean([srm_test([a, n - a], [1, 1])["mismatch"] for a in clean])
    assert false_alarms <= 0.001 + 3 * math.sqrt(0.001 / 3000)
    # weights are honoured: 90/10 is clean under 9:1 and a mismatch under 1:1
    assert not srm_test([90_050, 9_950], [9, 1])["mismatch"]
    assert srm_test([90_050, 9_950], [1, 1])["mismatch"]
    # units in a zero-weight arm are always a mismatch
    assert srm_test([100, 100, 1], [1, 1, 0])["mismatch"]


def test_fixed_horizon_matches_scipy_welch():
    rng = np.random.default_rng(4)
    a = rng.lognormal(0, 1, 700)
    b = rng.lognormal(0.1, 1.2, 900)
    c = compare(ratio_estimate(a), ratio_estimate(b), alpha=0.05, sequential=False)
    ref = st.ttest_ind(b, a, equal_var=False)
    lo, hi = ref.confidence_interval(0.95)
    assert c["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert c["estimate"] == pytest.approx(b.mean() - a.mean(), rel=1e-12)
    assert (c["ci_low"], c["ci_high"]) == (pytest.approx(lo, rel=1e-9), pytest.approx(hi, rel=1e-9))
    # a ratio with one request per unit is the same thing
    ones_a, ones_b = np.ones_like(a), np.ones_like(b)
    c2 = compare(ratio_estimate(a, ones_a), ratio_estimate(b, ones_b), alpha=0.05, sequential=False)
    assert c2["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)


def test_delta_method_matches_a_bootstrap():
    rng = np.random.default_rng(8)
    x = 1 + rng.poisson(4, 3000).astype(float)
    y = rng.binomial(x.astype(int), rng.beta(0.5, 5, 3000)).astype(float)
    est = ratio_estimate(y, x)
    idx = rng.integers(0, x.size, size=(2000, x.size))
    boot = y[idx].sum(1) / x[idx].sum(1)
    assert est.value == pytest.approx(y.sum() / x.sum())
    assert math.sqrt(est.variance) == pytest.approx(boot.std(), rel=0.08)


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, None]) == [0.5, None]


def test_rank_test_is_mann_whitney():
    rng = np.random.default_rng(2)
    a, b = rng.exponential(1, 300), rng.exponential(1.3, 250)
    assert rank_test(a, b) == pytest.approx(st.mannwhitneyu(b, a, alternative="two-sided").pvalue, rel=1e-9)
    ta, tb = np.round(a, 1), np.round(b, 1)  # many ties
    assert rank_test(ta, tb) == pytest.approx(
        st.mannwhitneyu(tb, ta, alternative="two-sided", method="asymptotic").pvalue, rel=1e-9
    )
    assert rank_test([1.0], b) is None


def test_srm_p_value_is_scipys_chisquare():
    obs, w = [5030, 4890, 10100], [1, 1, 2]
    exp = np.asarray(w) / sum(w) * sum(obs)
    assert srm_test(obs, w)["p_value"] == pytest.approx(st.chisquare(obs, exp).pvalue, rel=1e-12)


def test_histogram_quantiles_within_bin_width():
    rng = np.random.default_rng(1)
    ns = rng.lognormal(math.log(20e6), 0.8, 50_000)  # durations in ns, ~20 ms
    bins = np.floor(np.log10(ns) * HIST_PER_DECADE).astype(int)
    ub, counts = np.unique(bins, return_counts=True)
    got = hist_quantiles(ub, counts, (0.5, 0.9, 0.99), hist_value_ms)
    want = np.quantile(ns / 1e6, [0.5, 0.9, 0.99])
    width = 10 ** (1 / HIST_PER_DECADE) - 1
    for g, w in zip(got, want, strict=False):
        assert abs(g / w - 1) <= width
