"""Settings (and URLs) of the one-file Django project of the zero-code wiring test: no fieldlab in them."""

from django.http import JsonResponse
from django.urls import path

import fieldlab

ROOT_URLCONF = __name__
ALLOWED_HOSTS = ["*"]
SECRET_KEY = "test-only"
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
INSTALLED_APPS = ["django.contrib.auth", "django.contrib.contenttypes", "django.contrib.sessions"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}


def checkout(request):  # type: ignore[no-untyped-def]
    return JsonResponse({"variant": fieldlab.variant("checkout-redesign", "none")})


urlpatterns = [path("checkout", checkout)]
