"""The assignment contract v1, pinned by golden vectors and checked by properties."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import fieldlab
from fieldlab import Experiment, Holdout, Lab, Layer, bucket
from fieldlab._hashing import variant_boundaries

VECTORS = json.loads((Path(__file__).parent / "data" / "assignment_vectors.json").read_text("utf-8"))


@pytest.mark.parametrize("case", VECTORS["buckets"], ids=lambda c: f"{c['salt']}:{c['unit'][:10]}")
def test_bucket_golden_vectors(case):
    assert bucket(case["salt"], case["unit"]) == case["bucket"]


def test_issue_examples_are_pinned():
    assert bucket("checkout-redesign", "alice") == 2102
    assert bucket("checkout-redesign", "bob") == 8845
    assert bucket("checkout-redesign", "") == 4845
    assert bucket("search-ranking", "ünïcødé") == 6708
    assert bucket("x", "🙂") == 8563
    assert Experiment("e", {"a": 1, "b": 1, "c": 1}, traffic=10).ranges() == {
        "a": (0, 333),
        "b": (3333, 3666),
        "c": (6666, 6999),
    }


def test_hash32_matches_mmh3_unsigned():
    import mmh3

    assert fieldlab.hash32("checkout-redesign:alice") == mmh3.hash("checkout-redesign:alice", 0, signed=False)


@pytest.mark.parametrize("case", VECTORS["ranges"], ids=lambda c: f"{c['weights']}@{c['traffic']}")
def test_range_golden_vectors(case):
    exp = Experiment("e", [(f"v{i}", w) for i, w in enumerate(case["weights"])], traffic=case["traffic"])
    assert [list(r) for r in exp.ranges().values()] == case["ranges"]


@pytest.mark.parametrize("case", VECTORS["assignments"], ids=lambda c: f"{c['experiment']}:{c['unit']}")
def test_assignment_golden_vectors(case):
    lab = Lab([Experiment(case["experiment"], [tuple(v) for v in case["variants"]], traffic=case["traffic"])])
    a = lab.assign(case["experiment"], case["unit"])
    assert (a.variant, a.bucket, a.reason) == (case["variant"], case["bucket"], case["reason"])


units_text = st.text(max_size=40)


@given(salt=st.text(min_size=1, max_size=20), unit=units_text)
def test_bucket_deterministic_and_in_range(salt, unit):
    b = bucket(salt, unit)
    assert 0 <= b < 10_000
    assert b == bucket(salt, unit)
    import mmh3

    assert b == mmh3.hash((salt + ":" + unit).encode("utf-8"), 0, False) % 10_000


@given(unit=units_text)
def test_lab_assign_agrees_with_contract(unit):
    lab = Lab([Experiment("e", {"a": 1, "b": 3})])
    a = lab.assign("e", unit)
    if unit == "":
        assert a.reason == "no_unit" and a.variant is None
    else:
        assert a.bucket == bucket("e", unit)
        assert a.variant == ("a" if a.bucket < 2500 else "b")


@pytest.mark.parametrize("weights", [[1, 1], [1, 1, 1], [9, 1], [1, 2, 3, 4]])
def test_uniformity_chi_square(weights):
    """100k units per variant land in proportion to the weights (alpha = 0.001)."""
    names = [f"v{i}" for i in range(len(weights))]
    lab = Lab([Experiment("uniform", list(zip(names, weights, strict=False)))])
    n = 100_000 * len(weights)
    counts = dict.fromkeys(names, 0)
    for i in range(n):
        counts[lab.assign("uniform", f"u{i}").variant] += 1
    expected = [n * (hi - lo) / 10_000 for lo, hi in variant_boundaries(weights, 10_000)]
    p = stats.chisquare([counts[v] for v in names], expected).pvalue
    assert p > 0.001, (counts, expected)


def test_uniformity_detects_a_biased_split():
    """The chi-square check above can fail: a 50.5/49.5 split over 200k units is caught."""
    observed = [101_000, 99_000]
    assert stats.chisquare(observed, [100_000, 100_000]).pvalue < 0.001


@settings(max_examples=60)
@given(
    weights=st.lists(st.integers(0, 20), min_size=1, max_size=5).filter(lambda w: sum(w) > 0),
    t1=st.integers(0, 10_000),
    t2=st.integers(0, 10_000),
    unit=st.text(min_size=1, max_size=20),
)
def test_monotone_ramp(weights, t1, t2, unit):
    """Raising traffic only adds units: nobody changes variant or loses it."""
    low, high = sorted((t1, t2))
    names = [f"v{i}" for i in range(len(weights))]
    a_low = Lab([Experiment("ramp", list(zip(names, weights, strict=False)), traffic=low / 100)]).assign("ramp", unit)
    a_high = Lab([Experiment("ramp", list(zip(names, weights, strict=False)), traffic=high / 100)]).assign("ramp", unit)
    if a_low.variant is not None:
        assert a_high.variant == a_low.variant


def test_independence_of_two_salts():
    """Membership in one experiment says nothing about another (2x2 chi-square)."""
    lab = Lab([Experiment("first", {"a": 1, "b": 1}), Experiment("second", {"a": 1, "b": 1})])
    table = [[0, 0], [0, 0]]
    for i in range(100_000):
        u = f"user-{i}"
        table[lab.assign("first", u).variant == "b"][lab.assign("second", u).variant == "b"] += 1
    assert stats.chi2_contingency(table).pvalue > 0.001, table


def test_layer_exclusivity_and_coverage():
    layer = Layer("checkout")
    exps = [
        Experiment("left", {"a": 1, "b": 1}, layer="checkout", layer_range=[0, 30]),
        Experiment("right", {"a": 1, "b": 1}, layer="checkout", layer_range=[30, 100]),
    ]
    lab = Lab(exps, layers=[layer])
    both = neither = 0
    in_left = 0
    for i in range(20_000):
        u = f"u{i}"
        left, right = lab.assign("left", u), lab.assign("right", u)
        both += left.variant is not None and right.variant is not None
        neither += left.variant is None and right.variant is None
        in_left += left.variant is not None
        expected_left = bucket("checkout", u) < 3000
        assert (left.variant is not None) == expected_left
        assert (left.reason == "layer") == (not expected_left)
    assert both == 0 and neither == 0
    assert 0.28 < in_left / 20_000 < 0.32


@given(unit=st.text(min_size=1, max_size=30))
def test_holdout_exclusion(unit):
    lab = Lab(
        [Experiment("covered", {"a": 1, "b": 1}), Experiment("free", {"a": 1, "b": 1})],
        holdouts=[Holdout("h", 20, ["covered"])],
    )
    held = bucket("h", unit) < 2000
    covered, free = lab.assign("covered", unit), lab.assign("free", unit)
    assert (covered.reason == "holdout") == held
    if held:
        assert covered.variant is None and covered.holdout == "h"
    assert free.variant is not None


def test_salt_draws_a_fresh_population():
    a = Lab([Experiment("e", {"a": 1, "b": 1})])
    b = Lab([Experiment("e", {"a": 1, "b": 1}, salt="e-round-2")])
    same = sum(a.assign("e", f"u{i}").variant == b.assign("e", f"u{i}").variant for i in range(10_000))
    assert 4_700 < same < 5_300
