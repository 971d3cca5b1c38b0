"""Framework adapters: thin layers over the one shared request path in ``fieldlab._request``.

Import the one you need; this package imports no framework:

* ``fieldlab.adapters.wsgi.FieldLabMiddleware``: any WSGI app
* ``fieldlab.adapters.asgi.FieldLabMiddleware``: any ASGI app (Starlette, FastAPI)
* ``fieldlab.adapters.flask.FieldLab``: a Flask extension
* ``fieldlab.adapters.django.FieldLabMiddleware``: Django, WSGI or ASGI, from ``settings.FIELDLAB``
* ``fieldlab.adapters.starlette`` / ``fieldlab.adapters.fastapi``: the ASGI middleware and a FastAPI dependency

Every adapter takes the same options, :class:`Options` (as keyword arguments,
or, for Django, the keys of ``settings.FIELDLAB``).
"""

from __future__ import annotations

from .._request.options import AdapterOptions, Options

__all__ = ["AdapterOptions", "Options"]
