"""A FastAPI app with no fieldlab or OpenTelemetry wiring: ``opentelemetry-instrument`` adds both."""

from fastapi import FastAPI, Header

import fieldlab

app = FastAPI()


@app.get("/health")
async def health() -> str:
    return "ok"


@app.get("/checkout")
async def checkout(x_user_id: str | None = Header(default=None)) -> dict:
    ctx = fieldlab.current()
    return {
        "variant": fieldlab.variant("checkout-redesign", "none"),
        "user": x_user_id,
        "span": ctx is not None and ctx.server_span is not None,
    }
