"""The example shop on Django, in one file (settings, views, URLs).

Run:  gunicorn --chdir example_apps django_shop:application                    (WSGI)
      uvicorn --app-dir example_apps django_shop:asgi_application                (ASGI)
      python example_apps/django_shop.py runserver                               (development)
Try:  curl -H 'X-User-Id: alice' localhost:8000/checkout

fieldlab reads its configuration from ``settings.FIELDLAB``; in a shop with
logins, drop the "units" entry and the default ``request.user`` is used.
"""

from __future__ import annotations

import json
import os
import sys

import django
import shop_core
from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY", "example-shop-not-secret"),
        ALLOWED_HOSTS=["127.0.0.1", "localhost"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[],
        DATABASES={},
        USE_TZ=True,
        MIDDLEWARE=["django.middleware.common.CommonMiddleware", "fieldlab.adapters.django.FieldLabMiddleware"],
        FIELDLAB={
            "lab": os.environ.get("FIELDLAB_CONFIG", os.path.join(shop_core.HERE, "shop.toml")),
            "units": shop_core.UNITS,
            "headers": shop_core.HEADERS,
        },
    )
    shop_core.setup_telemetry("shop-django")
    django.setup()
    from opentelemetry.instrumentation.django import DjangoInstrumentor

    DjangoInstrumentor().instrument()


def health(request):  # type: ignore[no-untyped-def]
    return HttpResponse("ok")


def catalog(request):  # type: ignore[no-untyped-def]
    return JsonResponse(shop_core.catalog_page())


def search(request):  # type: ignore[no-untyped-def]
    return JsonResponse(shop_core.search(request.GET.get("q", "")))


def checkout(request):  # type: ignore[no-untyped-def]
    return JsonResponse(shop_core.start_checkout())


@csrf_exempt
@require_POST
def orders(request):  # type: ignore[no-untyped-def]
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        body = {}
    status, payload = shop_core.place_order(list(body.get("items") or []))
    return JsonResponse(payload, status=status)


urlpatterns = [
    path("health", health),
    path("", catalog),
    path("search", search),
    path("checkout", checkout),
    path("orders", orders),
]

from django.core.asgi import get_asgi_application  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
asgi_application = get_asgi_application()

if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv if len(sys.argv) > 1 else [sys.argv[0], "runserver", "127.0.0.1:8000"])
