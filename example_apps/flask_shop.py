"""The example shop on Flask.

Run:  gunicorn --chdir example_apps flask_shop:app          (or: python example_apps/flask_shop.py)
Try:  curl -H 'X-User-Id: alice' 'localhost:8000/search?q=warm+jacket'
"""

from __future__ import annotations

import os

import shop_core
from flask import Flask, jsonify, request
from opentelemetry.instrumentation.flask import FlaskInstrumentor

from fieldlab.adapters.flask import FieldLab

shop_core.setup_telemetry("shop-flask")

app = Flask(__name__)
FlaskInstrumentor().instrument_app(app)
FieldLab(app, lab=shop_core.load_lab(), units=shop_core.UNITS, headers=shop_core.HEADERS)


@app.get("/health")
def health() -> str:
    return "ok"


@app.get("/")
def catalog():  # type: ignore[no-untyped-def]
    return jsonify(shop_core.catalog_page())


@app.get("/search")
def search():  # type: ignore[no-untyped-def]
    return jsonify(shop_core.search(request.args.get("q", "")))


@app.get("/checkout")
def checkout():  # type: ignore[no-untyped-def]
    return jsonify(shop_core.start_checkout())


@app.post("/orders")
def orders():  # type: ignore[no-untyped-def]
    body = request.get_json(silent=True) or {}
    status, payload = shop_core.place_order(list(body.get("items") or []))
    return jsonify(payload), status


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
