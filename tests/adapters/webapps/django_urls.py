"""URLs of the Django test app: a sync and an async view over the same shop logic."""

from __future__ import annotations

from django.http import HttpResponse, JsonResponse
from django.urls import path

from . import common


def health(request):  # type: ignore[no-untyped-def]
    return HttpResponse("ok")


def shop(request):  # type: ignore[no-untyped-def]
    return JsonResponse(common.shop_payload(request.headers.get("X-User-Id")))


async def shop_async(request):  # type: ignore[no-untyped-def]
    return JsonResponse(common.shop_payload(request.headers.get("X-User-Id")))


urlpatterns = [path("health", health), path("shop", shop), path("shop-async", shop_async)]
