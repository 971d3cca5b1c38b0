"""fieldlab for any ASGI application (HTTP only; websocket and lifespan pass through).

Starlette and FastAPI::

    app.add_middleware(FieldLabMiddleware, lab=lab, units={"user": "header:X-User-Id"})

Callables in ``units`` and ``attributes`` receive a ``starlette.requests.Request``
of the scope when Starlette is installed (else the raw scope); they are sync,
so they read what the scope holds (headers, cookies, user, session), not the
body. Defaults: ``user`` is ``scope["user"]`` when authenticated (Starlette's
AuthenticationMiddleware, placed outside fieldlab); ``session`` is an id
fieldlab keeps in ``scope["session"]`` (Starlette's SessionMiddleware),
created on first use.
The context stays bound for the whole call, streaming bodies included.
"""

from __future__ import annotations

import warnings
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from .. import _request
from .._cache_headers import COOKIE
from .._request.wiring import added_twice, same_lab_outside
from ..context import bind
from ..lab import Lab
from ._shared import SESSION_KEY, abort_headers, session_unit_id

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["SESSION_KEY", "FieldLabMiddleware"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def _scope_of(request: Any) -> Mapping[str, Any]:
    return request if isinstance(request, dict) else getattr(request, "scope", {})


def _default_user(request: Any) -> Any:
    user = _scope_of(request).get("user")
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    for attr in ("identity", "id", "username", "display_name"):
        try:
            value = getattr(user, attr, None)
        except NotImplementedError:
            continue
        if value:
            return value
    return None


_NEW_SESSION = "fieldlab.new_session"
_HANDLED = "fieldlab.middleware"  # set by the outermost fieldlab middleware: an inner one passes through
_HINTS = {
    "user": "request.user comes from Starlette's AuthenticationMiddleware, which must run before fieldlab: "
    "add it after FieldLabMiddleware in code (the middleware added last runs first), "
    'or pass units={"user": ...}',
    "session": "request.session comes from Starlette's SessionMiddleware, which must run before fieldlab: "
    "add it after FieldLabMiddleware in code (the middleware added last runs first)",
}


def _default_session(request: Any) -> Any:
    scope = _scope_of(request)
    session = scope.get("session")
    try:
        new = session is not None and not session.get(SESSION_KEY)
    except (AttributeError, TypeError):
        new = False
    sid = session_unit_id(session)
    if new and sid is not None and isinstance(scope, dict):
        scope[_NEW_SESSION] = True  # the response sets the session cookie: no shared cache may keep it
    return sid


def _starlette_request() -> Callable[..., Any] | None:
    try:
        from starlette.requests import Request
    except ImportError:
        return None
    return Request


class FieldLabMiddleware:
    """Assigns every HTTP request's variants, binds them for the app, records them on the server span.

    Options are those of :class:`fieldlab.adapters.Options`; a misspelt one is a
    ConfigError naming the closest. ``request_factory(scope)`` builds what
    resolvers receive (default: Starlette's Request, if installed);
    ``request_class`` is its deprecated former name.
    """

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        lab: Lab,
        *,
        request_factory: Callable[..., Any] | None = None,
        request_class: Callable[..., Any] | None = None,
        **options: Unpack[_request.AdapterOptions],
    ) -> None:
        self.app = app
        if request_class is not None:
            warnings.warn(
                "FieldLabMiddleware(request_class=...) is deprecated; use request_factory=...",
                DeprecationWarning,
                stacklevel=2,
            )
            request_factory = request_factory or request_class
        self.request_factory = request_factory if request_factory is not None else _starlette_request()
        opts = _request.Options.of(options, "FieldLabMiddleware")
        self.config = _request.AdapterConfig(
            lab,
            **vars(opts),
            framework_defaults={"user": _default_user, "session": _default_session},
            framework_sources={"session": COOKIE},  # request.user: whatever the auth backend read, opaque
            unit_hints=_HINTS,
            adapter="FieldLabMiddleware (ASGI)",
        )
        self._first_request = True

    def _check_scope(self, scope: Scope) -> None:
        """On the first request: a default unit whose middleware does not run before fieldlab's."""
        cfg = self.config
        try:
            for unit in cfg.plan():
                if unit.kind in cfg.units or unit.kind not in ("user", "session") or unit.kind in scope:
                    continue
                what = "AuthenticationMiddleware" if unit.kind == "user" else "SessionMiddleware"
                cfg.watch.report_now(
                    cfg.lab,
                    unit.kind,
                    f"the first request reached fieldlab without "
                    f"request.{unit.kind} ({what} is missing or runs after fieldlab)",
                )
        except Exception:
            pass  # a warning that cannot be worked out is not worth a failed request

    @property
    def request_class(self) -> Callable[..., Any] | None:
        """Deprecated: ``request_factory``."""
        return self.request_factory

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        outer = scope.get(_HANDLED)
        if same_lab_outside(outer, self):
            added_twice(self, "FieldLabMiddleware (ASGI)", "keep one app.add_middleware(FieldLabMiddleware, ...)")
            await self.app(scope, receive, send)
            return
        scope[_HANDLED] = self
        cfg = self.config
        if self._first_request:
            self._first_request = False
            self._check_scope(scope)
        ctx = _request.begin(
            cfg,
            scope,
            _request.asgi_getter(scope.get("headers", ())),
            scope.get("path", ""),
            scope.get("method", ""),
            make_request=self.request_factory,
        )
        if ctx is None:
            await self.app(scope, receive, send)
            return
        if scope.pop(_NEW_SESSION, False):
            ctx.new_unit_kinds.add("session")
        token = bind(ctx)
        try:
            cookie = None
            if ctx.new_visitor_id is not None:
                cookie = _request.visitor_cookie(cfg, ctx, scope.get("scheme") == "https")
            if cookie is not None or cfg.cache_headers:
                send = _finishing(send, ctx, cookie.encode("latin-1") if cookie is not None else None)
            abort = _request.abort_for(ctx) if cfg.may_abort else None
            if abort is not None:
                status, body = abort
                await send(
                    {
                        "type": "http.response.start",
                        "status": status,
                        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in abort_headers(body)],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
            await self.app(scope, receive, send)
        finally:
            _request.end(ctx, token)


def _finishing(send: Send, ctx: Any, cookie: bytes | None) -> Send:
    """``send`` adding the new visitor's cookie and the cache headers the app's reads need to the response start."""

    async def send_finished(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = dict(message)
            headers = list(message.get("headers", ()))
            if ctx.read_keys and ctx.unit_sources is not None:
                headers = _patch_raw(ctx, headers)
            if cookie is not None:
                headers.append((b"set-cookie", cookie))
            message["headers"] = headers
        await send(message)

    return send_finished


def _patch_raw(ctx: Any, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """ASGI (byte) headers with the cache headers ``ctx`` needs."""
    vary = [v.decode("latin-1") for k, v in headers if k.lower() == b"vary"]
    cache_control = [v.decode("latin-1") for k, v in headers if k.lower() == b"cache-control"]
    wanted = _request.response_headers(ctx, vary, cache_control)
    if not wanted:
        return headers
    lower = {name.lower().encode("latin-1") for name in wanted}
    return [(k, v) for k, v in headers if k.lower() not in lower] + [
        (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in wanted.items()
    ]
