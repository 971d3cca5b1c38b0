"""The blog under uvicorn (``webapps.djblog.asgi:application``), OTel spans to FIELDLAB_TEST_SPANS."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapps.djblog.settings")

import django
from opentelemetry.instrumentation.django import DjangoInstrumentor

from .. import common

common.setup_otel("djblog-asgi")
django.setup()
DjangoInstrumentor().instrument()  # ASGI requests are recorded because opentelemetry-instrumentation-asgi is installed

from django.core.asgi import get_asgi_application

application = get_asgi_application()
