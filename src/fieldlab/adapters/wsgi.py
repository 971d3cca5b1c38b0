"""fieldlab for any WSGI application.

>>> app = FieldLabMiddleware(app, lab=lab, units={"user": "header:X-User-Id"})  # doctest: +SKIP

Callables in ``units`` and ``attributes`` receive the WSGI ``environ`` (or
``request_factory(environ)`` when given, e.g. ``werkzeug.Request``). The
default ``user`` unit is ``REMOTE_USER``; there is no default ``session``.
The context is bound while the wrapped app is called; response bodies that
are generated lazily after it returns see no context.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .. import _request
from .._request.wiring import added_twice, same_lab_outside
from ..context import bind
from ..lab import Lab
from ._shared import abort_headers

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["FieldLabMiddleware"]

_HANDLED = "fieldlab.middleware"  # set by the outermost fieldlab middleware: an inner one passes through
_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def status_line(status: int) -> str:
    return f"{status} {_REASONS.get(status, 'Error')}"


def _remote_user(environ: Any) -> Any:
    env = environ if isinstance(environ, dict) else getattr(environ, "environ", {})
    return env.get("REMOTE_USER")


class FieldLabMiddleware:
    """Assigns every request's variants, binds them for the app, records them on the server span.

    Options are those of :class:`fieldlab.adapters.Options` (``units``,
    ``headers``, ``attributes``, ``unit_ids``, ``trust_baggage``,
    ``propagate_baggage``, ``visitor_cookie``, ``override_header``,
    ``override_cookie``); a misspelt one is a ConfigError naming the closest.
    ``request_factory(environ)`` builds what resolvers receive (default: the environ).
    """

    def __init__(
        self,
        app: Callable[..., Iterable[bytes]],
        lab: Lab,
        *,
        request_factory: Callable[[dict], Any] | None = None,
        **options: Unpack[_request.AdapterOptions],
    ) -> None:
        if not callable(app):
            raise TypeError(f"FieldLabMiddleware(app): {app!r} is not a WSGI application")
        self.app = app
        self.request_factory = request_factory
        opts = _request.Options.of(options, "FieldLabMiddleware")
        self.config = _request.AdapterConfig(
            lab,
            **vars(opts),
            framework_defaults={"user": _remote_user},
            adapter="FieldLabMiddleware (WSGI)",
            unit_hints={
                "user": "REMOTE_USER is set by the server or an auth middleware wrapped outside "
                'FieldLabMiddleware; or pass units={"user": ...}'
            },
        )

    def __call__(self, environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        outer = environ.get(_HANDLED)
        if same_lab_outside(outer, self):
            added_twice(self, "FieldLabMiddleware (WSGI)", "wrap the app in FieldLabMiddleware once")
            return self.app(environ, start_response)
        environ[_HANDLED] = self
        cfg = self.config
        get = environ.get
        ctx = _request.begin(
            cfg,
            environ,
            _request.environ_getter(environ),
            get("PATH_INFO", ""),
            get("REQUEST_METHOD", ""),
            make_request=self.request_factory,
        )
        if ctx is None:
            return self.app(environ, start_response)
        token = bind(ctx)
        try:
            abort = _request.abort_for(ctx) if cfg.may_abort else None
            cookie = None
            if ctx.new_visitor_id is not None:
                cookie = _request.visitor_cookie(cfg, ctx, get("wsgi.url_scheme") == "https")
            if cookie is not None or cfg.cache_headers:
                start_response = _finishing(start_response, ctx, cookie)
            if abort is not None:
                status, body = abort
                start_response(status_line(status), abort_headers(body))
                return [body]
            return self.app(environ, start_response)
        finally:
            _request.end(ctx, token)


def _finishing(start_response: Callable[..., Any], ctx: Any, cookie: str | None) -> Callable[..., Any]:
    """``start_response`` adding the new visitor's cookie and the cache headers the app's reads need."""

    def start(status: str, headers: list, exc_info: Any = None) -> Any:
        headers = _request.patch_header_list(ctx, list(headers))
        if cookie is not None:
            headers.append(("Set-Cookie", cookie))
        if exc_info is None:
            return start_response(status, headers)
        return start_response(status, headers, exc_info)

    return start
