"""The analysis never overclaims: engines agree on every count, a span counts once, holdouts drop units only
from what they cover, a handful of units gives no verdict, and latency figures describe one population."""

from __future__ import annotations

import json

import numpy as np
import pytest
from analysis_helpers import T0, write_otlp
from test_analysis_sources import assert_same

from fieldlab import attributes as A
from fieldlab.analysis import analyze
from fieldlab.analysis.sources import FileSource, QuerySpec, parse_metric
from fieldlab.analysis.stats import compare, ratio_estimate
from fieldlab.cli import main

ENGINES = ("chdb", "python")


def _span(i: int, attrs: list, *, kind=2, status=None, trace=None, span=None, dur_ms=5) -> dict:
    start = T0 + i * 10**6
    return {
        "traceId": trace or f"{i:032x}",
        "spanId": span or f"{i:016x}",
        "name": "GET /",
        "kind": kind,
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(start + dur_ms * 10**6),
        "attributes": attrs,
        "status": {} if status is None else status,
    }


def _sv(key: str, v) -> dict:
    return {"key": key, "value": {"stringValue": v}}


def _line(spans: list) -> str:
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]})


def test_engines_agree_on_wrong_typed_attributes_and_count_a_duplicate_span_once(tmp_path):
    """chdb counted 40 malformed lines where Python counted 0; a span repeated (exporter retry) was 2 requests."""
    lines, n = [], 0
    for i in range(200):
        unit = _sv(A.unit_attr("user"), f"u{i}")
        wrong = [  # a variant as an int, a bool, an array; a status code as a string; odd shapes around them
            [{"key": A.variant_attr("e"), "value": {"intValue": i % 2}}, unit],
            [{"key": A.variant_attr("e"), "value": {"boolValue": bool(i % 2)}}, unit],
            [{"key": A.variant_attr("e"), "value": {"arrayValue": {"values": [{"stringValue": "a"}]}}}, unit],
            [_sv(A.variant_attr("e"), "b"), unit, _sv(A.HTTP_STATUS_CODE, "503")],
            [_sv(A.variant_attr("e"), "a"), unit, {"key": 7, "value": {"stringValue": "x"}}, "junk", 5],
            [_sv(A.variant_attr("e"), "a"), unit, {"key": A.HTTP_STATUS_CODE, "value": 500}],
            [_sv(A.variant_attr("e"), "b"), unit, {"key": "app.value", "value": {"doubleValue": "2.5"}}],
            [_sv(A.variant_attr("e"), "a"), unit, _sv(A.variant_attr("e"), "b")],  # a repeated key: the first
        ][i % 8]
        sp = _span(n, wrong, status={"code": "2"} if i % 7 == 0 else ("oops" if i % 11 == 0 else None))
        n += 1
        if i % 13 == 0:
            sp["attributes"] = {"not": "a list"}
        if i % 17 == 0:
            sp["kind"] = "SPAN_KIND_SERVER"
        line = _line([sp, "not a span", _span(n, [], kind=3)])
        n += 1
        lines.append(line)
        if i % 5 == 0:
            lines.append(line)  # the same spans again: a retried export
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "copy.jsonl").write_text(lines[3] + "\n" + lines[4] + "\n")  # spans also found in another file
    spec = QuerySpec(metrics=(parse_metric("app.value"),))
    aggs = {e: FileSource(str(tmp_path), engine=e).aggregate(spec) for e in ENGINES}
    assert_same(aggs["chdb"], aggs["python"])
    for agg in aggs.values():
        assert agg.malformed_lines == 0
        assert agg.spans == 400 and agg.server_spans == 200  # each distinct span once
        e = agg.experiments["e"]
        # 25 spans have an array as the variant (no arm), 16 no attribute list (2 of them both): 161 requests, once
        assert sum(g.requests.sum() for g in e.variants.values()) == 161
        assert sorted(e.variants) == ["0", "a", "b", "true"]  # an int and a bool variant read as their text
    res = {e: analyze(str(tmp_path), engine=e) for e in ENGINES}
    assert res["chdb"]["experiments"]["e"]["variants"] == res["python"]["experiments"]["e"]["variants"]


CONFIG_AB = """
[lab]
reload_interval = 0

[[experiments]]
key = "a"
unit = "user"
variants = {{ control = 1, treatment = 1 }}

[[experiments]]
key = "b"
unit = "user"
variants = {{ control = 1, treatment = 1 }}

[[holdouts]]
key = "hold"
percent = {percent}
experiments = ["a"]
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_holdout_drops_held_out_units_only_from_the_experiments_it_covers(tmp_path, engine):
    """A unit held out of experiment A is still in experiment B: its spans carry B's variant and the holdout."""
    from fieldlab.lab import Lab

    cfg = tmp_path / "lab.toml"
    cfg.write_text(CONFIG_AB.format(percent=20))
    lab = Lab.from_file(str(cfg), reload_interval=0)
    reqs, expect_b, held = [], {"control": 0, "treatment": 0}, 0
    for u in range(400):
        uid = f"user-{u}"
        attrs = {A.unit_attr("user"): uid}
        for key in ("a", "b"):
            a = lab.assign(key, uid)
            if a.variant is not None and a.reason == "split":
                attrs[A.variant_attr(key)] = a.variant
                attrs[A.exposed_attr(key)] = True
            elif a.holdout:
                attrs[A.holdout_attr(a.holdout)] = True
        held += A.holdout_attr("hold") in attrs
        expect_b[attrs[A.variant_attr("b")]] += 1
        reqs.append(dict(attrs=attrs, dur_ms=5.0))
    assert 40 < held < 120
    path = write_otlp(str(tmp_path / "t.jsonl"), reqs, child_spans=False)
    res = analyze(path, str(cfg), engine=engine)
    b = {v: s["units"] for v, s in res["experiments"]["b"]["variants"].items()}
    assert b == expect_b and sum(b.values()) == 400  # held-out units included
    a = {v: s["units"] for v, s in res["experiments"]["a"]["variants"].items()}
    assert sum(a.values()) == 400 - held
    assert res["holdouts"]["hold"]["units"] == held


def _arms(tmp_path, n_per_arm: int, errors: dict, reqs_per_unit: int = 3) -> str:
    reqs = []
    for v in ("control", "treatment"):
        for u in range(n_per_arm):
            for j in range(reqs_per_unit):
                reqs.append(
                    dict(
                        attrs={
                            A.variant_attr("exp"): v,
                            A.exposed_attr("exp"): True,
                            A.unit_attr("user"): f"{v}-{u}",
                            A.HTTP_STATUS_CODE: 500 if errors[v] else 200,
                        },
                        dur_ms=5.0 + j,
                    )
                )
    return write_otlp(str(tmp_path / f"arms{n_per_arm}.jsonl"), reqs, child_spans=False)


def test_two_units_per_arm_give_insufficient_data_not_a_guardrail_verdict(tmp_path, capsys):
    """2 control units without errors vs 2 treatment units always failing gave 'guardrail breached', CI [1, 1]."""
    path = _arms(tmp_path, 2, {"control": False, "treatment": True})
    e = analyze(path)["experiments"]["exp"]
    assert e["verdict"] == "insufficient data"
    assert e["why"] == "2 unit(s) in control 'control'; at least 30 per arm needed"
    assert not e["comparisons"]
    assert main(["analyze", path]) == 0
    out = capsys.readouterr().out
    assert "verdict: insufficient data" in out and "why: 2 unit(s) in control" in out and "[1" not in out


def test_zero_errors_in_both_arms_give_a_nonzero_interval_not_0_0(tmp_path):
    """0 vs 0 errors gave CI [0, 0]; with enough units the interval has width and no verdict follows."""
    path = _arms(tmp_path, 40, {"control": False, "treatment": False})
    e = analyze(path)["experiments"]["exp"]
    c = e["comparisons"]["treatment"]["error_rate"]
    assert c["estimate"] == 0 and c["ci_low"] < 0 < c["ci_high"] and c["p_value"] == 1
    assert e["verdict"] == "keep running"


def test_every_unit_failing_against_none_is_a_breach_only_with_enough_units(tmp_path):
    few = analyze(_arms(tmp_path, 5, {"control": False, "treatment": True}))["experiments"]["exp"]
    assert few["verdict"] == "insufficient data" and "5 unit(s)" in few["why"]
    many = analyze(_arms(tmp_path, 40, {"control": False, "treatment": True}))["experiments"]["exp"]
    c = many["comparisons"]["treatment"]["error_rate"]
    assert c["ci_high"] - c["ci_low"] > 0.01
    assert many["verdict"] == "guardrail breached: error_rate worse"


def test_zero_variance_means_give_no_interval_rather_than_p_0():
    ctrl = ratio_estimate(np.full(50, 10.0), np.ones(50))
    trt = ratio_estimate(np.full(50, 12.0), np.ones(50))
    c = compare(ctrl, trt, sequential=False)
    assert c["estimate"] == 2 and c["p_value"] is None and c["ci_low"] is None and "no variation" in c["why"]


def test_latency_mean_and_percentiles_describe_the_same_requests(tmp_path):
    """The mean came from all requests of exposed units, the percentiles from flagged requests only."""
    reqs = []
    for v in ("control", "treatment"):
        for u in range(40):
            uid = f"{v}-{u}"
            # the first request reads the flag (fast); three later ones of the same unit do not flag it (slow)
            reqs.append(
                dict(
                    attrs={A.variant_attr("exp"): v, A.exposed_attr("exp"): True, A.unit_attr("user"): uid}, dur_ms=2.0
                )
            )
            for _ in range(3):
                reqs.append(dict(attrs={A.variant_attr("exp"): v, A.unit_attr("user"): uid}, dur_ms=100.0))
    path = write_otlp(str(tmp_path / "lat.jsonl"), reqs, child_spans=False)
    for engine in ENGINES:
        res = analyze(path, engine=engine)
        lat = res["experiments"]["exp"]["variants"]["control"]["latency_ms"]
        assert lat["population"] == "all requests of exposed units"
        assert lat["mean"] == pytest.approx(75.5)
        assert lat["p50"] == pytest.approx(100, rel=0.02)  # 3 of every 4 requests take 100 ms
        assert res["method"]["latency_population"] == "all requests of exposed units"
