"""Starlette under uvicorn: async and sync fault points, an exception mapped to 504, OTel outermost."""

from __future__ import annotations

import time

import fault_common as common
from opentelemetry.instrumentation.starlette import StarletteInstrumentor
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

import fieldlab
from fieldlab.adapters.asgi import FieldLabMiddleware

lab = common.setup("fault-asgi")


@fieldlab.fault_point("db.query")
async def query_db() -> int:
    return 3


@fieldlab.fault_point("db.query")
def query_db_sync() -> int:
    return 3


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def db(request: Request) -> JSONResponse:
    t0 = time.monotonic()
    rows = await query_db()
    return JSONResponse({"rows": rows, "took_ms": (time.monotonic() - t0) * 1000})


def sync_db(request: Request) -> JSONResponse:  # Starlette runs it in a worker thread
    t0 = time.monotonic()
    rows = query_db_sync()
    return JSONResponse({"rows": rows, "took_ms": (time.monotonic() - t0) * 1000})


async def charge(request: Request) -> PlainTextResponse:
    async with fieldlab.fault_point("payments.charge"):
        return PlainTextResponse("charged")


async def timeout_handler(request: Request, exc: Exception) -> PlainTextResponse:
    return PlainTextResponse("upstream timeout", status_code=504)


app = Starlette(
    routes=[
        Route("/health", health),
        Route("/db", db),
        Route("/sync-db", sync_db),
        Route("/charge", charge, methods=["POST"]),
    ],
    exception_handlers={TimeoutError: timeout_handler},
)
app.add_middleware(FieldLabMiddleware, lab=lab, units=common.UNITS)
StarletteInstrumentor.instrument_app(app)
