"""Opt-in session creation for the ``session`` unit: ``FIELDLAB = {..., "create_session": True}``.

Django gives a visitor a session key only once something writes to the
session, so an anonymous visitor has none and is never in a ``session``
experiment (reason ``no_unit``). With ``create_session`` the middleware saves
the (empty) session before assigning when a running ``session`` experiment
needs a key and the request has none, so the visitor gets a key, a variant,
and the session cookie on the response (``SessionMiddleware`` sends it).

It only acts when ``session`` uses the default resolver (no
``FIELDLAB['units']['session']``) and ``request.session`` exists. It never
raises: a failing session store means no key, the default path, logged once.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["SessionCreator"]

_log = logging.getLogger("fieldlab")


class SessionCreator:
    """Saves a request's new session when a running ``session`` experiment needs its key."""

    def __init__(self, lab: Any) -> None:
        self.lab = lab
        self._state: Any = None
        self._needed = False
        self._failed_once = False

    @classmethod
    def from_setting(cls, conf: Any, lab: Any) -> SessionCreator | None:
        """A creator when ``FIELDLAB['create_session']`` is true and the session unit is fieldlab's default."""
        if not isinstance(conf, dict) or conf.get("create_session") is not True:
            return None
        if "session" in (conf.get("units") or {}):
            return None  # the app resolves the session unit itself
        return cls(lab)

    def needed(self) -> bool:
        """True while a running experiment uses the ``session`` unit (recomputed when the config changes)."""
        state = self.lab._state
        if state is not self._state:
            self._needed = any(e.unit == "session" and e.status == "running" for e in state.experiments.values())
            self._state = state
        return self._needed

    def _new_session(self, request: Any) -> Any:
        session = getattr(request, "session", None)
        if session is None or session.session_key is not None or not self.needed():
            return None
        return session

    def _failed(self) -> None:
        if not self._failed_once:
            self._failed_once = True
            _log.warning(
                "fieldlab: creating a session for the session unit failed; such requests get no session unit",
                exc_info=True,
            )

    def __call__(self, request: Any) -> bool:
        """Create the session of ``request`` if it needs one (sync stacks); True when it did."""
        try:
            session = self._new_session(request)
            if session is not None:
                session.save()
                return True
        except Exception:
            self._failed()
        return False

    async def acall(self, request: Any) -> bool:
        """The same for async stacks: the session store's ``asave`` (Django 5), else ``save`` in a thread."""
        try:
            session = self._new_session(request)
            if session is None:
                return False
            asave = getattr(session, "asave", None)
            if asave is not None:
                await asave()
            else:
                from asgiref.sync import sync_to_async

                await sync_to_async(session.save)()
            return True
        except Exception:
            self._failed()
        return False
