"""Django system checks for fieldlab's wiring: the ``FIELDLAB`` setting, the lab, the middleware order.

A misplaced middleware does not fail: it silently gives every logged-in user
reason ``no_unit``. These checks make such mistakes show where Django shows
its own, at ``manage.py check`` and when ``runserver`` starts. Under gunicorn
or uvicorn Django runs no checks, so :class:`~fieldlab.adapters.django.FieldLabMiddleware`
calls :func:`report_at_startup` when it is built, which logs the same
findings once on the ``fieldlab`` logger (unless Django already ran them in
this process). ``SILENCED_SYSTEM_CHECKS`` silences them in both places.

=================  ==========================================================
``fieldlab.E001``  ``FIELDLAB`` setting missing
``fieldlab.E002``  ``FIELDLAB`` malformed (not a dict, unknown key, bad option)
``fieldlab.E003``  the lab does not load (the ``ConfigError`` text is shown)
``fieldlab.E004``  middleware before ``AuthenticationMiddleware`` with a ``user`` experiment
``fieldlab.E005``  middleware before ``SessionMiddleware`` with a ``session`` experiment
``fieldlab.W001``  ``FieldLabMiddleware`` not in ``MIDDLEWARE``
``fieldlab.W002``  no ``AuthenticationMiddleware`` with a ``user`` experiment
``fieldlab.W003``  no ``SessionMiddleware`` with a ``session`` experiment
``fieldlab.W004``  a running ``session`` experiment, and no ``create_session`` decision
``fieldlab.W005``  ``FieldLabMiddleware`` listed more than once
=================  ==========================================================
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core import checks
from django.utils.module_loading import import_string

from ...errors import ConfigError

__all__ = ["MIDDLEWARE_PATH", "fieldlab_checks", "register", "report_at_startup"]

_log = logging.getLogger("fieldlab")

MIDDLEWARE_PATH = "fieldlab.adapters.django.FieldLabMiddleware"
_AUTH = "django.contrib.auth.middleware.AuthenticationMiddleware"
_SESSION = "django.contrib.sessions.middleware.SessionMiddleware"
_EXAMPLE = "FIELDLAB = {'lab': 'experiments.toml'}"
#: set once Django itself ran these checks in this process (runserver, manage.py check)
_ran_by_django = False
_logged: set[str] = set()


def _is(entry: str, target: str) -> bool:
    """True when MIDDLEWARE ``entry`` is ``target`` or a subclass of it (never raises)."""
    if entry == target:
        return True
    try:
        return issubclass(import_string(entry), import_string(target))
    except Exception:  # not importable (yet): only the exact path counts
        return False


def _index(middleware: list[str], target: str) -> int | None:
    for i, entry in enumerate(middleware):
        if isinstance(entry, str) and _is(entry, target):
            return i
    return None


def _load(conf: dict[str, Any]) -> tuple[Any, list[checks.CheckMessage]]:
    """The lab of the setting, and the errors loading it or the rest of the setting gave."""
    from .. import django as adapter

    try:
        lab = adapter._load_lab(conf["lab"])
    except Exception as exc:
        text = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
        return None, [
            checks.Error(
                f"fieldlab cannot load the lab FIELDLAB['lab'] = {conf['lab']!r}: {text}",
                hint="fix the config file or the dotted path (fieldlab validate FILE shows every problem); "
                "until then no request gets a variant",
                id="fieldlab.E003",
            )
        ]
    try:
        adapter.load_config()
    except ConfigError as exc:
        return lab, [
            checks.Error(f"FIELDLAB is malformed: {exc.path}: {exc.problem}", hint=exc.fix, id="fieldlab.E002")
        ]
    except Exception as exc:
        return lab, [
            checks.Error(
                f"FIELDLAB is malformed: {type(exc).__name__}: {exc}",
                hint=f"write it like {_EXAMPLE}",
                id="fieldlab.E002",
            )
        ]
    return lab, []


def _order(conf: dict[str, Any], lab: Any, middleware: list[str], fl: int) -> list[checks.CheckMessage]:
    out: list[checks.CheckMessage] = []
    units = conf.get("units") or {}
    by_kind: dict[str, list[str]] = {}
    running: dict[str, list[str]] = {}
    for key, exp in lab.experiments.items():
        by_kind.setdefault(exp.unit, []).append(key)
        if exp.status == "running":
            running.setdefault(exp.unit, []).append(key)
    for kind, target, short, err, warn in (
        ("user", _AUTH, "AuthenticationMiddleware", "E004", "W002"),
        ("session", _SESSION, "SessionMiddleware", "E005", "W003"),
    ):
        keys = by_kind.get(kind)
        if not keys or kind in units:
            continue  # no such experiment, or the app resolves the unit itself
        names = ", ".join(sorted(keys)[:5]) + (", ..." if len(keys) > 5 else "")
        reads = "request.user" if kind == "user" else "request.session"
        idx = _index(middleware, target)
        if idx is None:
            out.append(
                checks.Warning(
                    f"{short} is not in MIDDLEWARE, so nothing may set {reads} and the {kind} experiments "
                    f"({names}) may give every request reason no_unit",
                    hint=f"add {target} before {MIDDLEWARE_PATH}, put FieldLabMiddleware after the middleware that "
                    f"sets {reads}, or give FIELDLAB['units'][{kind!r}] a resolver",
                    id=f"fieldlab.{warn}",
                )
            )
        elif fl < idx:
            out.append(
                checks.Error(
                    f"FieldLabMiddleware comes before {short} in MIDDLEWARE: {reads} is not set yet when fieldlab "
                    f"assigns, so the {kind} experiments ({names}) give every request reason no_unit",
                    hint=f"move {MIDDLEWARE_PATH!r} after {target!r} in MIDDLEWARE",
                    id=f"fieldlab.{err}",
                )
            )
    if running.get("session") and "session" not in units and "create_session" not in conf:
        names = ", ".join(sorted(running["session"])[:5])
        out.append(
            checks.Warning(
                f"the session experiments ({names}) leave out anonymous visitors: Django gives a visitor a session "
                "key only once something writes to the session",
                hint="set FIELDLAB['create_session'] = True to create a session when a session experiment needs one, "
                "or False to keep such visitors out knowingly; for anonymous traffic the 'visitor' unit needs no "
                "session",
                id="fieldlab.W004",
            )
        )
    return out


def _messages() -> list[checks.CheckMessage]:
    conf = getattr(settings, "FIELDLAB", None)
    if conf is None:
        return [
            checks.Error(
                "the FIELDLAB setting is missing, so FieldLabMiddleware cannot start",
                hint=f"add {_EXAMPLE} to settings (a Lab, a dotted path to one, or a config file)",
                id="fieldlab.E001",
            )
        ]
    if not isinstance(conf, dict) or "lab" not in conf:
        return [
            checks.Error(
                f"FIELDLAB must be a dict with a 'lab' key, got {conf!r:.80}",
                hint=f"write it like {_EXAMPLE}",
                id="fieldlab.E002",
            )
        ]
    out: list[checks.CheckMessage] = []
    middleware = [m for m in (getattr(settings, "MIDDLEWARE", None) or []) if isinstance(m, str)]
    found = [i for i, m in enumerate(middleware) if _is(m, MIDDLEWARE_PATH)]
    if not found:
        out.append(
            checks.Warning(
                f"{MIDDLEWARE_PATH} is not in MIDDLEWARE, so no request gets a variant",
                hint="add it to MIDDLEWARE, after AuthenticationMiddleware",
                id="fieldlab.W001",
            )
        )
    elif len(found) > 1:
        out.append(
            checks.Warning(
                f"FieldLabMiddleware is listed {len(found)} times in MIDDLEWARE, so every "
                "request runs fieldlab's request path once per entry",
                hint="keep one entry, after AuthenticationMiddleware",
                id="fieldlab.W005",
            )
        )
    lab, errors = _load(conf)
    out.extend(errors)
    if lab is not None and found:
        out.extend(_order(conf, lab, middleware, found[0]))
    return out


def fieldlab_checks(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The system check Django runs: every finding about fieldlab's wiring (never raises)."""
    global _ran_by_django
    _ran_by_django = True
    try:
        return _messages()
    except Exception as exc:  # a check must report, never crash manage.py
        return [checks.Warning(f"fieldlab could not check its wiring: {type(exc).__name__}: {exc}", id="fieldlab.W000")]


def register() -> None:
    """Register :func:`fieldlab_checks` with Django (idempotent: the registry is a set)."""
    checks.register(fieldlab_checks)


def report_at_startup() -> None:
    """Log the checks' findings once per process, for servers that run no Django checks (gunicorn, uvicorn).

    Skipped when Django ran the checks itself in this process; silenced ids are
    left out; never raises.
    """
    if _ran_by_django:
        return
    try:
        silenced = set(getattr(settings, "SILENCED_SYSTEM_CHECKS", ()) or ())
        for msg in _messages():
            if msg.id in silenced:
                continue
            text = f"{msg.id}: {msg.msg}" + (f" (HINT: {msg.hint})" if msg.hint else "")
            if text in _logged:
                continue
            _logged.add(text)
            _log.log(logging.ERROR if msg.level >= checks.ERROR else logging.WARNING, "fieldlab: %s", text)
    except Exception:
        _log.debug("fieldlab: start-up check failed", exc_info=True)


register()
