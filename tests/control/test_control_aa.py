"""A/A safety: a variant identical to control is paused in at most 1 % of experiments over their whole life.

The simulation (``aa_simulation.py``) decides hourly with the real rules; the quick
test runs the two scenarios where the burn-rate windows fire (so only the
always-valid comparison protects the A/A variant), the slow one the table in
docs/guardrails.md. A companion checks the same machinery does pause a harmful
variant, so the A/A figure cannot come from rules that never pause.
"""

from __future__ import annotations

import pytest
from aa_simulation import SCENARIOS, simulate


@pytest.mark.parametrize("label,error_rate,slo", SCENARIOS[1:], ids=["at-threshold", "environment"])
def test_aa_variant_is_paused_in_at_most_one_percent_of_experiments(label, error_rate, slo) -> None:
    r = simulate(reps=300, days=14, error_rate=error_rate, slo=slo, check=150, seed=7)
    print(f"\n{label}: {r['paused']}/{r['reps']} A/A experiments paused over {r['days']} days of hourly decisions")
    assert r["checked_looks"] >= 100
    assert r["pause_rate"] <= 0.01


def test_the_same_rules_pause_a_harmful_variant_within_hours() -> None:
    r = simulate(reps=100, days=1, error_rate=0.001, slo=99.5, variant_error_rate=0.10, check=50, seed=8)
    assert r["pause_rate"] == 1.0
    hours = sorted(r["first_pause_hours"])
    assert hours[len(hours) // 2] <= 4 and hours[-1] <= 8  # 100 units per arm arrive in ~3 h at 36 an hour


@pytest.mark.slow
def test_aa_false_pause_rate_over_a_whole_life() -> None:
    """The docs' figure: 1000 experiments x 28 days per scenario (about 2.5 minutes)."""
    for label, error_rate, slo in SCENARIOS:
        r = simulate(reps=1000, days=28, error_rate=error_rate, slo=slo)
        print(f"\n{label}: {r['paused']}/1000 = {100 * r['pause_rate']:.2f} % paused")
        assert r["pause_rate"] <= 0.01
