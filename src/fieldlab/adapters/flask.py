"""fieldlab as a Flask extension.

>>> fl = FieldLab(app, lab=lab, units={"user": "header:X-User-Id"})  # doctest: +SKIP
>>> fl = FieldLab(lab=lab); fl.init_app(app)                          # doctest: +SKIP

State lives in ``app.extensions["fieldlab"]`` (the extension object). Callables
in ``units`` and ``attributes`` receive ``flask.request``. Flask has no
built-in user, so the ``user`` unit needs a resolver (e.g.
``units={"user": lambda r: flask_login.current_user.get_id()}``); the default
``session`` unit is an id fieldlab keeps in ``flask.session``, created on first use.
Templates get the globals ``variant`` and ``param`` (see :mod:`fieldlab.adapters.jinja`).
"""

from __future__ import annotations

from typing import Any, Mapping

import flask

from .. import _request
from ..context import bind
from ..errors import ConfigError
from ..lab import Lab
from .jinja import install_globals

__all__ = ["FieldLab", "SESSION_KEY"]

SESSION_KEY = "_fieldlab_sid"
_TOKEN = "fieldlab.token"
_CTX = "fieldlab.context"


def _default_session(request: Any) -> Any:
    try:
        session = flask.session
        sid = session.get(SESSION_KEY)
        if not sid:
            sid = _request.new_visitor_id()
            session[SESSION_KEY] = sid
        return sid
    except RuntimeError:  # no secret key: Flask cannot keep a session
        return None


class FieldLab:
    """Assigns every request's variants before the view runs and records them on the server span.

    Options are those of :class:`fieldlab._request.AdapterConfig`.
    """

    def __init__(self, app: flask.Flask | None = None, lab: Lab | None = None, *,
                 units: Mapping[str, Any] | None = None, **options: Any) -> None:
        self.lab = lab
        self.units = units
        self.options = options
        self.config: _request.AdapterConfig | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: flask.Flask) -> None:
        """Register the request hooks on ``app`` and keep this extension in ``app.extensions``."""
        if self.lab is None:
            raise ConfigError("lab", "FieldLab needs a Lab", "pass FieldLab(app, lab=Lab.from_file(...))")
        if self.config is None:
            self.config = _request.AdapterConfig(self.lab, units=self.units,
                                                 framework_defaults={"session": _default_session}, **self.options)
        if "fieldlab" in app.extensions:
            raise ConfigError("init_app", "fieldlab is already initialised on this app",
                                       "create one FieldLab per app and call init_app once")
        app.extensions["fieldlab"] = self
        app.before_request(self._before)
        app.teardown_request(self._teardown)
        install_globals(app.jinja_env)  # {{ variant("key", "default") }} / {{ param(...) }} in templates

    def _before(self) -> Any:
        cfg = self.config
        environ = flask.request.environ
        get = environ.get
        ctx = _request.begin(cfg, flask.request, environ, get("PATH_INFO", ""), get("REQUEST_METHOD", ""),  # type: ignore[arg-type]
                             environ=True)
        if ctx is None:
            return None
        environ[_CTX] = ctx
        environ[_TOKEN] = bind(ctx)
        if "set_visitor" in ctx.extra:
            flask.after_this_request(self._set_cookie)  # only new visitors: no per-request hook
        abort = _request.abort_for(ctx) if cfg.may_abort else None  # type: ignore[union-attr]
        if abort is not None:
            status, body = abort
            return flask.Response(body, status=status, mimetype="text/plain")
        return None

    def _set_cookie(self, response: flask.Response) -> flask.Response:
        ctx = flask.request.environ.get(_CTX)
        cookie = _request.visitor_cookie(self.config, ctx, flask.request.scheme == "https")  # type: ignore[arg-type]
        if cookie is not None:
            response.headers.add("Set-Cookie", cookie)
        return response

    def _teardown(self, exc: BaseException | None) -> None:
        environ = flask.request.environ
        ctx = environ.pop(_CTX, None)
        token = environ.pop(_TOKEN, None)
        if ctx is not None:
            _request.end(ctx, token)
