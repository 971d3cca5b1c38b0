"""The request context: defaults outside a request, isolation, propagation, exposure, hooks that fail."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import fieldlab
from fieldlab import Experiment, Lab, context


@pytest.fixture
def lab() -> Lab:
    return Lab(
        [
            Experiment("checkout-redesign", {"control": 1, "treatment": 1}, params={"treatment": {"steps": 1}}),
            Experiment("banner", {"off": 1, "on": 1}, exposure="on_assign"),
            Experiment("per-request", {"a": 1, "b": 1}, unit="request"),
            Experiment("old", {"a": 1, "b": 1}, status="concluded", winner="b"),
        ]
    )


def user_in(lab: Lab, key: str, variant: str) -> str:
    return next(f"u{i}" for i in range(10_000) if lab.assign(key, f"u{i}").variant == variant)


def test_outside_a_request_everything_is_the_default() -> None:
    assert fieldlab.current() is None
    assert fieldlab.variant("checkout-redesign") is None
    assert fieldlab.variant("checkout-redesign", "control") == "control"
    assert fieldlab.param("checkout-redesign", "steps", 3) == 3
    assert fieldlab.choose("checkout-redesign", {"treatment": "new"}, default="old") == "old"
    assert fieldlab.assignment("checkout-redesign") is None
    fieldlab.expose("checkout-redesign")  # a no-op, never an error


def test_reading_marks_exposed_and_on_assign_is_exposed_up_front(lab: Lab) -> None:
    user = user_in(lab, "checkout-redesign", "treatment")
    ctx = context.start(lab, {"user": user})
    assert ctx.exposed == ({"banner"} if lab.assign("banner", user).in_experiment else set())
    token = context.bind(ctx)
    try:
        assert fieldlab.variant("checkout-redesign") == "treatment"
        assert fieldlab.param("checkout-redesign", "steps") == 1
        assert fieldlab.choose("checkout-redesign", {"treatment": "new"}, "old") == "new"
        assert "checkout-redesign" in ctx.exposed
        assert fieldlab.variant("old") == "b"  # a concluded winner is served ...
        assert "old" not in ctx.exposed  # ... but is no exposure
        assert fieldlab.variant("missing", "d") == "d"
    finally:
        context.reset(token)
    assert fieldlab.current() is None


def test_threads_tasks_and_threadpools_see_their_own_request(lab: Lab) -> None:
    users = [f"user-{i}" for i in range(50)]

    async def one(user: str) -> tuple[str, str | None, str | None, str | None]:
        token = context.bind(context.start(lab, {"user": user}))
        try:
            await asyncio.sleep(0)
            in_task = await asyncio.create_task(asyncio.sleep(0, fieldlab.variant("checkout-redesign")))
            in_pool = await asyncio.get_running_loop().run_in_executor(
                None, contextvars.copy_context().run, fieldlab.variant, "checkout-redesign"
            )
            in_to_thread = await asyncio.to_thread(fieldlab.variant, "checkout-redesign")
            return user, in_task, in_pool, in_to_thread
        finally:
            context.reset(token)

    async def main() -> list[tuple[str, str | None, str | None, str | None]]:
        return await asyncio.gather(*(one(u) for u in users))

    for user, *seen in asyncio.run(main()):
        assert seen == [lab.assign("checkout-redesign", user).variant] * 3

    results: dict[str, str | None] = {}

    def request(user: str) -> None:
        token = context.bind(context.start(lab, {"user": user}))
        try:
            ctx = contextvars.copy_context()
            t = threading.Thread(
                target=ctx.run, args=(lambda: results.__setitem__(user, fieldlab.variant("checkout-redesign")),)
            )
            t.start()
            t.join()
        finally:
            context.reset(token)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(request, users))
    assert results == {u: lab.assign("checkout-redesign", u).variant for u in users}


def test_failing_hooks_are_swallowed(lab: Lab) -> None:
    ctx = context.start(lab, {"user": "x"})

    def boom(*args: object) -> None:
        raise RuntimeError("hook down")

    ctx.on_expose = boom
    ctx.on_event = boom
    ctx.on_fault = boom
    token = context.bind(ctx)
    try:
        assert fieldlab.variant("checkout-redesign") == lab.assign("checkout-redesign", "x").variant
        ctx.event("fieldlab.fault", {})
        ctx.fault_injected = True
        assert ctx.fault_injected is True
    finally:
        context.reset(token)


def test_rebind_unit_reassigns_only_that_kind(lab: Lab) -> None:
    ctx = context.start(lab, {"user": "x", "request": "0" * 31 + "1"})
    before = ctx.assignments["checkout-redesign"]
    tid = next(
        f"{i:032x}"
        for i in range(2, 10_000)
        if lab.assign("per-request", f"{i:032x}").variant != ctx.assignments["per-request"].variant
    )
    ctx.rebind_unit("request", tid)
    assert ctx.assignments["per-request"] == lab.assign("per-request", tid)
    assert ctx.assignments["checkout-redesign"] is before


def test_reset_with_a_foreign_token_clears_instead_of_raising(lab: Lab) -> None:
    token_box: list[contextvars.Token] = []
    contextvars.copy_context().run(lambda: token_box.append(context.bind(context.start(lab, {"user": "y"}))))
    context.bind(context.start(lab, {"user": "z"}))
    context.reset(token_box[0])
    assert fieldlab.current() is None
