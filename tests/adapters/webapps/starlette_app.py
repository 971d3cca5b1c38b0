"""The Starlette test app: ``uvicorn webapps.starlette_app:app`` from tests/adapters."""

from __future__ import annotations

import asyncio
from typing import Any

from opentelemetry.instrumentation.starlette import StarletteInstrumentor
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

import fieldlab
from fieldlab.adapters.starlette import FieldLabMiddleware

from . import common

if common.PROVIDER == "before":
    common.setup_otel("starlette-test")


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def shop(request: Request) -> JSONResponse:
    await asyncio.sleep(0.01)  # let concurrent requests interleave
    payload = common.shop_payload(request.headers.get("X-User-Id"))
    # read again inside a separate task: the copied context carries the same assignments
    payload["task_checkout"] = await asyncio.create_task(_read_later())
    return JSONResponse(payload)


async def _read_later() -> Any:
    await asyncio.sleep(0)
    return fieldlab.variant("checkout-redesign")


starlette_app = Starlette(routes=[Route("/health", health), Route("/shop", shop)])
app: Any
if common.ORDER == "otel_outer":
    starlette_app.add_middleware(FieldLabMiddleware, lab=common.lab(), units=common.UNITS, headers=common.HEADERS)
    StarletteInstrumentor.instrument_app(starlette_app)
    app = starlette_app
else:
    StarletteInstrumentor.instrument_app(starlette_app)
    app = FieldLabMiddleware(starlette_app, lab=common.lab(), units=common.UNITS, headers=common.HEADERS)

if common.PROVIDER == "after":
    common.setup_otel("starlette-test")
