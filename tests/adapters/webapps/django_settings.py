"""Django settings of the test app: no database, fieldlab configured from FIELDLAB."""

from __future__ import annotations

from . import common

SECRET_KEY = "test-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "webapps.django_urls"
INSTALLED_APPS: list[str] = []
DATABASES: dict = {}
USE_TZ = True
FIELDLAB_MIDDLEWARE = "fieldlab.adapters.django.FieldLabMiddleware"
MIDDLEWARE = ["django.middleware.common.CommonMiddleware", FIELDLAB_MIDDLEWARE]
FIELDLAB = {
    "lab": common.LAB_PATH,
    "units": {"user": "header:X-User-Id", "team": "webapps.common.team"},
    "headers": common.HEADERS,
}
