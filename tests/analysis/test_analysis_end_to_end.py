"""``fieldlab analyze`` end to end: SDK-written traces in, JSON/terminal/HTML verdicts out."""

from __future__ import annotations

import json
import re

import pytest
from analysis_helpers import make_requests, write_otlp

from fieldlab import attributes as A
from fieldlab.analysis import analyze, write_html
from fieldlab.cli import main

CONFIG = """
[lab]
reload_interval = 0

[[experiments]]
key = "checkout"
unit = "{unit}"
variants = [{{ name = "control", weight = 1 }}, {{ name = "treatment", weight = 1 }}]
"""


def _config(tmp_path, unit="user", body=None):
    path = tmp_path / "lab.toml"
    path.write_text(body if body is not None else CONFIG.format(unit=unit))
    return str(path)


def _independent_counts(path, key):
    """Per variant: exposed, non-forced units / their requests / errors, computed straight from the JSON."""
    units: dict = {}
    with open(path) as f:
        for line in f:
            for rs in json.loads(line)["resourceSpans"]:
                for ss in rs["scopeSpans"]:
                    for sp in ss["spans"]:
                        if sp["kind"] != 2:
                            continue
                        at = {a["key"]: a["value"] for a in sp.get("attributes", [])}
                        if A.variant_attr(key) not in at or A.forced_attr(key) in at:
                            continue
                        v = at[A.variant_attr(key)]["stringValue"]
                        u = units.setdefault(at[A.unit_attr("user")]["stringValue"], [v, 0, 0, False])
                        u[1] += 1
                        u[2] += (sp.get("status", {}).get("code") == 2) or int(
                            at[A.HTTP_STATUS_CODE]["intValue"]
                        ) >= 500
                        u[3] = u[3] or A.exposed_attr(key) in at
    out: dict = {}
    for v, n, e, exposed in units.values():
        if exposed:
            o = out.setdefault(v, [0, 0, 0])
            o[0] += 1
            o[1] += n
            o[2] += e
    return out


def test_cli_json_has_the_documented_keys_and_correct_numbers(ab_file, tmp_path, capsys):
    cfg = _config(tmp_path)
    html = tmp_path / "report.html"
    rc = main(
        [
            "analyze",
            ab_file,
            "--config",
            cfg,
            "--json",
            "--metric",
            "app.checkout.completed=true",
            "--metric",
            "app.cart.value",
            "--html",
            str(html),
        ]
    )
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    e = res["experiments"]["checkout"]
    assert e["unit"] == "user" and e["unit_source"] == "config" and e["weights_source"] == "config"
    expected = _independent_counts(ab_file, "checkout")
    for v in ("control", "treatment"):
        s = e["variants"][v]
        assert [s["units"], s["requests"], s["errors"]] == expected[v]
        assert s["error_rate"] == pytest.approx(s["errors"] / s["requests"])
        lat = s["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    assert e["srm"]["mismatch"] is False and 0 < e["srm"]["p_value"] <= 1
    for metric in ("error_rate", "latency_ms", "app.checkout.completed=true", "app.cart.value"):
        c = e["comparisons"]["treatment"][metric]
        assert c["ci_low"] <= c["estimate"] <= c["ci_high"]
        assert 0 <= c["p_value"] <= 1
    er = e["comparisons"]["treatment"]["error_rate"]
    assert er["estimate"] == pytest.approx(
        e["variants"]["treatment"]["error_rate"] - e["variants"]["control"]["error_rate"]
    )
    # 5 % vs 2 % errors and 24 vs 20 ms: the guardrail is breached, and said so in words
    assert e["verdict"] == "guardrail breached: error_rate worse"
    assert e["forced_requests_excluded"] > 0
    assert res["method"]["sequential"] is True and "5000" in res["method"]["description"]
    page = html.read_text()
    assert page.count("<svg") == 3 and "<script" not in page
    import xml.etree.ElementTree as ET

    for svg in re.findall(r"<svg.*?</svg>", page, flags=re.S):
        root = ET.fromstring(svg)  # well-formed, standalone SVG
        assert root.tag.endswith("svg") and len(list(root.iter())) > 10
    assert not re.search(r"(src|href)=['\"]?https?://", page)


def test_srm_makes_the_experiment_invalid_before_any_effect(tmp_path, capsys):
    path = write_otlp(
        str(tmp_path / "srm.jsonl"),
        make_requests(3000, experiment="checkout", drop={"treatment": 0.15}, reqs_per_unit=(1, 2), seed=3),
        child_spans=False,
    )
    res = analyze(path, _config(tmp_path))
    e = res["experiments"]["checkout"]
    assert e["srm"]["mismatch"] is True and e["srm"]["p_value"] < 0.001
    assert e["verdict"] == "invalid (SRM)" and e["verdicts"] == {"treatment": "invalid (SRM)"}
    assert e["effects_valid"] is False  # the JSON keeps the numbers for machines, flagged; people never see them
    assert main(["analyze", path, "--config", _config(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "INVALID (SRM)" in out and "MISMATCH" in out and " vs control" not in out


def test_treatment_better_on_a_conversion(tmp_path):
    path = write_otlp(
        str(tmp_path / "conv.jsonl"),
        make_requests(
            4000,
            experiment="checkout",
            conversion={"control": 0.10, "treatment": 0.20},
            reqs_per_unit=(1, 2),
            error_rate={"control": 0.01, "treatment": 0.01},
            seed=4,
        ),
        child_spans=False,
    )
    res = analyze(path, _config(tmp_path), metrics=["app.checkout.completed=true"])
    e = res["experiments"]["checkout"]
    assert e["verdict"] == "treatment better on app.checkout.completed=true"
    c = e["comparisons"]["treatment"]["app.checkout.completed=true"]
    assert c["ci_low"] > 0 and c["estimate"] == pytest.approx(0.10, abs=0.03)
    # fixed horizon is labelled, and narrower than the confidence sequence
    fixed = analyze(path, _config(tmp_path), metrics=["app.checkout.completed=true"], sequential=False)
    f = fixed["experiments"]["checkout"]["comparisons"]["treatment"]["app.checkout.completed=true"]
    assert "fixed-horizon" in fixed["method"]["description"]
    assert f["ci_high"] - f["ci_low"] < c["ci_high"] - c["ci_low"]
    tl = e["timeline"]["treatment"]
    assert tl["metric"] == "app.checkout.completed=true" and len(tl["points"]) >= 15
    assert tl["points"][-1]["estimate"] == pytest.approx(c["estimate"])


def test_three_variants_use_holm_and_no_config_says_so(tmp_path):
    path = write_otlp(
        str(tmp_path / "three.jsonl"),
        make_requests(2400, experiment="search", variants=("control", "a", "b"), reqs_per_unit=(1, 2), seed=5),
        child_spans=False,
    )
    res = analyze(path)
    e = res["experiments"]["search"]
    assert any("assumed equal" in n for n in res["notes"]) and e["srm"]["weights_assumed"] is True
    assert e["unit_source"] == "inferred" and e["unit"] == "user"
    assert set(e["comparisons"]) == {"a", "b"}
    for v in ("a", "b"):
        c = e["comparisons"][v]["error_rate"]
        assert c["p_value_adjusted"] >= c["p_value"]
        assert "Bonferroni" in c["interval"]
    assert set(e["verdicts"]) == {"a", "b"}


def test_trigger_analysis_versus_intent_to_treat(tmp_path):
    path = write_otlp(
        str(tmp_path / "trig.jsonl"),
        make_requests(2000, experiment="checkout", exposed_share=0.5, reqs_per_unit=(1, 2), seed=6),
        child_spans=False,
    )
    trig = analyze(path, _config(tmp_path))["experiments"]["checkout"]["variants"]
    itt = analyze(path, _config(tmp_path), all_assigned=True)["experiments"]["checkout"]["variants"]
    for v in ("control", "treatment"):
        assert itt[v]["units"] == itt[v]["assigned_units"] == trig[v]["assigned_units"]
        assert 0.4 < trig[v]["units"] / itt[v]["units"] < 0.6


def test_request_randomised_experiment_counts_requests(tmp_path):
    path = write_otlp(
        str(tmp_path / "req.jsonl"),
        make_requests(500, experiment="checkout", unit_kind="request", reqs_per_unit=(1, 3), seed=7),
        child_spans=False,
    )
    e = analyze(path, _config(tmp_path, unit="request"))["experiments"]["checkout"]
    assert e["unit"] == "request"
    for s in e["variants"].values():
        assert s["units"] == s["requests"]


def test_holdout_group_is_reported_with_its_experiment(tmp_path):
    reqs = make_requests(300, experiment="checkout", reqs_per_unit=(1, 1), seed=8)
    reqs += [
        dict(attrs={A.holdout_attr("longterm"): True, A.unit_attr("user"): f"h1:{i:016x}"}, dur_ms=10.0)
        for i in range(40)
    ]
    path = write_otlp(str(tmp_path / "hold.jsonl"), reqs, child_spans=False)
    body = CONFIG.format(unit="user") + '\n[[holdouts]]\nkey = "longterm"\npercent = 10\nexperiments = ["checkout"]\n'
    res = analyze(path, _config(tmp_path, body=body))
    assert res["holdouts"]["longterm"]["units"] == 40
    assert res["experiments"]["checkout"]["holdout_groups"]["longterm"]["units"] == 40


def test_errors_are_one_line_with_a_fix(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "nope.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no such file" in err and "Traceback" not in err
    (tmp_path / "t.jsonl").write_text("")
    assert main(["analyze", str(tmp_path / "t.jsonl"), "--config", str(tmp_path / "missing.toml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path / "t.jsonl"), "--metric", "x="]) == 2
    assert "ATTR=VALUE" in capsys.readouterr().err


def test_write_html_from_the_python_api(ab_file, tmp_path):
    res = analyze(ab_file, metrics=["app.checkout.completed=true"])
    out = write_html(res, tmp_path / "r.html")
    text = open(out).read()
    assert "Latency distribution" in text and "Assigned units" in text and "interval at each look" in text


def test_progress_goes_to_stderr_only_when_asked(ab_file, capsys):
    assert main(["analyze", ab_file, "--progress"]) == 0
    captured = capsys.readouterr()
    assert "reading" in captured.err and "reading" not in captured.out
    assert main(["analyze", ab_file]) == 0  # pytest's stderr is not a TTY: no progress
    assert "reading" not in capsys.readouterr().err


def test_unreachable_clickhouse_is_one_clear_line(capsys):
    rc = main(["analyze", "clickhouse://default:@127.0.0.1:1/otel?table=otel_traces"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "cannot connect to ClickHouse" in err and "\n" not in err


def test_exposure_imbalance_is_noted_and_no_experiments_is_said(tmp_path, capsys):
    reqs = make_requests(3000, experiment="checkout", reqs_per_unit=(1, 1), seed=12)
    for r in reqs:  # the treatment's code path reads the flag for only 80 % of its units
        if (
            r["attrs"][A.variant_attr("checkout")] == "treatment"
            and int(r["attrs"][A.unit_attr("user")][-2:], 16) % 5 == 0
        ):
            r["attrs"].pop(A.exposed_attr("checkout"), None)
    path = write_otlp(str(tmp_path / "exp.jsonl"), reqs, child_spans=False)
    e = analyze(path, _config(tmp_path))["experiments"]["checkout"]
    assert e["srm"]["mismatch"] is False and e["srm_exposed"]["mismatch"] is True
    assert any("read the assignment at different rates" in n for n in e["notes"])
    plain = write_otlp(str(tmp_path / "plain.jsonl"), [dict(attrs={"http.route": "/"}, dur_ms=1.0)], child_spans=False)
    assert main(["analyze", plain]) == 0
    assert "no experiments found" in capsys.readouterr().out


def test_a_missing_control_arm_is_an_srm_not_a_quiet_keep_running(tmp_path):
    path = write_otlp(
        str(tmp_path / "noctl.jsonl"),
        make_requests(400, experiment="checkout", drop={"control": 1.0}, reqs_per_unit=(1, 1), seed=13),
        child_spans=False,
    )
    e = analyze(path, _config(tmp_path))["experiments"]["checkout"]
    assert e["srm"]["observed"]["control"] == 0 and e["srm"]["mismatch"] is True
    assert e["verdict"] == "invalid (SRM)" and e["verdicts"] == {"treatment": "invalid (SRM)"}
