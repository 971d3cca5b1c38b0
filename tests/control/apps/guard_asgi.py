"""Starlette under uvicorn, following the lab state in Redis."""

from __future__ import annotations

import guard_common as common
from opentelemetry.instrumentation.starlette import StarletteInstrumentor
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from fieldlab.adapters.asgi import FieldLabMiddleware

lab = common.setup("asgi")


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def checkout(request: Request) -> JSONResponse:
    body, status = common.answer(lab, "checkout")
    return JSONResponse(body, status_code=status)


async def search(request: Request) -> JSONResponse:
    body, status = common.answer(lab, "search")
    return JSONResponse(body, status_code=status)


app = Starlette(routes=[Route("/health", health), Route("/checkout", checkout), Route("/search", search)])
app.add_middleware(FieldLabMiddleware, lab=lab, units=common.UNITS)
StarletteInstrumentor().instrument_app(app)
