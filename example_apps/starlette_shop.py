"""The example shop on FastAPI (Starlette underneath), async views with a fieldlab dependency.

Run:  uvicorn --app-dir example_apps starlette_shop:app          (or: python example_apps/starlette_shop.py)
Try:  curl -H 'X-User-Id: alice' 'localhost:8000/search?q=rain'
"""

from __future__ import annotations

import os
from typing import Any

import shop_core
from fastapi import Body, Depends, FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

from fieldlab.adapters.fastapi import Assignments, FieldLabMiddleware, assignments

shop_core.setup_telemetry("shop-fastapi")

app = FastAPI(title="fieldlab example shop")
app.add_middleware(FieldLabMiddleware, lab=shop_core.load_lab(), units=shop_core.UNITS, headers=shop_core.HEADERS)
FastAPIInstrumentor.instrument_app(app)


@app.get("/health", response_class=PlainTextResponse)
async def health() -> str:
    return "ok"


@app.get("/")
async def catalog() -> dict[str, Any]:
    return shop_core.catalog_page()


@app.get("/search")
async def search(q: str = "") -> dict[str, Any]:
    return shop_core.search(q)


@app.get("/checkout")
async def checkout(ab: Assignments = Depends(assignments)) -> dict[str, Any]:
    flow = shop_core.start_checkout()
    flow["variant"] = ab.variant("checkout-redesign")  # e.g. for client-side analytics
    return flow


@app.post("/orders")
def orders(body: dict[str, Any] = Body(default_factory=dict)) -> JSONResponse:
    # A plain def: placing an order calls the (blocking) inventory service, so
    # FastAPI runs it in its threadpool, where fieldlab's context follows it.
    status, payload = shop_core.place_order(list(body.get("items") or []))
    return JSONResponse(payload, status_code=status)


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
