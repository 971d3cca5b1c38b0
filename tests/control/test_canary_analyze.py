"""fieldlab analyze shows each canary's dose-response from the spans (and the search's breaking point from
the state file); the text and the HTML report show it, the HTML with a dose-response plot."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

from span_kit import Request, write_spans

from fieldlab import attributes as A
from fieldlab.analysis import analyze, render_html, render_text
from fieldlab.control.state import JsonFileStore

KEY = "inventory-latency"


def test_analyze_reports_the_canary_dose_response(tmp_path: Path) -> None:
    cfg = tmp_path / "lab.json"
    cfg.write_text(
        json.dumps(
            {
                "lab": {"state_file": "lab.state.json"},
                "faults": {"enabled": True},
                "canaries": [
                    {
                        "key": KEY,
                        "point": "inventory.reserve",
                        "traffic": 5,
                        "doses": {"latency_ms": [100, 200, 400]},
                        "steady_state": {"error_slo": 99.5},
                    }
                ],
            }
        )
    )
    rnd = random.Random(2)
    reqs = []
    for arm, n, fail in (("control", 800, 0.0), ("100ms", 500, 0.0), ("400ms", 300, 0.5)):
        for i in range(n):
            err = rnd.random() < fail
            reqs.append(
                Request(
                    1_000_000_000_000 + i,
                    20.0,
                    False,
                    {A.canary_attr(KEY): arm, A.HTTP_STATUS_CODE: 504 if err else 200},
                )
            )
    spans = write_spans(str(tmp_path / "spans.jsonl"), reqs)
    JsonFileStore(str(tmp_path / "lab.state.json")).update(
        lambda cur: dataclasses.replace(
            cur,
            seq=1,
            canaries={
                KEY: {
                    "key": KEY,
                    "phase": "done",
                    "breaking_point": 266.7,
                    "bracket": [200.0, 400.0],
                    "arms": [
                        {
                            "dose": 400.0,
                            "status": "broken",
                            "requests": 300,
                            "errors": 150,
                            "slow": 0,
                            "bad": 150,
                            "reason": "error rate above",
                        }
                    ],
                }
            },
        )
    )
    result = analyze([spans], config=str(cfg), engine="python")
    c = result["canaries"][KEY]
    rows = {r["arm"]: r for r in c["dose_response"]}
    assert set(rows) == {"control", "100ms", "400ms"}
    assert rows["control"]["requests"] == 800 and rows["100ms"]["error_rate"] == 0
    assert rows["400ms"]["status"] == "broken" and rows["400ms"]["vs_control"]["ci_low"] > 0.3
    assert rows["100ms"]["status"] == "observed"
    assert c["breaking_point_ms"] == 266.7 and c["bracket"] == [200.0, 400.0]
    text = render_text(result)
    assert "canary inventory-latency at inventory.reserve: breaking point 266.7 ms (bracket 200-400 ms)" in text
    html = render_html(result)
    assert "Dose-response: inventory-latency" in html and "breaking point 267 ms" in html
