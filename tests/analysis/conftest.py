"""Shared fixtures: one SDK-written OTLP file of a two-arm experiment, reused by several tests."""

from __future__ import annotations

import pytest
from analysis_helpers import make_requests, write_otlp


@pytest.fixture(scope="session")
def ab_file(tmp_path_factory):
    """~1500 users, 1-6 requests each, some forced, some unexposed, with conversions and a numeric metric."""
    path = str(tmp_path_factory.mktemp("otlp") / "traces.jsonl")
    reqs = make_requests(
        1500,
        experiment="checkout",
        error_rate={"control": 0.02, "treatment": 0.05},
        latency_ms={"control": 20.0, "treatment": 24.0},
        conversion={"control": 0.10, "treatment": 0.14},
        exposed_share=0.9,
        forced_share=0.03,
        value_attr="app.cart.value",
        seed=11,
    )
    return write_otlp(path, reqs)
