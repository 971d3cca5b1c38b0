"""fieldlab as Django middleware, under WSGI and ASGI alike.

settings.py::

    MIDDLEWARE = [..., "django.contrib.auth.middleware.AuthenticationMiddleware",
                  "fieldlab.adapters.django.FieldLabMiddleware", ...]
    FIELDLAB = {
        "lab": "experiments.toml",           # a Lab, a dotted path to one, or a config file path
        "units": {"user": "header:X-User-Id"},  # optional; defaults below
        "headers": ["X-Country"],             # optional targeting allow-list
        "attributes": "myapp.ab.attributes",  # optional callable (or dotted path) taking the request
        "unit_ids": "hash",                   # optional: hash | raw | none
        "create_session": True,               # optional: give anonymous visitors a session for session experiments
    }

``INSTALLED_APPS += ["fieldlab.adapters.django_app"]`` adds fieldlab's system
checks to ``manage.py check`` and the ``{% load fieldlab %}`` template tags;
without it, importing this module registers the checks and the middleware
logs their findings once when it is built.

Defaults: ``user`` is ``request.user.pk`` when authenticated (place the
middleware after AuthenticationMiddleware), ``session`` is
``request.session.session_key``. The middleware is sync and async capable: Django
calls the matching path, so there is no sync/async switching per request.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpResponse
from opentelemetry import trace

from .. import _request
from .._cache_headers import COOKIE
from .._request.failures import failed
from ..context import RequestContext, bind, current
from ..errors import ConfigError
from ..lab import Lab
from ._shared import ABORT_CONTENT_TYPE
from .django_app import checks as _checks  # registers fieldlab's system checks (also without the app installed)
from .django_app.sessions import SessionCreator

__all__ = ["FieldLabMiddleware", "load_config", "vary_on_variants"]

_log = logging.getLogger("fieldlab")
_CONFIG_FILE_EXTENSIONS = (".toml", ".json", ".yaml", ".yml")
#: ASGI requests without a server span after which fieldlab says so (when the ASGI instrumentation is installed)
SPANLESS_AFTER = 100
_labs: dict[str, Lab] = {}


def _import(path: str, field: str) -> Any:
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(
            field, f"cannot import {path!r} ({exc})", "give a dotted path like 'myproject.ab.lab'"
        ) from None


def _load_lab(value: Any) -> Lab:
    if isinstance(value, Lab):
        return value
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        if text in _labs:
            return _labs[text]
        if text.lower().endswith(_CONFIG_FILE_EXTENSIONS) or os.path.sep in text:
            lab = Lab.from_file(text)
        else:
            lab = _import(text, "FIELDLAB['lab']")
            if not isinstance(lab, Lab):
                raise ConfigError(
                    "FIELDLAB['lab']",
                    f"{text!r} is a {type(lab).__name__}, not a Lab",
                    "point it at a fieldlab.Lab object or a config file",
                )
        _labs[text] = lab
        return lab
    raise ConfigError(
        "FIELDLAB['lab']", f"cannot use {value!r}", "give a Lab, a dotted path to one, or a config file path"
    )


def _user(request: Any) -> Any:
    return _user_of(getattr(request, "user", None))


def _session(request: Any) -> Any:
    session = getattr(request, "session", None)
    return getattr(session, "session_key", None) if session is not None else None


def load_config() -> _request.AdapterConfig:
    """Build the adapter configuration from ``settings.FIELDLAB``, with clear errors."""
    conf = getattr(settings, "FIELDLAB", None)
    if not isinstance(conf, dict) or "lab" not in conf:
        raise ConfigError(
            "settings.FIELDLAB",
            "is missing or has no 'lab'",
            "set FIELDLAB = {'lab': 'experiments.toml'} (a Lab, dotted path or config file)",
        )
    if not isinstance(conf.get("create_session", False), bool):
        raise ConfigError(
            "FIELDLAB['create_session']",
            f"{conf['create_session']!r} is not True or False",
            "write True to create a session when a session experiment needs one, else False",
        )
    options = _request.Options.of(conf, "settings.FIELDLAB", also=("lab", "create_session"))
    attributes = conf.get("attributes")
    if isinstance(attributes, str):
        attributes = _import(attributes, "FIELDLAB['attributes']")
    units = options.units
    if isinstance(units, Mapping):  # (anything else: AdapterConfig says why)
        units = {
            kind: _import(spec, f"FIELDLAB['units'][{kind!r}]")
            if isinstance(spec, str) and not spec.lower().startswith(("header:", "cookie:")) and "." in spec
            else spec
            for kind, spec in units.items()
        }
    settings_options = dataclasses.replace(options, units=units, attributes=attributes)
    return _request.AdapterConfig(
        _load_lab(conf["lab"]),
        **vars(settings_options),
        framework_defaults={"user": _user, "session": _session},
        framework_sources={"user": COOKIE, "session": COOKIE},
        where="FIELDLAB['units']",
    )


class FieldLabMiddleware:
    """Assigns every request's variants before the view runs and records them on the server span."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.config = load_config()
        #: the opt-in FIELDLAB["create_session"] (see django_app.sessions), None when off
        self.create_session = SessionCreator.from_setting(getattr(settings, "FIELDLAB", None), self.config.lab)
        _checks.report_at_startup()  # gunicorn / uvicorn run no Django checks: log their findings once
        #: ASGI requests seen without a server span, until one has one (None: stop looking)
        self.spanless: int | None = 0
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def _begin(self, request: Any, known: dict[str, Any] | None) -> Any:
        return _request.begin(
            self.config, request, _request.environ_getter(request.META), request.path, request.method, known
        )

    def _finish(self, request: Any, ctx: Any, response: Any) -> Any:
        patch_variant_headers(response, ctx)
        vid = ctx.new_visitor_id
        if vid is not None:
            response.set_cookie(
                self.config.visitor_cookie,
                vid,
                max_age=_request.VISITOR_MAX_AGE,
                path="/",
                secure=request.is_secure(),
                httponly=True,
                samesite="Lax",
            )
        return response

    def _abort(self, ctx: Any) -> HttpResponse | None:
        """The response of an injected abort fault, if one answers this request."""
        abort = _request.abort_for(ctx) if self.config.may_abort else None
        if abort is None:
            return None
        return HttpResponse(abort[1], status=abort[0], content_type=ABORT_CONTENT_TYPE)

    def __call__(self, request: Any) -> Any:
        if self.is_async:
            return self.__acall__(request)
        created = self.create_session is not None and self.create_session(request)
        ctx = self._begin(request, None)
        if ctx is None:
            return self.get_response(request)
        if created:
            ctx.new_unit_kinds.add("session")
        token = bind(ctx)
        try:
            abort = self._abort(ctx)
            if abort is not None:
                return abort
            return self._finish(request, ctx, self.get_response(request))
        finally:
            _request.end(ctx, token)

    async def __acall__(self, request: Any) -> Any:
        known = None
        created = self.create_session is not None and await self.create_session.acall(request)
        cfg = self.config
        plan = cfg.plan()
        if "user" not in cfg.units and any(u.kind == "user" for u in plan) and hasattr(request, "auser"):
            try:  # request.user would hit the database synchronously; auser() is the async way
                known = {"user": _user_of(await request.auser())}
            except Exception:
                failed("resolver_errors", "user")
                known = {"user": None}
        ctx = self._begin(request, known)
        if ctx is None:
            return await self.get_response(request)
        if created:
            ctx.new_unit_kinds.add("session")
        token = bind(ctx)
        try:
            abort = self._abort(ctx)
            if abort is not None:
                return abort
            return self._finish(request, ctx, await self.get_response(request))
        finally:
            _request.end(ctx, token)
            if self.spanless is not None:
                self._check_span(ctx)

    def _check_span(self, ctx: Any) -> None:
        """Under ASGI, say once when requests have no server span: the assignments are recorded nowhere.

        The OpenTelemetry Django instrumentation skips ASGI requests, silently,
        unless ``opentelemetry-instrumentation-asgi`` is installed. Said on the
        first span-less request when that package is missing, else after
        :data:`SPANLESS_AFTER` of them (excluded URLs such as health checks
        have none either); nothing when no SDK tracer provider is set (the app
        traces nothing, knowingly) or once a request had a span.
        """
        try:
            if ctx.server_span is not None:
                self.spanless = None
                return
            if not hasattr(trace.get_tracer_provider(), "add_span_processor"):
                return
            self.spanless = (self.spanless or 0) + 1
            missing = importlib.util.find_spec("opentelemetry.instrumentation.asgi") is None
            if missing:
                fix = (
                    "install opentelemetry-instrumentation-asgi: without it the OpenTelemetry Django "
                    "instrumentation records nothing for ASGI requests"
                )
            elif self.spanless >= SPANLESS_AFTER:
                fix = (
                    "call DjangoInstrumentor().instrument() before get_asgi_application(), or wrap the "
                    "application in opentelemetry.instrumentation.asgi.OpenTelemetryMiddleware"
                )
            else:
                return
            self.spanless = None
            _log.warning(
                "fieldlab: Django runs under ASGI and found no OpenTelemetry server span for %s, so "
                "assignments and exposures are recorded nowhere; %s",
                "this request" if missing else f"{SPANLESS_AFTER} requests",
                fix,
            )
        except Exception:
            self.spanless = None


def _user_of(user: Any) -> Any:
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return user.pk


def patch_variant_headers(response: Any, ctx: RequestContext | None = None) -> Any:
    """Give ``response`` the ``Vary`` / ``Cache-Control: private`` its variant reads need (see ``cache_headers``).

    ``ctx`` defaults to the current request's. The middleware calls this on
    every response; :func:`vary_on_variants` calls it inside the view, for
    caches that store the response before the middleware sees it.
    """
    ctx = current() if ctx is None else ctx
    if ctx is None or not ctx.read_keys:
        return response
    headers = response.headers
    for name, value in _request.response_headers(ctx, headers.get("Vary"), headers.get("Cache-Control")).items():
        headers[name] = value
    return response


def vary_on_variants(view: Callable[..., Any]) -> Callable[..., Any]:
    """View decorator: the response says what its variants depend on before an outer cache decorator stores it.

    ``@cache_page`` caches inside the middleware stack, before
    ``FieldLabMiddleware`` adds the headers, so put this under it::

        @cache_page(60)
        @vary_on_variants
        def home(request): ...

    A ``TemplateResponse`` gets the headers after it is rendered (templates
    read variants too), before ``cache_page``'s own post-render step.
    Works for sync and async views; a no-op outside fieldlab's middleware or
    with ``FIELDLAB["cache_headers"] = False``.
    """

    def finish(response: Any) -> Any:
        if getattr(response, "is_rendered", True) is False and hasattr(response, "add_post_render_callback"):
            response.add_post_render_callback(patch_variant_headers)
            return response
        return patch_variant_headers(response)

    if iscoroutinefunction(view):

        @functools.wraps(view)
        async def async_view(request: Any, *args: Any, **kwargs: Any) -> Any:
            return finish(await view(request, *args, **kwargs))

        return async_view

    @functools.wraps(view)
    def sync_view(request: Any, *args: Any, **kwargs: Any) -> Any:
        return finish(view(request, *args, **kwargs))

    return sync_view
