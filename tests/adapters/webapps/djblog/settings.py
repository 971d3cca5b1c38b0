"""Settings of the test blog; see the package docs for the env vars that pick a wiring."""

from __future__ import annotations

import os
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SECRET_KEY = "test-only-blog"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "webapps.djblog.urls"
USE_TZ = True
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJBLOG_DB") or os.path.join(tempfile.gettempdir(), "djblog.sqlite3"),
    }
}
INSTALLED_APPS = ["django.contrib.auth", "django.contrib.contenttypes", "django.contrib.sessions"]
if os.environ.get("DJBLOG_APP", "1") == "1":
    INSTALLED_APPS.append("fieldlab.adapters.django_app")
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [os.path.join(HERE, "templates")],
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]
if os.environ.get("DJBLOG_APP", "1") != "1":  # without the app, the tag library is named in OPTIONS
    TEMPLATES[0]["OPTIONS"]["libraries"] = {"fieldlab": "fieldlab.adapters.django_app.templatetags.fieldlab"}

_SESSION = "django.contrib.sessions.middleware.SessionMiddleware"
_AUTH = "django.contrib.auth.middleware.AuthenticationMiddleware"
_FIELDLAB = "fieldlab.adapters.django.FieldLabMiddleware"
_ORDER = os.environ.get("DJBLOG_ORDER", "good")
if _ORDER == "fieldlab_first":
    MIDDLEWARE = [_FIELDLAB, _SESSION, "django.middleware.csrf.CsrfViewMiddleware", _AUTH]
elif _ORDER == "no_auth":
    MIDDLEWARE = [_FIELDLAB]
elif _ORDER == "none":
    MIDDLEWARE = [_SESSION, _AUTH]
elif _ORDER == "sitecache":  # Django's per-site cache: Update first, Fetch last, fieldlab inside
    MIDDLEWARE = [
        "django.middleware.cache.UpdateCacheMiddleware",
        _SESSION,
        "django.middleware.csrf.CsrfViewMiddleware",
        _AUTH,
        _FIELDLAB,
        "django.middleware.cache.FetchFromCacheMiddleware",
    ]
elif _ORDER == "twice":
    MIDDLEWARE = [_SESSION, "django.middleware.csrf.CsrfViewMiddleware", _AUTH, _FIELDLAB, _FIELDLAB]
else:
    MIDDLEWARE = [_SESSION, "django.middleware.csrf.CsrfViewMiddleware", _AUTH, _FIELDLAB]

_MODE = os.environ.get("DJBLOG_FIELDLAB", "ok")
FIELDLAB: object = {"lab": os.path.join(HERE, "blog.toml"), "create_session": True}
if _MODE == "missing":
    del FIELDLAB
elif _MODE == "not_dict":
    FIELDLAB = "blog.toml"
elif _MODE == "unknown_key":
    FIELDLAB = {"lab": os.path.join(HERE, "blog.toml"), "unit": {"user": "header:X-User-Id"}}
elif _MODE == "bad_lab":
    FIELDLAB = {"lab": os.path.join(HERE, "bad.toml")}
elif _MODE == "no_create":
    FIELDLAB = {"lab": os.path.join(HERE, "blog.toml")}
elif _MODE == "bad_create":
    FIELDLAB = {"lab": os.path.join(HERE, "blog.toml"), "create_session": "yes"}
elif _MODE == "no_session_exp":
    FIELDLAB = {"lab": os.path.join(HERE, "nosession.toml")}
elif _MODE == "no_session_exp_no_headers":  # the app says it handles caching itself (and does not)
    FIELDLAB = {"lab": os.path.join(HERE, "nosession.toml"), "cache_headers": False}
