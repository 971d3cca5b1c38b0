"""Fixtures of the adapter tests; the helpers are in ``serverkit`` (pytest puts this directory on sys.path)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from serverkit import LAB_PATH, MemoryOtel, memory_otel

from fieldlab import Lab


@pytest.fixture(scope="session")
def test_lab() -> Lab:
    return Lab.from_file(LAB_PATH, reload_interval=0)


@pytest.fixture
def otel() -> Iterator[MemoryOtel]:
    m = memory_otel()
    m.clear()
    yield m
    m.clear()
