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

from typing import TYPE_CHECKING, Any

import flask

from .. import _request
from .._cache_headers import COOKIE
from ..context import bind
from ..errors import ConfigError
from ..lab import Lab
from ._shared import SESSION_KEY, abort_headers, session_unit_id
from .jinja import install_globals

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["SESSION_KEY", "FieldLab"]

_TOKEN = "fieldlab.token"
_CTX = "fieldlab.context"


_HINTS = {
    "user": 'Flask has no built-in user: pass units={"user": lambda request: '
    'flask_login.current_user.get_id()} (or "header:X-User-Id") to FieldLab',
    "session": "set app.secret_key: fieldlab keeps the session unit in Flask's signed session cookie",
}


def _default_session(request: Any) -> Any:
    try:
        new = not flask.session.get(SESSION_KEY)
        sid = session_unit_id(flask.session)
    except RuntimeError:  # no secret key: Flask cannot keep a session
        return None
    if new and sid is not None:
        flask.g.fieldlab_new_session = True  # the response sets the session cookie: no shared cache may keep it
    return sid


class FieldLab:
    """Assigns every request's variants before the view runs and records them on the server span.

    Options are those of :class:`fieldlab.adapters.Options`; a misspelt one is a
    ConfigError naming the closest.
    """

    def __init__(
        self, app: flask.Flask | None = None, lab: Lab | None = None, **options: Unpack[_request.AdapterOptions]
    ) -> None:
        self.lab = lab
        self.options = _request.Options.of(options, "FieldLab")
        self.config: _request.AdapterConfig | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: flask.Flask) -> None:
        """Register the request hooks on ``app`` and keep this extension in ``app.extensions``."""
        if self.lab is None:
            raise ConfigError("lab", "FieldLab needs a Lab", "pass FieldLab(app, lab=Lab.from_file(...))")
        if self.config is None:
            self.config = _request.AdapterConfig(
                self.lab,
                **vars(self.options),
                framework_defaults={"session": _default_session},
                framework_sources={"session": COOKIE},
                unit_hints=_HINTS,
                adapter="FieldLab (Flask)",
            )
        if "fieldlab" in app.extensions:
            raise ConfigError(
                "init_app",
                "fieldlab is already initialised on this app",
                "create one FieldLab per app and call init_app once",
            )
        app.extensions["fieldlab"] = self
        self.config.plan()  # start-up: warns about unit kinds nothing resolves (Flask has no built-in user)
        app.before_request(self._before)
        app.after_request(self._cache_headers)
        app.teardown_request(self._teardown)
        install_globals(app.jinja_env)  # {{ variant("key", "default") }} / {{ param(...) }} in templates

    def _before(self) -> Any:
        cfg = self.config
        assert cfg is not None  # set by init_app, which registered this hook
        environ = flask.request.environ
        get = environ.get
        ctx = _request.begin(
            cfg,
            flask.request,
            _request.environ_getter(environ),
            get("PATH_INFO", ""),
            get("REQUEST_METHOD", ""),
        )
        if ctx is None:
            return None
        environ[_CTX] = ctx
        environ[_TOKEN] = bind(ctx)
        if "session" in cfg.sources and flask.g.pop("fieldlab_new_session", False):
            ctx.new_unit_kinds.add("session")
        if ctx.new_visitor_id is not None:
            flask.after_this_request(self._set_cookie)  # only new visitors: no per-request hook
        abort = _request.abort_for(ctx) if cfg.may_abort else None
        if abort is not None:
            status, body = abort
            return flask.Response(body, status=status, headers=abort_headers(body))
        return None

    def _set_cookie(self, response: flask.Response) -> flask.Response:
        ctx = flask.request.environ.get(_CTX)
        cookie = _request.visitor_cookie(self.config, ctx, flask.request.scheme == "https")  # type: ignore[arg-type]
        if cookie is not None:
            response.headers.add("Set-Cookie", cookie)
        return response

    def _cache_headers(self, response: flask.Response) -> flask.Response:
        """``Vary`` / ``Cache-Control: private`` on a response whose view read a variant (option ``cache_headers``)."""
        ctx = flask.request.environ.get(_CTX)
        if ctx is not None and ctx.read_keys:
            headers = response.headers
            for name, value in _request.response_headers(
                ctx, headers.getlist("Vary"), headers.getlist("Cache-Control")
            ).items():
                headers[name] = value
        return response

    def _teardown(self, exc: BaseException | None) -> None:
        environ = flask.request.environ
        ctx = environ.pop(_CTX, None)
        token = environ.pop(_TOKEN, None)
        if ctx is not None:
            _request.end(ctx, token)
