"""The blog's views: a templated home page, a login, a health check."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import authenticate, login
from django.http import HttpResponse, JsonResponse
from django.shortcuts import render
from django.template.response import TemplateResponse
from django.urls import path


def health(request: Any) -> HttpResponse:
    return HttpResponse("ok")


def home(request: Any) -> HttpResponse:
    # the view passes no variant: the template reads them with {% load fieldlab %}
    return render(request, "home.html")


def home_lazy(request: Any) -> TemplateResponse:
    return TemplateResponse(request, "home.html")  # rendered later, still inside the middleware


def who(request: Any) -> JsonResponse:
    return JsonResponse({"session_key": request.session.session_key,
                         "user": request.user.pk if request.user.is_authenticated else None})


def do_login(request: Any) -> HttpResponse:
    user = authenticate(request, username=request.POST["username"], password=request.POST["password"])
    if user is None:
        return HttpResponse("no", status=403)
    login(request, user)
    return HttpResponse("in")


urlpatterns = [path("health", health), path("", home), path("lazy", home_lazy), path("who", who),
               path("login", do_login)]
