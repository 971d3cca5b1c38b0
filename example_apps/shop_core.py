"""The shop all three example apps share: catalog, search, checkout, and the OpenTelemetry set-up.

The framework files (``flask_shop.py``, ``django_shop.py``, ``starlette_shop.py``)
only route requests here; everything experiment-related is in this module:

* ``search-ranking`` switches the ranking code path (``@fieldlab.switch``) and
  sets the page size through a variant parameter;
* ``checkout-redesign`` switches the checkout flow; ``free-shipping`` (same
  layer, so never together with it) sets the shipping threshold;
* ``catalog-badges`` decides badges per anonymous visitor, exposed on assignment;
* the ``ux-holdout`` keeps 10 % of users out of the UX experiments;
* ``slow-inventory`` makes the inventory reservation slow (and sometimes time
  out) for 2 % of users, through the fault point ``inventory.reserve``: how do
  checkout latency and conversion hold up when a dependency degrades?

Telemetry: spans go to OTLP JSON lines files in ``$FIELDLAB_SPANS_DIR``
(default ``./fieldlab-spans``), or to ``$OTEL_EXPORTER_OTLP_ENDPOINT`` over
OTLP/HTTP when that is set and ``opentelemetry-exporter-otlp-proto-http`` is installed.
"""

from __future__ import annotations

import contextvars
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fieldlab
import fieldlab.faults
from fieldlab import Lab

__all__ = [
    "CATALOG",
    "UNITS",
    "HEADERS",
    "load_lab",
    "setup_telemetry",
    "catalog_page",
    "search",
    "start_checkout",
    "place_order",
]

HERE = os.path.dirname(os.path.abspath(__file__))

#: Who the user is. A real shop resolves this from its login (Django's request.user is the
#: default there); the examples read a header so the demo can simulate many users.
UNITS = {"user": "header:X-User-Id"}
#: Request headers that targeting rules may use.
HEADERS = ["X-Country"]

CATALOG: list[dict[str, Any]] = [
    {"id": i, "name": name, "price": price, "category": cat, "tags": tags, "sales": sales}
    for i, (name, price, cat, tags, sales) in enumerate(
        [
            ("Trail running shoes", 89.0, "shoes", "running trail outdoor sport", 420),
            ("Road running shoes", 79.0, "shoes", "running road sport", 610),
            ("Leather boots", 129.0, "shoes", "boots leather winter", 150),
            ("Canvas sneakers", 45.0, "shoes", "casual sneakers summer", 720),
            ("Rain jacket", 99.0, "apparel", "jacket rain outdoor waterproof", 300),
            ("Down jacket", 189.0, "apparel", "jacket winter warm down", 210),
            ("Merino t-shirt", 39.0, "apparel", "shirt merino sport running", 540),
            ("Cotton t-shirt", 15.0, "apparel", "shirt cotton casual summer", 980),
            ("Hiking socks", 12.0, "apparel", "socks hiking outdoor wool", 870),
            ("Running shorts", 29.0, "apparel", "shorts running sport summer", 400),
            ("Day backpack", 59.0, "gear", "backpack hiking outdoor travel", 330),
            ("Travel duffel", 79.0, "gear", "bag travel duffel", 120),
            ("Water bottle", 19.0, "gear", "bottle hydration outdoor sport", 1200),
            ("Headlamp", 35.0, "gear", "light headlamp outdoor camping", 260),
            ("Tent for two", 249.0, "gear", "tent camping outdoor", 80),
            ("Sleeping bag", 139.0, "gear", "sleeping bag camping warm", 95),
            ("Trekking poles", 69.0, "gear", "poles hiking trekking outdoor", 140),
            ("Sunglasses", 49.0, "accessories", "sunglasses summer sport", 510),
            ("Wool beanie", 22.0, "accessories", "hat beanie wool winter warm", 390),
            ("Running watch", 199.0, "accessories", "watch running gps sport", 230),
        ]
    )
]
_BY_ID = {p["id"]: p for p in CATALOG}
#: What "semantic" ranking knows that keyword matching does not.
_SYNONYMS = {
    "warm": "winter down wool",
    "rain": "waterproof jacket",
    "run": "running",
    "hike": "hiking trekking",
    "camp": "camping tent",
    "summer": "shorts sunglasses",
    "shoe": "shoes sneakers boots",
}


def load_lab() -> Lab:
    """The shop's lab: ``$FIELDLAB_CONFIG`` or ``example_apps/shop.toml``, reloaded while the app runs."""
    return Lab.from_file(os.environ.get("FIELDLAB_CONFIG", os.path.join(HERE, "shop.toml")))


def setup_telemetry(service: str) -> None:
    """Set the global tracer provider: OTLP/HTTP when an endpoint is configured, else a local JSON lines file."""
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporter: Any = None
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()  # reads the endpoint and headers from the OTEL_* env vars
        except ImportError:
            print(
                f"{service}: OTEL_EXPORTER_OTLP_ENDPOINT is set but opentelemetry-exporter-otlp-proto-http "
                "is not installed; writing spans to a local file instead",
                flush=True,
            )
    if exporter is None:
        from opentelemetry.exporter.otlp.json.file import FileSpanExporter

        directory = os.environ.get("FIELDLAB_SPANS_DIR", "fieldlab-spans")
        os.makedirs(directory, exist_ok=True)
        exporter = FileSpanExporter(os.path.join(directory, f"spans-{service}-{os.getpid()}.jsonl"))
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    trace.set_tracer_provider(provider)


def catalog_page() -> dict[str, Any]:
    """The catalog, with bestseller badges for visitors in ``catalog-badges`` / on."""
    badges = fieldlab.param("catalog-badges", "badges", False)
    items = []
    for p in CATALOG:
        item = {"id": p["id"], "name": p["name"], "price": p["price"]}
        if badges and p["sales"] >= 500:
            item["badge"] = "bestseller"
        items.append(item)
    return {"products": items}


def _keyword_score(product: dict[str, Any], words: list[str]) -> float:
    text = f"{product['name']} {product['tags']}".lower()
    return float(sum(text.count(w) for w in words))


@fieldlab.switch("search-ranking")
def rank(query: str) -> list[dict[str, Any]]:
    """The default ranking: keyword matches, ties by price."""
    words = query.lower().split()
    scored = [(s, p) for p in CATALOG if (s := _keyword_score(p, words)) > 0]
    return [p for s, p in sorted(scored, key=lambda sp: (-sp[0], sp[1]["price"]))]


@rank.variant("semantic")
@rank.variant("semantic-short")
def rank_semantic(query: str) -> list[dict[str, Any]]:
    """Semantic ranking: expands the query with related terms and favours popular items (a little slower)."""
    time.sleep(0.002)
    words = query.lower().split()
    expanded = words + [x for w in words for k, v in _SYNONYMS.items() if w.startswith(k) for x in v.split()]
    scored = [(s + p["sales"] / 2000, p) for p in CATALOG if (s := _keyword_score(p, expanded)) > 0]
    return [p for s, p in sorted(scored, key=lambda sp: -sp[0])]


def search(query: str) -> dict[str, Any]:
    page_size = int(fieldlab.param("search-ranking", "page_size", 10))
    results = rank(query)[:page_size]
    return {"query": query, "results": [{"id": p["id"], "name": p["name"], "price": p["price"]} for p in results]}


@fieldlab.switch("checkout-redesign")
def checkout_flow() -> dict[str, Any]:
    """The classic three-step checkout: address, shipping, payment."""
    return {"layout": "three-step", "steps": ["address", "shipping", "payment"]}


@checkout_flow.variant("one-page")
def checkout_flow_one_page() -> dict[str, Any]:
    return {"layout": "one-page", "steps": ["checkout"]}


def start_checkout() -> dict[str, Any]:
    flow = checkout_flow()
    flow["free_shipping_from"] = float(fieldlab.param("free-shipping", "threshold", 50.0))
    return flow


# The inventory service's timeout, as fault injection may raise it (allow-listed by name).
fieldlab.faults.register_exception("inventory_timeout", TimeoutError)


@fieldlab.fault_point("inventory.reserve")
def reserve_stock(item_ids: list[int]) -> None:
    """Reserve stock for an order: stands in for a call to an inventory service."""
    time.sleep(0.001)


#: The shop's client timeout on the inventory service: an order whose reservation takes longer is a 504.
#: This is what a latency canary at ``inventory.reserve`` finds: the shop breaks above about 300 ms.
INVENTORY_TIMEOUT_S = 0.3
_inventory_pool: ThreadPoolExecutor | None = None


def call_inventory(item_ids: list[int]) -> None:
    """Reserve stock with the client timeout: the caller gives up at the deadline, as an HTTP client with a
    read timeout does (the late call finishes in the background). The request's context (fieldlab's
    assignments) goes with the call, so fault points inside it see the request."""
    global _inventory_pool
    if _inventory_pool is None:
        _inventory_pool = ThreadPoolExecutor(max_workers=256, thread_name_prefix="inventory-client")
    future = _inventory_pool.submit(contextvars.copy_context().run, reserve_stock, item_ids)
    future.result(timeout=INVENTORY_TIMEOUT_S)  # TimeoutError past the deadline


def place_order(item_ids: list[int]) -> tuple[int, dict[str, Any]]:
    """Price an order: (status, body). Unknown items are a 400, an inventory timeout a 504, never a crash."""
    items = [_BY_ID.get(i) for i in item_ids]
    if not items or any(p is None for p in items):
        return 400, {"error": "unknown or missing item ids", "known": sorted(_BY_ID)}
    try:
        call_inventory(item_ids)
    except TimeoutError:
        return 504, {"error": "inventory service timed out; nothing was charged"}
    subtotal = round(sum(p["price"] for p in items if p), 2)
    threshold = float(fieldlab.param("free-shipping", "threshold", 50.0))
    shipping = 0.0 if subtotal >= threshold else 4.95
    return 200, {
        "items": len(items),
        "subtotal": subtotal,
        "shipping": shipping,
        "total": round(subtotal + shipping, 2),
    }
