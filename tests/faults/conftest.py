"""Fixtures for the fault-injection tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from faultkit import Otel

from fieldlab import faults


@pytest.fixture
def otel() -> Otel:
    return Otel()


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(faults.FAULTS_ENV, raising=False)
    faults.reset_stats()
    yield
    assert faults.active() == 0, "a fault slot leaked"
