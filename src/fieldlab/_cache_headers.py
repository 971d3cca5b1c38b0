"""Which caching headers a response needs so that no HTTP cache serves one unit's variant to another.

A response whose code read a variant depends on the unit the variant was
drawn for. A shared cache (Django's ``cache_page``, Flask-Caching, a reverse
proxy, a CDN) may only reuse it for requests that carry the same unit, so the
response must name, in ``Vary``, the request header the unit came from, or,
when fieldlab cannot name one (a callable resolver, the per-request trace id),
be kept out of shared caches with ``Cache-Control: private``.

This module is the pure decision, no framework and no request: adapters say
which unit kinds the request's code read and where each came from, and get
back the ``Vary`` and ``Cache-Control`` values to write, merged with what the
response already carries.

Sources, as strings:

* ``"cookie"`` (:data:`COOKIE`): fieldlab's visitor cookie, a ``cookie:NAME``
  resolver, the session cookie, a login kept in the session (Django's
  ``request.user``) -> ``Vary: Cookie``;
* ``"header:X-User-Id"`` (:func:`header_source`) -> ``Vary: X-User-Id``;
* ``"opaque"`` (:data:`OPAQUE`): a callable resolver, the ``request`` unit,
  or anything else -> ``Cache-Control: private``. A kind with no known source
  is opaque: when in doubt, keep the response out of shared caches.

>>> needs(["user"], {"user": "header:X-User-Id"})
CacheNeeds(vary=('X-User-Id',), private=False)
>>> response_headers(["visitor"], {"visitor": COOKIE}, vary="Accept-Encoding", cache_control="public, max-age=60")
{'Vary': 'Accept-Encoding, Cookie'}
>>> response_headers(["user"], {"user": OPAQUE}, cache_control="public, max-age=60")
{'Cache-Control': 'max-age=60, private'}
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "COOKIE",
    "OPAQUE",
    "CacheNeeds",
    "header_source",
    "merge_cache_control",
    "merge_vary",
    "needs",
    "response_headers",
    "source_for",
]

#: The unit came from a cookie: the visitor cookie, a ``cookie:`` resolver, the session, a session login.
COOKIE = "cookie"
#: fieldlab cannot name what the unit came from (a callable resolver, the ``request`` unit).
OPAQUE = "opaque"
_HEADER_PREFIX = "header:"
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an RFC 9110 token: a header field name


def header_source(name: str) -> str:
    """The source of a unit read from request header ``name`` (``"header:X-User-Id"``)."""
    return _HEADER_PREFIX + name.strip()


def source_for(how: str, name: str = "") -> str:
    """The source of a compiled unit resolver, by how it reads the request.

    ``how`` is ``header`` (with the header ``name``), ``cookie``, ``visitor``,
    ``call`` or ``request``; an adapter whose framework default is a callable
    it knows to be cookie-based (Django's session and ``request.user``) says
    :data:`COOKIE` itself instead.
    """
    if how == "header" and name:
        return header_source(name)
    if how in ("cookie", "visitor"):
        return COOKIE
    return OPAQUE


@dataclass(frozen=True)
class CacheNeeds:
    """What a response needs: header names to add to ``Vary``, and whether it must be ``private``."""

    vary: tuple[str, ...] = ()
    private: bool = False

    def __bool__(self) -> bool:
        return bool(self.vary) or self.private


def needs(read_kinds: Iterable[str], sources: Mapping[str, str], new_kinds: Iterable[str] = ()) -> CacheNeeds:
    """The caching needs of a response whose code read variants of these unit kinds.

    ``sources`` maps unit kind to its source (see the module docs); a kind
    missing from it, or with a source that is not a cookie or a valid header
    name, makes the response private. Header names keep the first spelling
    seen and are never repeated (compared case-insensitively).

    ``new_kinds`` are kinds whose id this response creates (a new visitor
    cookie, a session just created): the request did not carry the id, so a
    cache keyed on its ``Cookie`` header would hand this response to every
    other request without one, each of which gets an id of its own. A read of
    such a kind also makes the response private.
    """
    vary: list[str] = []
    seen: set[str] = set()
    new = set(new_kinds)
    private = False
    for kind in read_kinds:
        if kind in new:
            private = True
        source = sources.get(kind, OPAQUE)
        if source == COOKIE:
            name = "Cookie"
        elif source.startswith(_HEADER_PREFIX) and _TOKEN.match(source[len(_HEADER_PREFIX) :].strip()):
            name = source[len(_HEADER_PREFIX) :].strip()
        else:
            private = True
            continue
        if name.lower() not in seen:
            seen.add(name.lower())
            vary.append(name)
    return CacheNeeds(tuple(vary), private)


def _split(value: str | Iterable[str] | None) -> list[str]:
    """The comma-separated items of one header value or of several header lines (empty items dropped)."""
    if value is None:
        return []
    lines = [value] if isinstance(value, str) else list(value)
    return [item.strip() for line in lines for item in line.split(",") if item.strip()]


def merge_vary(existing: str | Iterable[str] | None, names: Iterable[str]) -> str | None:
    """``existing`` ``Vary`` (one value or several header lines) with ``names`` added.

    Existing names keep their order and spelling; a name already there in any
    case is not added again. ``Vary: *`` already varies on everything and stays
    ``*``. Returns None when there is nothing to write (no existing value and
    nothing to add).
    """
    items = _split(existing)
    if any(item == "*" for item in items):
        return "*"
    have = {item.lower() for item in items}
    for name in names:
        name = name.strip()
        if name == "*":
            return "*"
        if name and name.lower() not in have:
            have.add(name.lower())
            items.append(name)
    return ", ".join(items) if items else None


def _directive(item: str) -> str:
    return item.split("=", 1)[0].strip().lower()


def merge_cache_control(existing: str | Iterable[str] | None, private: bool) -> str | None:
    """``existing`` ``Cache-Control`` made safe for a per-unit response, or as it was when ``private`` is False.

    * nothing there: ``private``;
    * ``no-store`` already keeps every cache out: unchanged;
    * ``private`` without field names: unchanged; ``private="Set-Cookie"``
      (only those fields are private, the rest may be shared) becomes ``private``;
    * ``public`` contradicts ``private`` and is removed; other directives
      (``max-age``, ``no-cache``, ``must-revalidate``, ``s-maxage``...) stay,
      as they still mean what they said for the browser's own cache.

    Returns None when there is nothing to write.
    """
    items = _split(existing)
    if not private:
        return ", ".join(items) if items else None
    names = [_directive(item) for item in items]
    if "no-store" in names:
        return ", ".join(items)
    if any(item.strip().lower() == "private" for item in items):
        return ", ".join(items)
    kept = [item for item, name in zip(items, names, strict=False) if name not in ("public", "private")]
    kept.append("private")
    return ", ".join(kept)


def response_headers(
    read_kinds: Iterable[str],
    sources: Mapping[str, str],
    *,
    new_kinds: Iterable[str] = (),
    vary: str | Iterable[str] | None = None,
    cache_control: str | Iterable[str] | None = None,
) -> dict[str, str]:
    """The ``Vary`` / ``Cache-Control`` values to set on a response (replacing the existing ones).

    ``read_kinds`` are the unit kinds of the experiments the request's code read
    (an empty iterable: the response read no variant and is left alone, the
    result is ``{}``); ``vary`` and ``cache_control`` are the response's current
    values (one string, several header lines, or None); ``new_kinds`` as in
    :func:`needs`. Only headers whose value changes are returned.
    """
    wanted = needs(read_kinds, sources, new_kinds)
    out: dict[str, str] = {}
    if not wanted:
        return out
    if wanted.vary:
        merged = merge_vary(vary, wanted.vary)
        if merged is not None and merged != ", ".join(_split(vary)):
            out["Vary"] = merged
    if wanted.private:
        merged_cc = merge_cache_control(cache_control, True)
        if merged_cc is not None and merged_cc != ", ".join(_split(cache_control)):
            out["Cache-Control"] = merged_cc
    return out
