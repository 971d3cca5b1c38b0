"""The fault engine with contexts bound by hand: latency, exceptions, aborts, recording, overrides."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from faultkit import bound, make_lab, slow_db, unit_in

import fieldlab
from fieldlab import attributes as A
from fieldlab import faults

FAULT_S = 0.15  # the configured delay
SLACK = 0.01  # sleep() may return a hair early on some clocks


@fieldlab.fault_point("db.query")
def query() -> str:
    return "rows"


@fieldlab.fault_point("db.query")
async def aquery() -> str:
    return "rows"


@fieldlab.fault_point("cache.get")
def cache_get() -> str:
    return "hit"


def timed(fn, *args):  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    out = fn(*args)
    return out, time.monotonic() - t0


def test_sync_latency_only_in_fault_variant_and_only_at_named_point() -> None:
    lab = make_lab()
    slow, control = unit_in(lab, "slow-db", "slow"), unit_in(lab, "slow-db", "control")
    with bound(lab, slow) as ctx:
        out, dt = timed(query)
        assert out == "rows"
        assert dt >= FAULT_S - SLACK
        assert ctx.fault_injected
        _, dt_other = timed(cache_get)  # a different point: nothing
        assert dt_other < 0.05
    with bound(lab, control) as ctx:
        _, dt = timed(query)
        assert dt < 0.05 and not ctx.fault_injected and not ctx.faults
    _, dt = timed(query)  # outside any request
    assert dt < 0.05
    assert faults.stats()["injected"] == 1


def test_sync_with_block() -> None:
    lab = make_lab()
    with bound(lab, unit_in(lab, "slow-db", "slow")) as ctx:
        t0 = time.monotonic()
        with fieldlab.fault_point("db.query"):
            pass
        assert time.monotonic() - t0 >= FAULT_S - SLACK
        assert ctx.faults[0][A.FAULT_DELAY_MS] == 150.0


def test_async_latency_awaits_and_never_blocks_the_loop() -> None:
    lab = make_lab()
    slow = unit_in(lab, "slow-db", "slow")

    async def one(use_block: bool) -> float:
        with bound(lab, slow):
            t0 = time.monotonic()
            if use_block:
                async with fieldlab.fault_point("db.query"):
                    pass
            else:
                assert await aquery() == "rows"
            return time.monotonic() - t0

    async def main() -> tuple[list[float], int, float]:
        ticks = 0
        stop = False

        async def ticker() -> None:
            nonlocal ticks
            while not stop:
                ticks += 1
                await asyncio.sleep(0.01)

        t = asyncio.create_task(ticker())
        t0 = time.monotonic()
        delays = await asyncio.gather(*(one(i % 2 == 0) for i in range(6)))
        total = time.monotonic() - t0
        stop = True
        await t
        return list(delays), ticks, total

    delays, ticks, total = asyncio.run(main())
    assert all(d >= FAULT_S - SLACK for d in delays)
    assert total < 2 * FAULT_S, "six concurrent faulted calls ran one after another: the loop was blocked"
    assert ticks >= 5, "the event loop did not run while faults were delaying"
    assert faults.stats()["injected"] == 6


def test_sync_point_on_event_loop_thread_skips_latency_instead_of_blocking() -> None:
    lab = make_lab()
    slow = unit_in(lab, "slow-db", "slow")

    async def main() -> float:
        with bound(lab, slow) as ctx:
            t0 = time.monotonic()
            query()  # sync point called from a coroutine
            assert not ctx.fault_injected
            return time.monotonic() - t0

    assert asyncio.run(main()) < 0.05
    assert faults.stats()["skipped_in_event_loop"] == 1

    # The same sync point in a worker thread (as Starlette runs sync views) does sleep.
    async def threaded() -> float:
        with bound(lab, slow):
            t0 = time.monotonic()
            await asyncio.to_thread(query)
            return time.monotonic() - t0

    assert asyncio.run(threaded()) >= FAULT_S - SLACK


def test_exception_fault_raises_registered_class_and_is_recorded(otel) -> None:  # type: ignore[no-untyped-def]
    faults.register_exception("db_timeout", TimeoutError)
    try:
        exp = slow_db({"exception": "db_timeout", "message": "db timed out (injected)"})
        lab = make_lab(exp)
        with bound(lab, unit_in(lab, "slow-db", "slow"), otel=otel) as ctx:
            with pytest.raises(TimeoutError, match="db timed out"):
                query()
            assert ctx.fault_injected
        with bound(lab, unit_in(lab, "slow-db", "control")):
            assert query() == "rows"
        (span,) = otel.spans()
        (event,) = span.events
        assert event.name == A.FAULT_EVENT
        assert dict(event.attributes) == {
            A.FAULT_POINT: "db.query",
            A.FAULT_KIND: "exception",
            A.FAULT_EXPERIMENT: "slow-db",
            A.FAULT_VARIANT: "slow",
            A.FAULT_EXCEPTION: "db_timeout",
        }
    finally:
        faults.unregister_exception("db_timeout")


def test_default_exception_is_injected_fault_with_its_origin() -> None:
    lab = make_lab(slow_db({"kind": "exception"}))
    with bound(lab, unit_in(lab, "slow-db", "slow")):
        with pytest.raises(fieldlab.InjectedFault) as info:
            query()
    assert (info.value.point, info.value.experiment, info.value.variant) == ("db.query", "slow-db", "slow")


def test_unregistered_exception_name_injects_nothing_and_is_counted() -> None:
    lab = make_lab(slow_db({"exception": "never_registered"}))
    with bound(lab, unit_in(lab, "slow-db", "slow")) as ctx:
        assert query() == "rows"
        assert not ctx.fault_injected
    assert faults.stats()["skipped_unknown_exception"] == 1


def test_register_exception_refuses_what_is_not_an_exception() -> None:
    with pytest.raises(fieldlab.ConfigError):
        faults.register_exception("exit", SystemExit)  # type: ignore[arg-type]
    with pytest.raises(fieldlab.ConfigError):
        faults.register_exception("InjectedFault", ValueError)
    with pytest.raises(fieldlab.ConfigError):
        faults.register_exception("bad name!", ValueError)


def test_abort_for_answers_the_fault_variant_only(otel) -> None:  # type: ignore[no-untyped-def]
    exp = fieldlab.Experiment(
        "flaky-api", {"control": 1, "down": 1}, traffic=4, faults={"down": [{"status": 503, "body": "try later"}]}
    )
    lab = make_lab(exp)
    with bound(lab, unit_in(lab, "flaky-api", "down"), otel=otel) as ctx:
        assert faults.abort_for(ctx) == (503, b"try later")
        assert ctx.fault_injected
        assert query() == "rows"  # aborts are not code-point faults
    with bound(lab, unit_in(lab, "flaky-api", "control")) as ctx:
        assert faults.abort_for(ctx) is None
    assert faults.abort_for(None) is None
    (span,) = otel.spans()
    assert [dict(e.attributes) for e in span.events] == [
        {
            A.FAULT_POINT: "http",
            A.FAULT_KIND: "abort",
            A.FAULT_EXPERIMENT: "flaky-api",
            A.FAULT_VARIANT: "down",
            A.FAULT_STATUS: 503,
        }
    ]


def test_latency_and_exception_at_one_point_both_apply(otel) -> None:  # type: ignore[no-untyped-def]
    lab = make_lab(slow_db({"latency_ms": 60}, extra_faults=[{"point": "db.query", "exception": "InjectedFault"}]))
    with bound(lab, unit_in(lab, "slow-db", "slow"), otel=otel):
        t0 = time.monotonic()
        with pytest.raises(fieldlab.InjectedFault):
            query()
        assert time.monotonic() - t0 >= 0.06 - SLACK
    assert [e.attributes[A.FAULT_KIND] for e in otel.spans()[0].events] == ["latency", "exception"]


@pytest.mark.parametrize("how", ["held_out", "paused", "concluded", "not_targeted"])
def test_no_fault_unless_split_or_override(how: str) -> None:
    kw: dict = {}
    holdouts = []
    if how == "paused":
        kw["status"] = "paused"
    elif how == "concluded":
        kw.update(status="concluded", winner="slow")
    elif how == "not_targeted":
        kw["targeting"] = {"attr": "country", "op": "eq", "value": "DE"}
    elif how == "held_out":
        holdouts = [fieldlab.Holdout("everyone", 100, ["slow-db"])]
    lab = fieldlab.Lab([slow_db(**kw)], holdouts=holdouts, faults={"enabled": True})
    probe = make_lab()  # same salt and ranges: the unit would be in "slow" by its bucket
    unit = unit_in(probe, "slow-db", "slow")
    with bound(lab, unit) as ctx:
        _, dt = timed(query)
        assert dt < 0.05 and not ctx.fault_injected
        if how == "concluded":
            assert ctx.assignments["slow-db"].variant == "slow"  # the winner, yet no fault
    assert faults.stats()["injected"] == 0


def test_only_signed_overrides_force_a_fault_variant() -> None:
    lab = make_lab(secret="s3cret")
    control = unit_in(lab, "slow-db", "control")
    token = lab.make_token("slow-db", "slow", 600)
    forged = fieldlab.make_token("other-secret", "slow-db", "slow", 600)
    with bound(lab, control, overrides=[forged]) as ctx:
        _, dt = timed(query)
        assert dt < 0.05 and not ctx.fault_injected
    with bound(lab, control, overrides=[token]) as ctx:
        assert ctx.assignments["slow-db"].reason == "override"
        _, dt = timed(query)
        assert dt >= FAULT_S - SLACK and ctx.fault_injected


def test_inject_decorator_applies_in_its_variant_only() -> None:
    lab = make_lab(fieldlab.Experiment("slow-db", {"control": 1, "slow": 1}, traffic=4))  # no configured faults

    @fieldlab.inject(experiment="slow-db", variant="slow", latency_ms=80)
    def work() -> int:
        return 7

    with bound(lab, unit_in(lab, "slow-db", "slow")) as ctx:
        out, dt = timed(work)
        assert out == 7 and dt >= 0.08 - SLACK
        assert ctx.faults[0][A.FAULT_POINT].endswith("work")
    with bound(lab, unit_in(lab, "slow-db", "control")):
        _, dt = timed(work)
        assert dt < 0.05

    async def in_block() -> float:
        with bound(lab, unit_in(lab, "slow-db", "slow")):
            t0 = time.monotonic()
            async with fieldlab.inject(experiment="slow-db", variant="slow", point="script.step", latency_ms=80):
                pass
            return time.monotonic() - t0

    assert asyncio.run(in_block()) >= 0.08 - SLACK


def test_engine_failure_means_no_fault_counted_and_logged_once(monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    lab = make_lab()
    slow = unit_in(lab, "slow-db", "slow")

    def boom(*a, **k):  # type: ignore[no-untyped-def]
        raise RuntimeError("draw failed")

    monkeypatch.setattr(faults, "_draw_delay", boom)
    with bound(lab, slow) as ctx:
        for _ in range(3):
            _, dt = timed(query)
            assert dt < 0.05
        assert not ctx.fault_injected
    assert faults.stats()["errors"] == 3
    assert sum("fault engine failed" in r.getMessage() for r in caplog.records) == 1


def test_failing_exception_factory_injects_nothing() -> None:
    def factory(msg: str) -> Exception:
        raise ValueError("bad factory")

    faults.register_exception("broken", factory)
    try:
        lab = make_lab(slow_db({"exception": "broken"}))
        with bound(lab, unit_in(lab, "slow-db", "slow")):
            assert query() == "rows"
        assert faults.stats()["errors"] == 1
    finally:
        faults.unregister_exception("broken")


def test_threads_see_only_their_own_request() -> None:
    lab = make_lab()
    slow, control = unit_in(lab, "slow-db", "slow"), unit_in(lab, "slow-db", "control")
    results: dict[str, float] = {}

    def run(unit: str) -> None:
        with bound(lab, unit):
            results[unit] = timed(query)[1]

    threads = [threading.Thread(target=run, args=(u,)) for u in (slow, control)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[slow] >= FAULT_S - SLACK and results[control] < 0.05
