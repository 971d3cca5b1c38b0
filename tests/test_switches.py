"""Code-path switches: dispatch on the current variant, sync and async, with safe defaults."""

from __future__ import annotations

import asyncio
import inspect

import pytest

import fieldlab
from fieldlab import Experiment, FieldLabError, Lab, context

LAB = Lab([Experiment("checkout-redesign", {"control": 1, "treatment": 1, "compact": 1})])


def user_in(variant: str) -> str:
    return next(f"u{i}" for i in range(10_000) if LAB.assign("checkout-redesign", f"u{i}").variant == variant)


@fieldlab.switch("checkout-redesign")
def render(cart: list[str]) -> str:
    """Render the checkout."""
    return f"classic:{len(cart)}"


@render.variant("treatment")
def render_one_page(cart: list[str]) -> str:
    return f"one-page:{len(cart)}"


@fieldlab.switch("checkout-redesign")
async def price(total: int) -> int:
    return total


@price.variant("treatment")
async def price_discounted(total: int) -> int:
    return total - 1


class Shop:
    @fieldlab.switch("checkout-redesign")
    def greet(self) -> str:
        return "hello"

    @greet.variant("treatment")
    def greet_new(self) -> str:
        return "welcome"


def run_as(user: str, fn):  # type: ignore[no-untyped-def]
    ctx = context.start(LAB, {"user": user})
    token = context.bind(ctx)
    try:
        return fn(), ctx
    finally:
        context.reset(token)


def test_dispatch_follows_the_variant_and_marks_exposure() -> None:
    out, ctx = run_as(user_in("treatment"), lambda: render(["a"]))
    assert out == "one-page:1" and "checkout-redesign" in ctx.exposed
    assert run_as(user_in("control"), lambda: render(["a"]))[0] == "classic:1"
    assert run_as(user_in("compact"), lambda: render([]))[0] == "classic:0"  # no implementation: the default
    assert render(["a", "b"]) == "classic:2"  # outside a request
    assert render.__doc__ == "Render the checkout." and render.__name__ == "render"


def test_async_switches_stay_coroutine_functions() -> None:
    assert inspect.iscoroutinefunction(price)
    assert run_as(user_in("treatment"), lambda: asyncio.run(price(10)))[0] == 9
    assert asyncio.run(price(10)) == 10


def test_methods_bind_like_functions() -> None:
    assert run_as(user_in("treatment"), lambda: Shop().greet())[0] == "welcome"
    assert Shop().greet() == "hello"


def test_choose_picks_by_variant() -> None:
    assert run_as(user_in("compact"), lambda: fieldlab.choose("checkout-redesign", {"compact": 5}, default=9))[0] == 5
    assert run_as(user_in("control"), lambda: fieldlab.choose("checkout-redesign", {"compact": 5}, default=9))[0] == 9


def test_registering_a_variant_twice_is_a_clear_error() -> None:
    with pytest.raises(FieldLabError, match="already has an implementation"):
        @render.variant("treatment")
        def again(cart: list[str]) -> str:
            return ""
    with pytest.raises(FieldLabError, match="experiment key"):
        fieldlab.switch("")(lambda: None)
