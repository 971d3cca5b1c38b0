"""Builders of guardrail inputs for the tests: arms from per-unit draws, with trailing-window counts."""

from __future__ import annotations

import numpy as np

from fieldlab.control.budget import ArmData, Counts, Moments
from fieldlab.control.settings import DEFAULT_WINDOWS

__all__ = ["arm", "WINDOWS"]

#: Every window length of the default pairs, longest first.
WINDOWS = sorted({w.long for w in DEFAULT_WINDOWS} | {w.short for w in DEFAULT_WINDOWS}, reverse=True)


def arm(
    rng: np.random.Generator,
    units: int,
    error_rate: float,
    *,
    slow_rate: float = 0.0,
    window_error_rate: float | None = None,
    window_requests: int = 2000,
    conversion: float | None = None,
    metric: str = "app.checkout.completed",
) -> ArmData:
    """An arm whose ``units`` users made 1 + Poisson(3) requests each, failing at ``error_rate``.

    Every trailing window holds ``window_requests`` requests scaled by its length
    (the 6 h window holds 6x the 1 h one), failing at ``window_error_rate``
    (default: ``error_rate``); windows at a different rate model a change.
    """
    x = 1 + rng.poisson(3.0, units)
    y = rng.binomial(x, error_rate)
    s = rng.binomial(x, slow_rate)
    wr = error_rate if window_error_rate is None else window_error_rate
    windows = {}
    for w in WINDOWS:
        n = max(1, int(window_requests * w / 3600))
        windows[w] = Counts(
            units=max(1, n // 4), requests=n, errors=int(rng.binomial(n, wr)), slow=int(rng.binomial(n, slow_rate))
        )
    metrics = {}
    if conversion is not None:
        metrics[metric] = Moments.of_units(rng.random(units) < conversion)
    return ArmData(windows, Moments.of_units(y, x), Moments.of_units(s, x), metrics)
