"""The one request path every adapter shares (private; adapters are its only callers).

One module per job: :mod:`.options` (the typed adapter options and the
per-adapter :class:`AdapterConfig`), :mod:`.headers` (a header getter per
protocol, cookies, the inbound trace id), :mod:`.prepared` (the per-unit-ids
cache of evaluations), :mod:`.baggage` (signed W3C baggage in and out),
:mod:`.path` (:func:`begin` / :func:`end` of a request), :mod:`.caching` (the
``Vary`` / ``Cache-Control`` a response that read variants needs) and :mod:`.failures`
(what went wrong, counted and logged once).
"""

from __future__ import annotations

from .baggage import (
    BAGGAGE_TTL_SECONDS,
    baggage_header,
    outbound_baggage,
    verify_baggage,
)
from .caching import patch_header_list, response_headers
from .failures import stats
from .headers import (
    HeaderGetter,
    asgi_getter,
    env_key,
    environ_getter,
    mapping_getter,
    parse_cookies,
)
from .options import (
    DEFAULT_OVERRIDE_COOKIE,
    DEFAULT_OVERRIDE_HEADER,
    DEFAULT_VISITOR_COOKIE,
    AdapterConfig,
    AdapterOptions,
    Options,
)
from .path import VISITOR_MAX_AGE, abort_for, begin, end, new_visitor_id, visitor_cookie

__all__ = [
    "BAGGAGE_TTL_SECONDS",
    "DEFAULT_OVERRIDE_COOKIE",
    "DEFAULT_OVERRIDE_HEADER",
    "DEFAULT_VISITOR_COOKIE",
    "VISITOR_MAX_AGE",
    "AdapterConfig",
    "AdapterOptions",
    "HeaderGetter",
    "Options",
    "abort_for",
    "asgi_getter",
    "baggage_header",
    "begin",
    "end",
    "env_key",
    "environ_getter",
    "mapping_getter",
    "new_visitor_id",
    "outbound_baggage",
    "parse_cookies",
    "patch_header_list",
    "response_headers",
    "stats",
    "verify_baggage",
    "visitor_cookie",
]
