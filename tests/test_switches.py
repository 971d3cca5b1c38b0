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


def test_switch_argument_mistakes_are_config_errors_naming_the_argument_like_fault_points() -> None:
    from fieldlab import ConfigError, faults

    with pytest.raises(ConfigError) as info:
        fieldlab.switch("")(lambda: None)
    assert info.value.path == "switch(key)" and info.value.fix
    with pytest.raises(ConfigError) as info:
        render.variant("")
    assert info.value.path == "switch('checkout-redesign').variant(name)"
    with pytest.raises(ConfigError) as info:
        fieldlab.switch("k")(42)  # type: ignore[arg-type]
    assert "not callable" in info.value.problem
    with pytest.raises(ConfigError):  # the fault points' argument errors are the same kind
        faults.fault_point("bad name!")


# ------------------------------------------- unknown experiment keys are reported, not swallowed
def _fresh_lab() -> Lab:
    return Lab([Experiment("checkout-redesign", {"control": 1, "treatment": 1})])


def _in_request(lab: Lab, fn):  # type: ignore[no-untyped-def]
    token = context.bind(context.start(lab, {"user": "alice"}))
    try:
        return fn()
    finally:
        context.reset(token)


@fieldlab.switch("checkout-redesing")  # misspelt on purpose
def render_typo() -> str:
    return "default"


@render_typo.variant("treatment")
def render_typo_new() -> str:
    return "new"


def test_unknown_experiment_key_is_warned_once_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    """variant/param/choose/assignment/@switch on a key the config lacks: default, WARNING once per key, counted."""
    import logging

    lab = _fresh_lab()
    reads = [
        lambda: fieldlab.variant("checkout-redesing", default="d"),
        lambda: fieldlab.param("checkout-redesing", "size", 7),
        lambda: fieldlab.choose("checkout-redesing", {"treatment": 1}, default=0),
        lambda: fieldlab.assignment("checkout-redesing"),
        render_typo,
    ]
    with caplog.at_level(logging.WARNING, logger="fieldlab"):
        got = [_in_request(lab, fn) for fn in reads for _ in range(3)]
    assert got == ["d"] * 3 + [7] * 3 + [0] * 3 + [None] * 3 + ["default"] * 3  # still the default, never raises
    assert lab.stats["unknown_experiments"] == 15
    warnings = [r for r in caplog.records if r.name == "fieldlab" and r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert "unknown experiment 'checkout-redesing'" in message and "did you mean 'checkout-redesign'?" in message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fieldlab"):
        _in_request(lab, lambda: fieldlab.variant("other-typo"))
    assert "unknown experiment 'other-typo'" in caplog.text  # once per key: a new key warns again
    assert lab.stats["errors"] == 0  # a known key read normally is neither
    assert _in_request(lab, lambda: fieldlab.variant("checkout-redesign")) in ("control", "treatment")
    assert lab.stats["unknown_experiments"] == 16


def test_unknown_key_flood_keeps_the_log_set_bounded(caplog: pytest.LogCaptureFixture) -> None:
    """Random keys by the thousand: each counted, at most UNKNOWN_KEYS_LOGGED named, memory bounded."""
    import logging

    from fieldlab.lab import UNKNOWN_KEYS_LOGGED

    lab = _fresh_lab()
    ctx = context.start(lab, {"user": "alice"})
    with caplog.at_level(logging.WARNING, logger="fieldlab"):
        for i in range(5000):
            assert context.read_from(ctx, f"random-{i}-" + "x" * 1000) is None
    assert lab.stats["unknown_experiments"] == 5000
    assert len(lab._unknown_logged) == UNKNOWN_KEYS_LOGGED
    assert all(len(k) <= 128 for k in lab._unknown_logged)
    assert len(caplog.records) == UNKNOWN_KEYS_LOGGED + 1  # one per named key, then one "further ones" line
    assert "further ones are only counted" in caplog.records[-1].getMessage()


def test_unknown_key_outside_a_request_is_the_default_without_a_report(caplog: pytest.LogCaptureFixture) -> None:
    """Outside a request there is no lab to check against: the default, silently (documented)."""
    import logging

    with caplog.at_level(logging.WARNING, logger="fieldlab"):
        assert fieldlab.variant("checkout-redesing", default="d") == "d"
        assert render_typo() == "default"
    assert caplog.records == []
