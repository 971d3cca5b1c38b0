"""Cache headers for a response whose code read variants: the request path's side of :mod:`fieldlab._cache_headers`.

The context records every experiment the request's code read
(``ctx.read_keys``: through ``variant``/``param``/``choose``/``assignment``,
``@switch``, template helpers, fault points), in the experiment or not: a
default page cached for a unit outside the experiment would be served to one
inside it just the same. :func:`response_headers` turns that into the
``Vary`` / ``Cache-Control`` values to write, using where each unit came from
(``ctx.unit_sources``, set from the adapter's configuration when its
``cache_headers`` option is on). Reads of a paused experiment or of a
concluded one's winner give every unit the same page and need nothing; an
override (a QA token) makes the response private. Adapters call
:func:`response_headers` (or :func:`patch_header_list` for WSGI/ASGI header
lists) just before the response goes out; nothing here raises.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .._assignment import CONCLUDED, OVERRIDE, PAUSED
from .._cache_headers import response_headers as _decide
from ..context import RequestContext
from .failures import failed

__all__ = ["MEMO_SIZE", "Sources", "patch_header_list", "read_unit_kinds", "response_headers"]

_SAME_FOR_EVERYONE = (PAUSED, CONCLUDED)
#: Decisions a :class:`Sources` keeps (read kinds, new kinds and the response's headers -> headers to set).
MEMO_SIZE = 256


class Sources(dict[str, str]):
    """Unit kind -> source for one adapter plan, with the decisions already made for it.

    Most responses of an app repeat a few patterns (the same kinds read, the
    same headers already set), so the decision is made once per pattern.
    """

    def __init__(self, sources: Mapping[str, str]) -> None:
        super().__init__(sources)
        self.memo: dict[Any, dict[str, str]] = {}


_OVERRIDDEN = "\0override"  # no unit kind: its source is unknown, so the response is private


def read_unit_kinds(ctx: RequestContext) -> set[str]:
    """The unit kinds the response depends on, from the experiments the request read."""
    kinds: set[str] = set()
    experiments = ctx.lab.experiments
    assignments = ctx.assignments
    for key in ctx.read_keys:
        a = assignments.get(key)
        if a is not None and a.reason in _SAME_FOR_EVERYONE:
            continue
        if a is not None and a.reason == OVERRIDE:
            kinds.add(_OVERRIDDEN)
        exp = experiments.get(key)
        kinds.add(exp.unit if exp is not None else _OVERRIDDEN)  # removed by a reload: unknown, private
    return kinds


def response_headers(
    ctx: RequestContext | None, vary: str | Iterable[str] | None, cache_control: str | Iterable[str] | None
) -> dict[str, str]:
    """The ``Vary`` / ``Cache-Control`` values to set (replacing the existing ones); ``{}``: leave them alone.

    The result may be shared with other requests: read it, do not change it.

    ``vary`` and ``cache_control`` are the response's current values (one
    string, several header lines, or None). Empty when the adapter's
    ``cache_headers`` option is off or the request read no variant.
    """
    if ctx is None or ctx.unit_sources is None or not ctx.read_keys:
        return {}
    try:
        kinds = read_unit_kinds(ctx)
        if not kinds:
            return {}
        new = set(ctx.new_unit_kinds)
        if ctx.new_visitor_id is not None:
            new.add("visitor")
        sources = ctx.unit_sources
        memo = getattr(sources, "memo", None)
        if memo is None:
            return _decide(sorted(kinds), sources, new_kinds=new, vary=vary, cache_control=cache_control)
        key = (frozenset(kinds), frozenset(new), _frozen(vary), _frozen(cache_control))
        found = memo.get(key)
        if found is None:
            found = _decide(sorted(kinds), sources, new_kinds=new, vary=vary, cache_control=cache_control)
            if len(memo) >= MEMO_SIZE:
                memo.clear()
            memo[key] = found
        return found  # shared: callers only read it
    except Exception:
        failed("cache_header_errors", "cache headers")
        return {}


def _frozen(value: str | Iterable[str] | None) -> str | tuple[str, ...] | None:
    return value if value is None or isinstance(value, str) else tuple(value)


def patch_header_list(ctx: RequestContext | None, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``headers`` (WSGI-style ``(name, value)`` pairs) with the cache headers ``ctx`` needs; the same list if none."""
    if ctx is None or ctx.unit_sources is None or not ctx.read_keys:
        return headers
    vary = [v for k, v in headers if k.lower() == "vary"]
    cache_control = [v for k, v in headers if k.lower() == "cache-control"]
    wanted = response_headers(ctx, vary, cache_control)
    if not wanted:
        return headers
    lower = {name.lower() for name in wanted}
    return [(k, v) for k, v in headers if k.lower() not in lower] + list(wanted.items())
