"""The FastAPI test app: ``uvicorn webapps.fastapi_app:app``; views get assignments through a dependency."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, Header
from fastapi.responses import PlainTextResponse
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

from fieldlab.adapters.fastapi import Assignments, FieldLabMiddleware, assignments

from . import common

if common.PROVIDER == "before":
    common.setup_otel("fastapi-test")

fastapi_app = FastAPI()


@fastapi_app.get("/health", response_class=PlainTextResponse)
async def health() -> str:
    return "ok"


@fastapi_app.get("/shop")
def shop(ab: Assignments = Depends(assignments), x_user_id: str | None = Header(default=None)) -> dict[str, Any]:
    # a sync view: FastAPI runs it in a threadpool, with the request's context copied
    payload = common.shop_payload(x_user_id)
    payload["dependency_checkout"] = ab.variant("checkout-redesign")
    return payload


app: Any
if common.ORDER == "otel_outer":
    fastapi_app.add_middleware(FieldLabMiddleware, lab=common.lab(), units=common.UNITS, headers=common.HEADERS)
    FastAPIInstrumentor.instrument_app(fastapi_app)
    app = fastapi_app
else:
    FastAPIInstrumentor.instrument_app(fastapi_app)
    app = FieldLabMiddleware(fastapi_app, lab=common.lab(), units=common.UNITS, headers=common.HEADERS)

if common.PROVIDER == "after":
    common.setup_otel("fastapi-test")
