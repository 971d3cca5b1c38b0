"""One internal-error mechanism: counted by name, logged once on the ``fieldlab`` logger, visible in fieldlab.stats()."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import fieldlab
from fieldlab import _internal, _request, context, faults
from fieldlab._request import failures
from fieldlab.lab import Lab


def test_stats_is_public_and_lists_every_process_wide_counter() -> None:
    assert "stats" in fieldlab.__all__
    counters = fieldlab.stats()
    assert isinstance(counters, dict) and all(isinstance(v, int) for v in counters.values())
    for name in (
        "request.resolver_errors",
        "request.baggage_rejected",
        "faults.injected",
        "faults.errors",
        "context.hook_errors",
        "killswitch.poll_errors",
        "telemetry.recorder_errors",
    ):
        assert name in counters, name


def test_the_module_views_are_the_same_counters_as_fieldlab_stats() -> None:
    before = fieldlab.stats()
    failures.failed("resolver_errors", "stats-view-test")
    faults._internal_error("stats-view-test")
    after = fieldlab.stats()
    assert (
        after["request.resolver_errors"] == before["request.resolver_errors"] + 1 == _request.stats["resolver_errors"]
    )
    assert after["faults.errors"] == before["faults.errors"] + 1 == faults.stats()["errors"]


def test_a_failure_is_counted_every_time_and_logged_once_per_tag(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fieldlab"):
        for _ in range(3):
            try:
                raise RuntimeError("hook down")
            except RuntimeError:
                context._hook_failed("once-test")
    assert fieldlab.stats()["context.hook_errors"] >= 3
    lines = [r for r in caplog.records if "telemetry once-test hook failed" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING and lines[0].name == "fieldlab"
    assert lines[0].exc_info is not None  # the traceback of the first failure


def test_fault_messages_use_a_child_of_the_fieldlab_logger(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fieldlab"):  # the parent's level covers the child
        try:
            raise RuntimeError("engine down")
        except RuntimeError:
            faults._internal_error("child-logger-test")
    (line,) = [r for r in caplog.records if "fault engine failed in child-logger-test" in r.getMessage()]
    assert line.name == "fieldlab.faults" and logging.getLogger("fieldlab.faults").propagate


def test_the_helper_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    class BrokenLogger(logging.Logger):
        def warning(self, *a: Any, **k: Any) -> None:
            raise RuntimeError("logging down")

    _internal.failed("test", "broken_logger", "never-raises", "message %s", "x", logger=BrokenLogger("x"))
    assert fieldlab.stats()["test.broken_logger"] == 1


def test_the_logged_tags_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_internal, "_logged", set())
    for i in range(_internal.MAX_TAGS + 50):
        _internal.log_once(f"bounded-{i}", "fieldlab: test %d", i, logger=logging.getLogger("fieldlab.test-bounded"))
    assert len(_internal._logged) == _internal.MAX_TAGS


def test_lab_stats_stay_per_lab() -> None:
    lab = Lab([fieldlab.Experiment("e", {"a": 1})])
    lab.assign("missing", "alice")
    assert lab.stats["unknown_experiments"] == 1
    assert Lab([fieldlab.Experiment("e", {"a": 1})]).stats["unknown_experiments"] == 0
