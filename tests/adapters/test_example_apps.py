"""Smoke tests of the example shops: each under its real server, spans to a file, read back."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import requests
from serverkit import Server, read_spans

from fieldlab import Lab, telemetry
from fieldlab import attributes as A

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "example_apps"
SHOPS = [
    ("flask", "gunicorn", "flask_shop:app"),
    ("django-wsgi", "gunicorn", "django_shop:application"),
    ("django-asgi", "uvicorn", "django_shop:asgi_application"),
    ("fastapi", "uvicorn", "starlette_shop:app"),
]


class ShopServer(Server):
    def command(self) -> list[str]:
        cmd = super().command()
        flag = "--chdir" if self.server == "gunicorn" else "--app-dir"
        cmd[cmd.index(flag) + 1] = str(EXAMPLES)
        return cmd


@pytest.mark.parametrize("name, server, target", SHOPS, ids=[s[0] for s in SHOPS])
def test_shop_serves_and_records_its_experiments(name: str, server: str, target: str, tmp_path: Path) -> None:
    env = {"FIELDLAB_SPANS_DIR": str(tmp_path / "spans"), "OTEL_EXPORTER_OTLP_ENDPOINT": ""}
    shop = ShopServer(server, target, tmp_path, env)
    shop.env.pop("OTEL_EXPORTER_OTLP_ENDPOINT")
    shop.start()
    lab = Lab.from_file(EXAMPLES / "shop.toml", reload_interval=0)
    users = [f"shopper-{i}" for i in range(40)]
    try:
        with requests.Session() as http:
            for user in users:
                h = {"X-User-Id": user}
                assert http.get(shop.url + "/", headers=h, timeout=10).status_code == 200
                found = http.get(shop.url + "/search", params={"q": "warm jacket"}, headers=h, timeout=10).json()
                page_size = lab.assign("search-ranking", user).params.get("page_size", 10)
                assert 0 < len(found["results"]) <= page_size
                flow = http.get(shop.url + "/checkout", headers=h, timeout=10).json()
                expected = lab.assign("checkout-redesign", user).variant
                assert flow["layout"] == ("one-page" if expected == "one-page" else "three-step")
                order = http.post(shop.url + "/orders", json={"items": [1, 4]}, headers=h, timeout=10)
                if lab.assign("slow-inventory", user).variant == "slow":  # an injected inventory timeout is a 504
                    assert order.status_code in (200, 504)
                else:
                    assert order.status_code == 200 and order.json()["subtotal"] == 178.0
                assert http.post(shop.url + "/orders", json={"items": [999]}, headers=h, timeout=10).status_code == 400
            # the slow-inventory fault experiment: its users' orders go through the fault point
            slow_users = [
                u for u in (f"buyer-{i}" for i in range(2000)) if lab.assign("slow-inventory", u).variant == "slow"
            ][:3]
            assert slow_users
            for user in slow_users:
                for _ in range(2):
                    order = http.post(
                        shop.url + "/orders", json={"items": [2]}, headers={"X-User-Id": user}, timeout=10
                    )
                    assert order.status_code in (200, 504)
    finally:
        shop.stop()  # flushes the batch span processor
    all_spans = read_spans(tmp_path / "spans")
    faulted = [s for s in all_spans if s["kind"] == 2 and s["attrs"].get(A.FAULT_INJECTED) is True]
    assert len(faulted) >= 6, "every order of a slow-variant user has an injected fault"
    for s in faulted:
        assert s["attrs"][A.variant_attr("slow-inventory")] == "slow"
    fault_events = [e for s in all_spans for e in s["events"] if e["name"] == A.FAULT_EVENT]
    assert any(
        e["attrs"][A.FAULT_POINT] == "inventory.reserve" and e["attrs"][A.FAULT_KIND] == "latency" for e in fault_events
    )
    spans = [s for s in all_spans if s["kind"] == 2 and A.CONFIG_VERSION in s["attrs"]]
    hasher = telemetry.UnitHasher(telemetry.unit_hash_key(lab))
    by_user: dict[str, list[dict[str, Any]]] = {}
    for s in spans:
        by_user.setdefault(s["attrs"].get(A.unit_attr("user"), ""), []).append(s)
    held = 0
    for user in users:
        mine = by_user[hasher(user)]
        assert len(mine) == 5
        for s in mine:
            for key in ("checkout-redesign", "free-shipping", "search-ranking"):
                a = lab.assign(key, user)
                assert s["attrs"].get(A.variant_attr(key)) == (a.variant if a.in_experiment else None)
            assert s["attrs"].get(A.holdout_attr("ux-holdout"), False) == bool(
                lab.assign("search-ranking", user).holdout
            )
            assert s["attrs"][A.exposed_attr("catalog-badges")] is True  # on_assign
        held += bool(lab.assign("search-ranking", user).holdout)
    assert all(user not in repr(spans) for user in users)  # hashed, never raw
    assert os.listdir(tmp_path / "spans")


def test_demo_runs_a_real_server_and_counts_from_its_spans(tmp_path: Path) -> None:
    import io

    from fieldlab.demo import run_demo

    progress = io.StringIO()
    result = run_demo(
        app="fastapi", visitors=40, concurrency=4, out_dir=str(tmp_path / "demo"), analyze=False, stream=progress
    )
    assert "40/40 visitors" in progress.getvalue()
    assert result["requests"] > 40
    assert result["errors"] <= 2  # only injected inventory timeouts (5 % of the 2 % slow-inventory users' orders)
    assert result["server_spans"] >= result["requests"]  # every request, plus the health checks
    counts = result["counts"]
    assert {"catalog-badges", "checkout-redesign", "free-shipping", "search-ranking"} <= set(counts)
    assert set(counts) <= {"catalog-badges", "checkout-redesign", "free-shipping", "search-ranking", "slow-inventory"}
    badges = counts["catalog-badges"]
    # every request has a visitor id (the health checks of start-up too)
    assert result["requests"] <= sum(row["requests"] for row in badges.values()) <= result["server_spans"]
    assert sum(row["units"] for row in badges.values()) >= 30  # about one visitor id per browsing session


def test_demo_is_a_cli_subcommand() -> None:
    from fieldlab.cli import build_parser

    args = build_parser().parse_args(["demo", "--visitors", "5", "--app", "django"])
    assert args.visitors == 5 and args.app == "django" and callable(args.func)
