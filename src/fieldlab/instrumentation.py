"""Zero-code wiring: fieldlab as an OpenTelemetry instrumentor (entry point ``opentelemetry_instrumentor`` = ``fieldlab``).

With the package installed, ``opentelemetry-instrument`` adds fieldlab to
Flask, Django, Starlette and FastAPI apps without a code change::

    FIELDLAB_CONFIG=lab.toml FIELDLAB_UNITS="user=header:X-User-Id" \\
        opentelemetry-instrument --traces_exporter otlp gunicorn app:app

``FIELDLAB_CONFIG`` names the lab file (TOML, JSON or YAML, reloaded as
``Lab.from_file`` does). ``FIELDLAB_UNITS`` is optional: comma-separated
``kind=resolver`` pairs with the resolvers the adapters take as strings
(``header:NAME`` or ``cookie:NAME``); kinds it does not name use each
framework's defaults (Django's ``request.user``, the session, fieldlab's
``visitor`` cookie, the ``request`` trace id). Without ``FIELDLAB_CONFIG``,
or with a config that does not load, nothing is added and the reason is
logged: the app runs as it would without fieldlab. In code, the same works
with ``FieldLabInstrumentor().instrument(lab=lab, units={...}, **adapter_options)``
called before the apps are created, as with OpenTelemetry's own instrumentors.

Order. fieldlab goes *inside* the framework's OpenTelemetry instrumentation
(the request's SERVER span already exists when fieldlab starts, so it writes
onto it directly), whichever instrumentor the entry-point loader runs first:
each app gets fieldlab when it serves its first request (Flask) or builds
its middleware stack (Starlette, FastAPI), after the instrumentation wired
itself in at construction; Django's ``FieldLabMiddleware`` is appended to
``settings.MIDDLEWARE`` (after authentication, inside OpenTelemetry's
middleware, which the Django instrumentor puts first) when a handler loads
its middleware. An app that already wires fieldlab itself is left alone.

``uninstrument()`` removes fieldlab from the Flask and Starlette/FastAPI apps
it was added to (they rebuild their middleware stack on the next request) and
from ``settings.MIDDLEWARE`` (Django handlers built before keep their
middleware chain, as with OpenTelemetry's Django instrumentor).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import weakref
from collections.abc import Collection, Mapping
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from .context import current
from .errors import ConfigError
from .lab import Lab

__all__ = ["CONFIG_ENV", "UNITS_ENV", "FieldLabInstrumentor", "parse_units"]

_log = logging.getLogger("fieldlab")

CONFIG_ENV = "FIELDLAB_CONFIG"
UNITS_ENV = "FIELDLAB_UNITS"
_DJANGO_MIDDLEWARE = "fieldlab.adapters.django.FieldLabMiddleware"


def parse_units(text: str, where: str = UNITS_ENV) -> dict[str, str]:
    """``"user=header:X-User-Id,session=cookie:sid"`` -> ``{"user": "header:X-User-Id", "session": "cookie:sid"}``."""
    units: dict[str, str] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        kind, sep, spec = part.partition("=")
        kind, spec = kind.strip(), spec.strip()
        how, colon, name = spec.partition(":")
        if not sep or not kind or not colon or how.strip().lower() not in ("header", "cookie") or not name.strip():
            raise ConfigError(
                where,
                f"cannot read {part!r} as a unit resolver",
                "write kind=header:NAME or kind=cookie:NAME, comma-separated, e.g. "
                '"user=header:X-User-Id,visitor=cookie:vid"',
            )
        if kind in units:
            raise ConfigError(where, f"unit kind {kind!r} is given twice", "name each unit kind once")
        units[kind] = spec
    return units


class _Settings:
    """What the instrumentor adds to each app: the lab, the units and the adapter options."""

    def __init__(self, lab: Lab, units: Mapping[str, Any] | None, options: Mapping[str, Any]) -> None:
        self.lab, self.units, self.options = lab, dict(units) if units else None, dict(options)


_lock = threading.RLock()
_settings: _Settings | None = None
_patches: list[tuple[type, str, Any]] = []  # (class, attribute, original) to put back
_flask_apps: weakref.WeakKeyDictionary[Any, dict[str, list[Any]]] = weakref.WeakKeyDictionary()
_flask_failed: weakref.WeakSet[Any] = weakref.WeakSet()
_asgi_apps: weakref.WeakSet[Any] = weakref.WeakSet()
_django_added: dict[str, Any] = {}


class FieldLabInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Adds fieldlab to Flask, Django, Starlette and FastAPI apps (the contrib ``BaseInstrumentor`` pattern)."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return []  # each framework is patched when it is installed; none is required

    def _instrument(self, **kwargs: Any) -> None:
        global _settings
        try:
            settings = _load_settings(kwargs)
        except ConfigError as exc:
            _log.error("fieldlab: not added to the apps: %s", exc)
            return
        if settings is None:
            _log.warning(
                "fieldlab: %s is not set; the instrumentor adds nothing (set it to the lab's config file)", CONFIG_ENV
            )
            return
        with _lock:
            _settings = settings
            for framework, patch in (
                ("flask", _patch_flask),
                ("starlette", _patch_starlette),
                ("django", _patch_django),
            ):
                if importlib.util.find_spec(framework) is not None:
                    try:
                        patch()
                    except Exception:
                        _log.warning("fieldlab: could not instrument %s", framework, exc_info=True)

    def _uninstrument(self, **kwargs: Any) -> None:
        global _settings
        with _lock:
            _settings = None
            while _patches:
                cls, name, original = _patches.pop()
                setattr(cls, name, original)
            for app, added in list(_flask_apps.items()):
                app.extensions.pop("fieldlab", None)
                for attr, funcs in added.items():
                    registered = getattr(app, attr).get(None, [])
                    for fn in funcs:
                        if fn in registered:
                            registered.remove(fn)
            _flask_apps.clear()
            for app in list(_asgi_apps):
                app.user_middleware[:] = [m for m in app.user_middleware if m.cls is not _AutoASGI]
                app.middleware_stack = None  # rebuilt on the next request, without fieldlab
            _asgi_apps.clear()
            _unpatch_django()


def _load_settings(kwargs: Mapping[str, Any]) -> _Settings | None:
    lab = kwargs.get("lab")
    units = kwargs.get("units")
    options = {k: v for k, v in kwargs.items() if k not in ("lab", "units", "tracer_provider", "meter_provider")}
    if lab is None:
        path = os.environ.get(CONFIG_ENV, "").strip()
        if not path:
            return None
        lab = Lab.from_file(path)
    elif not isinstance(lab, Lab):
        raise ConfigError(
            "lab",
            f"expected a fieldlab.Lab, got {type(lab).__name__}",
            f"pass lab=Lab.from_file(...) or set {CONFIG_ENV}",
        )
    if units is None and os.environ.get(UNITS_ENV, "").strip():
        units = parse_units(os.environ[UNITS_ENV])
    return _Settings(lab, units, options)


def _patch(cls: type, name: str, replacement: Any) -> None:
    _patches.append((cls, name, cls.__dict__[name]))
    setattr(cls, name, replacement)


# -------------------------------------------------------------------------------------------------- Flask
def _patch_flask() -> None:
    import flask.app

    flask_cls = flask.app.Flask
    original = flask_cls.__dict__["wsgi_app"]

    def wsgi_app(self: Any, environ: Any, start_response: Any) -> Any:
        # Flask's OpenTelemetry instrumentation wraps this method when an app is built and registers its
        # before_request hook then; adding fieldlab's hooks at the first request puts them after it (inside)
        if _settings is not None and "fieldlab" not in self.extensions and self not in _flask_failed:
            _add_to_flask(self)
        return original(self, environ, start_response)

    wsgi_app.__wrapped__ = original  # type: ignore[attr-defined]
    _patch(flask_cls, "wsgi_app", wsgi_app)


def _add_to_flask(app: Any) -> None:
    from .adapters.flask import FieldLab

    with _lock:
        settings = _settings
        if settings is None or "fieldlab" in app.extensions or app in _flask_failed:
            return
        hooks = ("before_request_funcs", "after_request_funcs", "teardown_request_funcs")
        before = {attr: list(getattr(app, attr).get(None, [])) for attr in hooks}
        try:
            FieldLab(app, lab=settings.lab, units=settings.units, **settings.options)
        except Exception:
            _flask_failed.add(app)
            _log.warning("fieldlab: could not add fieldlab to Flask app %r", app.name, exc_info=True)
            return
        _flask_apps[app] = {
            attr: [fn for fn in getattr(app, attr).get(None, []) if fn not in before[attr]] for attr in hooks
        }


# -------------------------------------------------------------------------------------- Starlette, FastAPI
class _AutoASGI:
    """fieldlab's ASGI middleware as the instrumentor adds it: once per request, even in mounted sub-apps."""

    def __init__(self, app: Any, **kwargs: Any) -> None:
        from .adapters.asgi import FieldLabMiddleware

        self.app = app
        self.fieldlab = FieldLabMiddleware(app, **kwargs)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if current() is not None:  # an outer app of this request already runs fieldlab
            await self.app(scope, receive, send)
        else:
            await self.fieldlab(scope, receive, send)


def _patch_starlette() -> None:
    import starlette.applications

    # the classes defining the method (OpenTelemetry's instrumentor may have put its subclass in the module)
    found: list[type] = [starlette.applications.Starlette]
    if importlib.util.find_spec("fastapi") is not None:
        import fastapi.applications

        found.append(fastapi.applications.FastAPI)
    classes: list[type] = []
    for start in found:
        cls = next(c for c in start.__mro__ if "build_middleware_stack" in c.__dict__)
        if cls not in classes:
            classes.append(cls)
    for cls in classes:
        _patch(cls, "build_middleware_stack", _build_with_fieldlab(cls.__dict__["build_middleware_stack"]))


def _build_with_fieldlab(original: Any) -> Any:
    def build_middleware_stack(self: Any) -> Any:
        # the app's stack is built at its first request, after the OpenTelemetry middleware was added at
        # construction (Starlette: the first user middleware; FastAPI: wrapped around the stack): fieldlab
        # goes last among the user middleware, so inside it
        if _settings is not None and self not in _asgi_apps and not _has_fieldlab(self):
            _add_to_asgi(self)
        return original(self)

    build_middleware_stack.__wrapped__ = original  # type: ignore[attr-defined]
    return build_middleware_stack


def _has_fieldlab(app: Any) -> bool:
    from .adapters.asgi import FieldLabMiddleware

    return any(
        isinstance(m.cls, type) and issubclass(m.cls, (FieldLabMiddleware, _AutoASGI)) for m in app.user_middleware
    )


def _add_to_asgi(app: Any) -> None:
    from starlette.middleware import Middleware

    with _lock:
        settings = _settings
        if settings is None or app in _asgi_apps:
            return
        try:
            _AutoASGI(
                _noop_app, lab=settings.lab, units=settings.units, **settings.options
            )  # fail here, not per request
        except Exception:
            _log.warning("fieldlab: could not add fieldlab to %r", app, exc_info=True)
            return
        app.user_middleware.append(
            Middleware(
                _AutoASGI,
                lab=settings.lab,
                units=settings.units,  # type: ignore[arg-type]
                **settings.options,
            )
        )
        _asgi_apps.add(app)


async def _noop_app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never called
    return None


# ------------------------------------------------------------------------------------------------- Django
def _patch_django() -> None:
    from django.core.handlers.base import BaseHandler  # type: ignore[import-untyped]

    original = BaseHandler.__dict__["load_middleware"]

    def load_middleware(self: Any, is_async: bool = False) -> Any:
        if _settings is not None:
            try:
                _add_to_django_settings()
            except Exception:
                _log.warning("fieldlab: could not add fieldlab to Django's MIDDLEWARE", exc_info=True)
        return original(self, is_async)

    load_middleware.__wrapped__ = original  # type: ignore[attr-defined]
    _patch(BaseHandler, "load_middleware", load_middleware)


def _add_to_django_settings() -> None:
    from django.conf import settings as django_settings  # type: ignore[import-untyped]

    with _lock:
        settings = _settings
        middleware = list(getattr(django_settings, "MIDDLEWARE", None) or [])
        if settings is None or _DJANGO_MIDDLEWARE in middleware:
            return
        if getattr(django_settings, "FIELDLAB", None) is None:
            conf: dict[str, Any] = {"lab": settings.lab, **settings.options}
            if settings.units:
                conf["units"] = settings.units
            django_settings.FIELDLAB = conf
            _django_added["FIELDLAB"] = True
        django_settings.MIDDLEWARE = [*middleware, _DJANGO_MIDDLEWARE]  # last: after auth, inside OpenTelemetry's
        _django_added["MIDDLEWARE"] = True


def _unpatch_django() -> None:
    if not _django_added:
        return
    try:
        from django.conf import settings as django_settings  # type: ignore[import-untyped]

        if _django_added.pop("MIDDLEWARE", False):
            django_settings.MIDDLEWARE = [m for m in django_settings.MIDDLEWARE if m != _DJANGO_MIDDLEWARE]
        if _django_added.pop("FIELDLAB", False):
            del django_settings.FIELDLAB
    except Exception:
        _log.warning("fieldlab: could not remove fieldlab from Django's settings", exc_info=True)
    _django_added.clear()
