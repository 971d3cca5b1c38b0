"""The blog under gunicorn (``webapps.djblog.wsgi:application``), OTel spans to FIELDLAB_TEST_SPANS."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapps.djblog.settings")

import django  # noqa: E402
from opentelemetry.instrumentation.django import DjangoInstrumentor  # noqa: E402

from .. import common  # noqa: E402

common.setup_otel("djblog")
django.setup()
DjangoInstrumentor().instrument()

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
