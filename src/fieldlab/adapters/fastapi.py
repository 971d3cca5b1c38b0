"""fieldlab for FastAPI: the ASGI middleware plus a dependency that hands a view its assignments.

>>> app.add_middleware(FieldLabMiddleware, lab=lab, units={"user": "header:X-User-Id"})  # doctest: +SKIP
>>> @app.get("/checkout")                                                             # doctest: +SKIP
... async def checkout(ab: Assignments = Depends(assignments)):
...     return {"layout": ab.choose("checkout-redesign", {"treatment": "one-page"}, "classic")}
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from .._assignment import Assignment
from ..context import RequestContext, current, read_from
from .asgi import SESSION_KEY, FieldLabMiddleware

__all__ = ["SESSION_KEY", "Assignments", "FieldLabMiddleware", "assignments"]


class Assignments(Mapping[str, str]):
    """The current request's variants, read through a FastAPI dependency.

    As a mapping it holds ``experiment -> variant`` for the experiments the
    unit is in; reading an entry (or calling :meth:`variant`, :meth:`param`,
    :meth:`choose`) marks that experiment exposed. Outside fieldlab it is empty
    and every method returns its default.
    """

    __slots__ = ("context",)

    def __init__(self, context: RequestContext | None) -> None:
        self.context = context

    def assignment(self, key: str) -> Assignment | None:
        return read_from(self.context, key)

    def variant(self, key: str, default: str | None = None) -> str | None:
        a = self.assignment(key)
        return default if a is None or a.variant is None else a.variant

    def param(self, key: str, name: str, default: Any = None) -> Any:
        a = self.assignment(key)
        return default if a is None or a.variant is None else a.params.get(name, default)

    def choose(self, key: str, options: Mapping[str, Any], default: Any = None) -> Any:
        v = self.variant(key)
        return default if v is None else options.get(v, default)

    def _keys(self) -> list[str]:
        ctx = self.context
        if ctx is None:
            return []
        return [k for k, a in ctx.assignments.items() if a.in_experiment]

    def __getitem__(self, key: str) -> str:
        v = self.variant(key)
        if v is None:
            raise KeyError(key)
        return v

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def __repr__(self) -> str:
        ctx = self.context
        shown = {k: ctx.assignments[k].variant for k in self._keys()} if ctx else {}
        return f"Assignments({shown!r})"


async def assignments() -> Assignments:
    """FastAPI dependency: ``ab: Assignments = Depends(assignments)``."""
    return Assignments(current())
