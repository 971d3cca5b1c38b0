"""fieldlab as a Django app: system checks and the ``{% load fieldlab %}`` template tags.

settings.py::

    INSTALLED_APPS = [..., "fieldlab.adapters.django_app"]   # app label "fieldlab"
    MIDDLEWARE = [..., "django.contrib.auth.middleware.AuthenticationMiddleware",
                  "fieldlab.adapters.django.FieldLabMiddleware"]

The app registers fieldlab's system checks (``fieldlab.E001``...; see
:mod:`.checks`), so ``manage.py check`` and ``runserver`` report wiring
mistakes, and makes the template tag library :mod:`.templatetags.fieldlab`
loadable. It has no models and no migrations. The middleware works without
the app; it then registers the checks itself when it is imported and logs
their findings once at start-up.
"""

from __future__ import annotations

__all__: list[str] = []
