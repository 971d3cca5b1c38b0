"""A Flask app with no fieldlab or OpenTelemetry wiring: ``opentelemetry-instrument`` adds both."""

from flask import Flask, jsonify, request

import fieldlab

app = Flask(__name__)


@app.get("/health")
def health() -> str:
    return "ok"


@app.get("/checkout")
def checkout():  # type: ignore[no-untyped-def]
    ctx = fieldlab.current()
    return jsonify(
        variant=fieldlab.variant("checkout-redesign", "none"),
        user=request.headers.get("X-User-Id"),
        span=ctx is not None and ctx.server_span is not None,
    )
