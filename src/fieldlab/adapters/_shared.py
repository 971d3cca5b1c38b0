"""What several adapters share besides the request path: the fault-abort response and a session-kept id."""

from __future__ import annotations

from typing import Any

from .._request import new_visitor_id

__all__ = ["ABORT_CONTENT_TYPE", "SESSION_KEY", "abort_headers", "session_unit_id"]

#: The content type of the response an injected abort fault answers with.
ABORT_CONTENT_TYPE = "text/plain; charset=utf-8"
#: Where the default ``session`` resolver keeps its id inside a cookie-backed session.
SESSION_KEY = "_fieldlab_sid"


def abort_headers(body: bytes) -> list[tuple[str, str]]:
    """The headers of an abort fault's response carrying ``body``."""
    return [("Content-Type", ABORT_CONTENT_TYPE), ("Content-Length", str(len(body)))]


def session_unit_id(session: Any) -> str | None:
    """The ``session`` unit id fieldlab keeps in a framework's session mapping, created on first use."""
    if session is None:
        return None
    try:  # a mapping by behaviour (Flask's session is a proxy that isinstance may not see through)
        sid = session.get(SESSION_KEY)
        if not sid:
            sid = new_visitor_id()
            session[SESSION_KEY] = sid
    except (AttributeError, TypeError):  # not a mapping: no session to keep an id in
        return None
    return str(sid)
