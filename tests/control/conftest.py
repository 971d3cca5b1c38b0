"""Fixtures of the guardrail tests: a real redis-server, started per test and killed at teardown."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis_kit import NO_REDIS, REDIS_BIN, RedisServer


@pytest.fixture
def redis_server(tmp_path) -> Iterator[RedisServer]:
    if REDIS_BIN is None:
        pytest.skip(NO_REDIS)
    server = RedisServer(str(tmp_path))
    server.start()
    try:
        yield server
    finally:
        server.stop()
