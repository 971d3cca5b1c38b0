"""Requests to a Django project with no fieldlab wiring (``DJANGO_SETTINGS_MODULE=zero_django_settings``), run
under ``opentelemetry-instrument python``. Prints one JSON line per request: the variant the view saw, and
MIDDLEWARE as the handler loaded it."""

import json
import sys

import django
from django.conf import settings

django.setup()

from django.test import Client

client = Client()
for user in sys.argv[1:]:
    body = client.get("/checkout", headers={"X-User-Id": user}).json()
    print(json.dumps({"user": user, "variant": body["variant"], "middleware": list(settings.MIDDLEWARE)}), flush=True)
