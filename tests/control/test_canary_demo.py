"""``fieldlab demo --canary``: the sick canary against the example shop under gunicorn finds a breaking point
below the shop's 300 ms inventory client timeout, bracketed to +-10 %, and --json reports it."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

import fieldlab

EXAMPLES = Path(__file__).resolve().parents[2] / "example_apps"


def test_shop_orders_time_out_when_the_inventory_takes_longer_than_300_ms() -> None:
    """The inventory client timeout the canary finds: a reservation past 300 ms is a 504, one under it is not.
    (Before, the shop waited for the inventory however long it took: no dose ever broke it.)"""
    import sys

    sys.path.insert(0, str(EXAMPLES))
    try:
        import shop_core
    finally:
        sys.path.remove(str(EXAMPLES))
    lab = fieldlab.Lab.from_dict(
        {
            "faults": {"enabled": True, "max_blast_radius": 100},
            "experiments": [
                {
                    "key": "inv",
                    "traffic": 100,
                    "variants": [{"name": "slow", "faults": [{"point": "inventory.reserve", "latency_ms": 400}]}],
                }
            ],
        }
    )
    lab2 = fieldlab.Lab.from_dict(
        {
            "faults": {"enabled": True, "max_blast_radius": 100},
            "experiments": [
                {
                    "key": "inv",
                    "traffic": 100,
                    "variants": [{"name": "slow", "faults": [{"point": "inventory.reserve", "latency_ms": 150}]}],
                }
            ],
        }
    )
    results: dict[str, Any] = {}
    for name, lb in (("400", lab), ("150", lab2)):
        with _bound(lb):
            results[name] = shop_core.place_order([1])[0]
    assert results == {"400": 504, "150": 200}


class _bound:
    def __init__(self, lab: fieldlab.Lab) -> None:
        self.lab = lab

    def __enter__(self) -> None:
        from fieldlab import context

        self.token = context.bind(context.start(self.lab, {"user": "u1"}, trace_id=f"{5:032x}"))

    def __exit__(self, *exc: Any) -> None:
        from fieldlab import context

        context.reset(self.token)


@pytest.mark.slow
def test_demo_canary_finds_the_shops_breaking_point(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("gunicorn")
    from fieldlab.cli import main

    assert main(["demo", "--canary", "--json", "--out", str(tmp_path), "--examples", str(EXAMPLES)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["outcome"] == "found", result
    bp, (lo, hi) = result["breaking_point_ms"], result["bracket"]
    assert lo < bp < hi <= 300 * 1.1 and hi / lo <= 1.1 / 0.9 + 1e-6  # the breaking point to +-10 %
    assert 50 < bp < 310  # the client timeout bounds it; load on the server's cores lowers it
    doses = {r["arm"]: r for r in result["dose_response"]}
    assert doses["control"]["error_rate"] < 0.005
    assert result["requests_spent"] > 0 and result["bad_spent"] < result["requests_spent"] * 0.1
    assert threading.active_count() < 20  # the load threads ended
