"""The blog under gunicorn (``webapps.djblog.wsgi:application``), OTel spans to FIELDLAB_TEST_SPANS."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapps.djblog.settings")

import django
from opentelemetry.instrumentation.django import DjangoInstrumentor

from .. import common

common.setup_otel("djblog")
django.setup()
DjangoInstrumentor().instrument()

from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()
