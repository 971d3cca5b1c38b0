"""The Django test app, WSGI (``gunicorn webapps.django_app:application``) and ASGI (same module with FIELDLAB_TEST_DJANGO=asgi)."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapps.django_settings")

import django
from django.conf import settings
from opentelemetry.instrumentation.django import DjangoInstrumentor

from . import common

if common.PROVIDER == "before":
    common.setup_otel("django-test")

django.setup()
DjangoInstrumentor().instrument()  # puts its middleware first in settings.MIDDLEWARE
if common.ORDER == "fieldlab_outer":
    middleware = [m for m in settings.MIDDLEWARE if m != settings.FIELDLAB_MIDDLEWARE]
    settings.MIDDLEWARE = [settings.FIELDLAB_MIDDLEWARE, *middleware]

if os.environ.get("FIELDLAB_TEST_DJANGO") == "asgi":
    from django.core.asgi import get_asgi_application

    application = get_asgi_application()
else:
    from django.core.wsgi import get_wsgi_application

    application = get_wsgi_application()

if common.PROVIDER == "after":
    common.setup_otel("django-test")
