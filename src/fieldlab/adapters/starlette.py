"""fieldlab for Starlette: the pure ASGI middleware, added the Starlette way.

>>> app.add_middleware(FieldLabMiddleware, lab=lab, units={"user": "header:X-User-Id"})  # doctest: +SKIP

Callables receive a ``starlette.requests.Request``; ``user`` defaults to
``request.user`` when authenticated, ``session`` to an id kept in ``request.session``.
"""

from __future__ import annotations

from .asgi import SESSION_KEY, FieldLabMiddleware

__all__ = ["SESSION_KEY", "FieldLabMiddleware"]
