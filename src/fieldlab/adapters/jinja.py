"""fieldlab's read functions as Jinja globals, so templates read variants without views passing them.

Flask's :class:`~fieldlab.adapters.flask.FieldLab` installs them in
``app.jinja_env``; elsewhere (Starlette's ``Jinja2Templates``, Django's Jinja2
backend) call :func:`install_globals` on the environment::

    templates = Jinja2Templates(directory="templates")
    install_globals(templates.env)

Then ``{{ variant("home-quote", "control") }}`` and
``{{ param("search-ranking", "page_size", 10) }}`` work in any template
rendered during a request. They are :func:`fieldlab.variant` and
:func:`fieldlab.param`: a read in a template marks the experiment exposed as a
read in code does, and outside a request they give the default. No Jinja
import is needed: this only fills ``env.globals``.
"""

from __future__ import annotations

import logging
from typing import Any

from ..context import param, variant

__all__ = ["TEMPLATE_GLOBALS", "install_globals"]

_log = logging.getLogger("fieldlab")

#: Global name -> function installed by :func:`install_globals`.
TEMPLATE_GLOBALS = {"variant": variant, "param": param}


def install_globals(env: Any) -> list[str]:
    """Add ``variant`` and ``param`` to ``env.globals``; returns the names added.

    A global the application already defined under one of these names is kept
    (fieldlab never replaces the app's own), and a warning names the fieldlab
    function to register under another name.
    """
    added = []
    for name, fn in TEMPLATE_GLOBALS.items():
        existing = env.globals.get(name)
        if existing is None or existing is fn:
            env.globals[name] = fn
            added.append(name)
        else:
            _log.warning(
                "fieldlab: the template global %r is already defined, so fieldlab did not install its own; "
                "register fieldlab.%s under another name (env.globals['ab_%s'] = fieldlab.%s)",
                name,
                name,
                name,
                name,
            )
    return added
