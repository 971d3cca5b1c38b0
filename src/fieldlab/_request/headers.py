"""Request headers, whatever the protocol: one getter per carrier, cookies, the inbound trace id.

The request path reads headers only through a :data:`HeaderGetter`: a function
taking a lower-case header name and returning the header's value as the UTF-8
text the client sent (the assignment contract hashes that text), or None.
Adapters build one per request from their framework's carrier:
:func:`environ_getter` for a WSGI ``environ`` or Django's ``request.META``
(PEP 3333 values are latin-1 decoded bytes, re-read as UTF-8),
:func:`asgi_getter` for an ASGI scope's ``headers`` (bytes, decoded only when
read), and :func:`mapping_getter` for headers already held as text by name.
Bytes that are not UTF-8 stay lone surrogates, so they give "no unit" later
(see :mod:`fieldlab._units`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping

from opentelemetry import trace

from .._units import header_text, wsgi_text

__all__ = [
    "HeaderGetter",
    "asgi_getter",
    "env_key",
    "environ_getter",
    "known_trace_id",
    "mapping_getter",
    "parse_cookies",
]

#: A request's header by lower-case name, as text; None when the request has none.
HeaderGetter = Callable[[str], "str | None"]

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")


@functools.lru_cache(maxsize=256)
def env_key(header: str) -> str:
    """The WSGI environ / Django META key of a header name (the few names a request path reads are cached)."""
    return "HTTP_" + header.upper().replace("-", "_")


def environ_getter(environ: Mapping[str, str]) -> HeaderGetter:
    """Headers of a WSGI ``environ`` (or Django ``request.META``), kept under ``HTTP_*`` keys."""

    def get(name: str) -> str | None:
        value = environ.get(env_key(name))
        return wsgi_text(value) if value else value

    return get


def asgi_getter(headers: Iterable[tuple[bytes, bytes]]) -> HeaderGetter:
    """Headers of an ASGI scope (``scope["headers"]``: lower-case byte names and values)."""
    by_name = dict(headers)

    def get(name: str) -> str | None:
        value = by_name.get(name.encode("latin-1"))
        return header_text(value) if value is not None else None

    return get


def mapping_getter(headers: Mapping[str, str]) -> HeaderGetter:
    """Headers already held as text by lower-case name."""
    return headers.get


def parse_cookies(header: str | None) -> dict[str, str]:
    """A ``Cookie`` header as a dict (first value of a name wins; quotes stripped)."""
    out: dict[str, str] = {}
    if not header:
        return out
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name and name not in out:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            out[name] = value
    return out


def known_trace_id(get: HeaderGetter) -> str | None:
    """The current span's trace id, else the inbound ``traceparent``'s; None when neither exists."""
    sc = trace.get_current_span().get_span_context()
    if sc.is_valid:
        return format(sc.trace_id, "032x")
    tp = get("traceparent")
    if tp:
        m = _TRACEPARENT.match(tp.strip().lower())
        if m and m.group(1) != "0" * 32:
            return m.group(1)
    return None
