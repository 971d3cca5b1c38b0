"""Code-path switches: one function name, one implementation per variant.

Decorate the default implementation with :func:`switch` and each alternative
with ``@<switch>.variant("name")``; calling the switch runs the implementation
of the current request's variant (which marks the experiment exposed), and the
default one outside a request, for units not in the experiment, or for
variants without an implementation. Async functions work the same way: the
call returns the chosen implementation's coroutine.

>>> @switch("checkout-redesign")
... def render_checkout(cart):
...     return "old"
>>> @render_checkout.variant("treatment")
... def render_checkout_new(cart):
...     return "new"
>>> render_checkout([])  # outside a request: the default
'old'
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .context import variant as _variant
from .errors import ConfigError

__all__ = ["switch", "Switch"]

F = TypeVar("F", bound=Callable[..., Any])


class Switch(Generic[F]):
    """The implementations of one switch, by variant; :func:`switch` dispatches through :meth:`resolve`.

    Argument mistakes raise :class:`~fieldlab.errors.ConfigError` naming the argument and the fix.
    """

    def __init__(self, key: str, default: F) -> None:
        if not isinstance(key, str) or not key:
            raise ConfigError(
                "switch(key)",
                f"expected an experiment key string, got {key!r}",
                "pass the key of an experiment in the config",
            )
        if not callable(default):
            raise ConfigError(f"switch({key!r})", f"{default!r} is not callable", "decorate a function")
        self.key = key
        self.default = default
        self.implementations: dict[str, Callable[..., Any]] = {}

    def variant(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register the implementation for variant ``name``; returns the function unchanged."""
        if not isinstance(name, str) or not name:
            raise ConfigError(
                f"switch({self.key!r}).variant(name)",
                f"expected a variant name string, got {name!r}",
                "pass the name of a variant of the experiment",
            )

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            if name in self.implementations:
                raise ConfigError(
                    f"switch({self.key!r}).variant({name!r})",
                    f"variant {name!r} already has an implementation ({self.implementations[name].__qualname__})",
                    "register each variant once",
                )
            self.implementations[name] = fn
            return fn

        return register

    def resolve(self) -> Callable[..., Any]:
        """The implementation the current request should run."""
        v = _variant(self.key)
        if v is None:
            return self.default
        return self.implementations.get(v, self.default)

    def __repr__(self) -> str:
        return f"<fieldlab.switch {self.key!r}: default {self.default.__qualname__}, variants {sorted(self.implementations)}>"


def switch(key: str) -> Callable[[F], F]:
    """Decorate a default implementation to switch on experiment ``key``.

    The result is a plain function (a coroutine function when the default is
    one, so frameworks that inspect views see the right kind) carrying
    ``.variant(name)``, ``.key``, ``.implementations`` and ``.switch``.
    """

    def decorate(fn: F) -> F:
        sw = Switch(key, fn)
        resolve = sw.resolve
        if inspect.iscoroutinefunction(fn):

            async def dispatch_async(*args: Any, **kwargs: Any) -> Any:
                return await resolve()(*args, **kwargs)

            wrapper: Any = functools.wraps(fn)(dispatch_async)
        else:

            def dispatch(*args: Any, **kwargs: Any) -> Any:
                return resolve()(*args, **kwargs)

            wrapper = functools.wraps(fn)(dispatch)
        wrapper.variant = sw.variant
        wrapper.key = key
        wrapper.implementations = sw.implementations
        wrapper.switch = sw
        return wrapper  # type: ignore[no-any-return]

    return decorate
