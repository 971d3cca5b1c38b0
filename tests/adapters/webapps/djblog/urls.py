"""The blog's views: a templated home page, a login, a health check."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import authenticate, login
from django.http import HttpResponse, JsonResponse
from django.shortcuts import render
from django.template.response import TemplateResponse
from django.urls import path
from django.utils.cache import patch_cache_control
from django.views.decorators.cache import cache_page
from django.views.decorators.vary import vary_on_cookie

from fieldlab.adapters.django import vary_on_variants


def health(request: Any) -> HttpResponse:
    return HttpResponse("ok")


def home(request: Any) -> HttpResponse:
    # the view passes no variant: the template reads them with {% load fieldlab %}
    return render(request, "home.html")


def home_lazy(request: Any) -> TemplateResponse:
    return TemplateResponse(request, "home.html")  # rendered later, still inside the middleware


@cache_page(60)
@vary_on_cookie
def cached_home(request: Any) -> HttpResponse:
    """docs/integration.md's manual recipe for cache_page, where vary_on_variants cannot go."""
    response = render(request, "home.html")
    if "fieldlab_visitor" not in request.COOKIES:
        patch_cache_control(response, private=True)  # a first visit: no cookie yet to key the cache on
    return response


@cache_page(60)
def cached_naive(request: Any) -> HttpResponse:
    return render(request, "home.html")


@cache_page(60)
@vary_on_variants
def cached_auto(request: Any) -> HttpResponse:
    """fieldlab's decorator under cache_page: the headers are on the response before cache_page stores it."""
    return render(request, "home.html")


@cache_page(60)
@vary_on_variants
def cached_auto_lazy(request: Any) -> TemplateResponse:
    return TemplateResponse(request, "home.html")  # the template reads its variants when rendered, later


def who(request: Any) -> JsonResponse:
    return JsonResponse(
        {"session_key": request.session.session_key, "user": request.user.pk if request.user.is_authenticated else None}
    )


def do_login(request: Any) -> HttpResponse:
    user = authenticate(request, username=request.POST["username"], password=request.POST["password"])
    if user is None:
        return HttpResponse("no", status=403)
    login(request, user)
    return HttpResponse("in")


urlpatterns = [
    path("health", health),
    path("", home),
    path("lazy", home_lazy),
    path("who", who),
    path("cached", cached_home),
    path("cached-naive", cached_naive),
    path("cached-auto", cached_auto),
    path("cached-auto-lazy", cached_auto_lazy),
    path("login", do_login),
]
