"""``fieldlab analyze`` of a bandit (issue 13 §2): each period with its own allocation, SRM per period.

Spans come from the OpenTelemetry SDK and its JSON file exporter; the weights of each period from a lab
state document (``bandits``, BANDIT_FORMAT) in a JSON-file store that the config names. Both engines
(embedded ClickHouse and the Python reader) must give the same numbers.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from analysis_helpers import OTEL_TRACES_DDL, T0, Req, chdb_session, load_into_otel_traces, write_otlp

from fieldlab import attributes as A
from fieldlab.analysis import analyze, render_html, render_text
from fieldlab.analysis.bandits import decision_metric
from fieldlab.analysis.model import Metric, parse_metric
from fieldlab.analysis.sources import ClickHouseSource
from fieldlab.analysis.stats import srm_test
from fieldlab.cli import main
from fieldlab.errors import ConfigError
from fieldlab.lab import Lab

KEY = "hero-banner"
METRIC = "app.cart.added"
DAY_NS = 86_400 * 10**9


def _traffic(
    periods: Sequence[Mapping[str, Any]],
    *,
    seed: int = 5,
    unit_kind: str = "user",
    untagged_period0: float = 0.5,
    requests: tuple[int, int] = (1, 3),
    untagged_first: bool = False,
) -> list[Req]:
    """Units per period: each gets an arm by the period's ``split`` (what really happened), converts with its
    arm's probability in that period, and makes 1-3 requests that carry the period's version. Some period-0
    units carry no version at all (an absent attribute is period 0); ``untagged_first``: no unit's first
    request carries it."""
    rnd = random.Random(seed)
    out: list[Req] = []
    for p in periods:
        arms, split = list(p["split"]), list(p["split"].values())
        t = T0 + p["version"] * DAY_NS
        for _ in range(p["units"]):
            arm = rnd.choices(arms, split)[0]
            uid = f"u{rnd.getrandbits(64):016x}"
            converts = rnd.random() < p["conversion"][arm]
            tagged = p["version"] > 0 or rnd.random() >= untagged_period0
            k = rnd.randint(*requests)
            for j in range(k):
                attrs: dict[str, Any] = {
                    A.variant_attr(KEY): arm,
                    A.exposed_attr(KEY): True,
                    A.HTTP_STATUS_CODE: 200,
                }
                if unit_kind != "request":
                    attrs[A.unit_attr(unit_kind)] = uid
                if tagged and not (untagged_first and j == 0):
                    attrs[A.bandit_attr(KEY)] = p["version"]
                if converts and j == k - 1:
                    attrs[METRIC] = True
                t += rnd.randint(1, 2_000_000)
                out.append(Req(attrs=attrs, dur_ms=rnd.lognormvariate(0, 0.3) * 20.0, start=t))
    return out


# Period 0: an even split on a busy weekday (10 % convert in control); period 1: the bandit moved 90 % of the
# traffic to "bold", and the baseline fell to 2 % (the weekend). "bold" is 2 points better in both periods.
TRUTH = 0.02
SIMPSON = [
    {"version": 0, "units": 6000, "split": {"control": 1, "bold": 1}, "conversion": {"control": 0.10, "bold": 0.12}},
    {"version": 1, "units": 6000, "split": {"control": 1, "bold": 9}, "conversion": {"control": 0.02, "bold": 0.04}},
]
WEIGHTS_BP = {0: [5000, 5000], 1: [1000, 9000]}


def _config(tmp: Path, *, unit: str = "user", **extra: Any) -> str:
    """The lab config: the experiment (``extra``: more of its fields), its state store ``lab.state.json``."""
    cfg = {
        "lab": {"state": "lab.state.json"},
        "experiments": [{"key": KEY, "unit": unit, "variants": [{"name": "control"}, {"name": "bold"}], **extra}],
    }
    path = tmp / "lab.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def _state(tmp: Path, weights: Mapping[int, Sequence[int]]) -> None:
    """The lab state document with a ``bandits`` entry, as the controller writes it (BANDIT_FORMAT)."""
    last = max(weights)
    doc = {
        "version": 2,
        "seq": 3,
        "bandits": {
            KEY: {
                "arms": ["control", "bold"],
                "version": last,
                "weights_bp": list(weights[last]),
                "at": "2026-12-05T00:00:00.000Z",
                "reason": "Thompson sampling",
                "periods": [
                    {"version": v, "at": f"2026-12-{1 + v // 24:02d}T{v % 24:02d}:00:00.000Z", "weights_bp": list(w)}
                    for v, w in sorted(weights.items())
                ],
            }
        },
    }
    (tmp / "lab.state.json").write_text(json.dumps(doc))


@pytest.fixture(scope="module")
def simpson(tmp_path_factory):
    d = tmp_path_factory.mktemp("bandit")
    spans = write_otlp(str(d / "spans.jsonl"), _traffic(SIMPSON), child_spans=False)
    _state(d, WEIGHTS_BP)
    return spans, _config(d)


@pytest.fixture(scope="module")
def simpson_results(simpson):
    spans, cfg = simpson
    return {e: analyze(spans, cfg, metrics=[f"{METRIC}=true"], engine=e) for e in ("python", "chdb")}


def test_per_period_effect_recovers_the_truth_where_pooling_reverses_it(simpson_results):
    res = simpson_results["chdb"]
    assert res["engine"] == "chdb"
    e = res["experiments"][KEY]
    b = e["bandit"]
    name = f"{METRIC}=true"
    assert b["metric"] == name and [p["version"] for p in b["periods"]] == [0, 1]
    naive = b["pooled_naive"]["bold"]["estimate"]
    eff = b["effect"]["bold"]
    # pooled: "bold" looks worse (most of its units come from the low-baseline period) -- the sign is reversed
    assert naive < -0.005
    assert e["comparisons"]["bold"][name]["estimate"] == pytest.approx(naive)
    # per period: the true +2 points, inside the interval, and the interval excludes both zero and the naive value
    assert eff["estimate"] == pytest.approx(TRUTH, abs=0.008)
    assert eff["ci_low"] < TRUTH < eff["ci_high"] and eff["ci_low"] > 0
    assert eff["inverse_variance"]["estimate"] == pytest.approx(TRUTH, abs=0.008)
    # the verdict trusts the per-period effect, and says why
    assert e["verdict"] == f"treatment better on {name}" and e["verdict_basis"].startswith("per-period")
    assert any("Simpson" in n for n in e["notes"])
    # each period's split matches its own weights: no SRM, although the pooled split is far from 50/50
    assert not e["srm"]["mismatch"] and e["srm"]["per_period"] and e["srm"]["periods_tested"] == 2
    units = [p["units"] for p in b["periods"]]
    assert srm_test([sum(u[v] for u in units) for v in ("control", "bold")], [1, 1])["mismatch"]  # pooled vs 50/50
    assert units[0]["bold"] == pytest.approx(3000, abs=200) and units[1]["bold"] == pytest.approx(5400, abs=200)
    assert b["periods"][1]["weights_bp"] == {"control": 1000, "bold": 9000}
    assert e["srm"]["expected"]["bold"] == pytest.approx(0.5 * sum(units[0].values()) + 0.9 * sum(units[1].values()))


def _same(a: Any, b: Any, where: str = "") -> None:
    """Equal structures; floats equal up to summation order (the engines add per-unit values in their own order)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert b == pytest.approx(a, rel=1e-9, abs=1e-12), where
    else:
        assert a == b, where


def test_both_engines_give_the_same_bandit_analysis(simpson, simpson_results, tmp_path):
    """The Python reader, embedded ClickHouse over the file, and the same SQL over the Collector exporter's
    ``otel_traces`` table: one bandit analysis."""
    spans, cfg = simpson
    sess = chdb_session(str(tmp_path / "ch"))
    try:
        sess.query(OTEL_TRACES_DDL.format(table="otel_traces", duration_type="UInt64"))
        load_into_otel_traces(sess, "otel_traces", spans)
        table = analyze(ClickHouseSource.from_chdb(sess, "otel_traces"), cfg, metrics=[f"{METRIC}=true"])
    finally:
        sess.close()
    assert table["engine"] == "clickhouse" and simpson_results["python"]["engine"] == "python"
    py, ch, tb = (r["experiments"][KEY] for r in (simpson_results["python"], simpson_results["chdb"], table))
    for other in (ch, tb):
        _same(py["bandit"], other["bandit"], "bandit")
        _same(py["srm"], other["srm"], "srm")
        _same(py["timeline"], other["timeline"], "timeline")
    assert py["verdict"] == ch["verdict"] == tb["verdict"] == f"treatment better on {METRIC}=true"


def test_the_timeline_of_a_bandit_is_the_per_period_effect(simpson_results):
    e = simpson_results["python"]["experiments"][KEY]
    points = e["timeline"]["bold"]["points"]
    assert e["timeline"]["bold"]["basis"].startswith("per-period")
    assert [p["period"] for p in points] == [0, 1]
    assert points[-1]["estimate"] == pytest.approx(e["bandit"]["effect"]["bold"]["estimate"])
    assert points[0]["units"] < points[1]["units"] == e["bandit"]["effect"]["bold"]["units"]


def test_sample_ratio_is_checked_per_period_against_its_own_weights(tmp_path):
    """Period 2 was published as 50/50, but 62 % of its units landed in control (a broken assignment in
    that period): the check flags period 2 alone, and the experiment is invalid. Request units here."""
    periods = [
        {"version": 0, "units": 2000, "split": {"control": 1, "bold": 1}, "conversion": {"control": 0.1, "bold": 0.1}},
        {"version": 1, "units": 2000, "split": {"control": 2, "bold": 8}, "conversion": {"control": 0.1, "bold": 0.1}},
        {
            "version": 2,
            "units": 2000,
            "split": {"control": 62, "bold": 38},
            "conversion": {"control": 0.1, "bold": 0.1},
        },
    ]
    spans = write_otlp(
        str(tmp_path / "spans.jsonl"), _traffic(periods, unit_kind="request", requests=(1, 1)), child_spans=False
    )
    _state(tmp_path, {0: [5000, 5000], 1: [2000, 8000], 2: [5000, 5000]})
    cfg = _config(tmp_path, unit="request")
    results = [analyze(spans, cfg, engine=e)["experiments"][KEY] for e in ("python", "chdb")]
    _same(results[0]["bandit"]["periods"], results[1]["bandit"]["periods"])
    e = results[1]
    checks = [p["srm"] for p in e["bandit"]["periods"]]
    assert [c["mismatch"] for c in checks] == [False, False, True]
    assert checks[2]["p_value"] < 1e-10 and checks[2]["alpha"] == pytest.approx(0.001 / 3)
    assert e["srm"]["mismatch"] and e["srm"]["mismatch_periods"] == [2]
    assert e["verdict"] == "invalid (SRM)"
    assert any("sample ratio mismatch in period(s) [2]" in n for n in e["notes"])
    text = render_text({**_header(), "experiments": {KEY: e}})
    assert "MISMATCH" in text and "effects are not shown" in text and "bold - control" not in text


def _header() -> dict[str, Any]:
    """The top of a result, for rendering one experiment's part."""
    return {
        "source": "s",
        "engine": "python",
        "spans": 0,
        "server_spans": 0,
        "malformed_lines": 0,
        "method": {"description": "d", "alpha": 0.05, "population": "p"},
    }


def test_without_weights_in_the_store_period_0_is_the_configs_split(tmp_path):
    """No ``bandits`` entry in the store: period 0 is checked against the config's weights; a later period
    has no known weights (not checked, said in a note), yet its units still count in the effect."""
    spans = write_otlp(str(tmp_path / "spans.jsonl"), _traffic(SIMPSON, seed=8), child_spans=False)
    cfg = _config(tmp_path)  # names lab.state.json, which does not exist
    e = analyze(spans, cfg, metrics=[f"{METRIC}=true"], engine="python")["experiments"][KEY]
    b = e["bandit"]
    assert "no state store entry" in b["weights_source"]
    p0, p1 = b["periods"]
    assert p0["weights_bp"] == {"control": 5000, "bold": 5000} and p0["weights_source"] == "config"
    assert p1["weights_bp"] is None and "srm" not in p1 and e["srm"]["periods_tested"] == 1
    assert any("no weights known for period(s) [1]" in n for n in e["notes"])
    assert b["effect"]["bold"]["estimate"] == pytest.approx(TRUTH, abs=0.008)


def test_an_unreadable_store_is_a_note_not_a_failure(tmp_path):
    cfg = _config(tmp_path)
    (tmp_path / "lab.state.json").write_text("{not json")
    spans = write_otlp(str(tmp_path / "spans.jsonl"), _traffic(SIMPSON, seed=9), child_spans=False)
    e = analyze(spans, cfg, engine="python")["experiments"][KEY]
    assert any(n.startswith("bandit weights unavailable") for n in e["notes"])
    assert e["bandit"]["periods"][0]["weights_source"] == "config"


def test_without_a_config_the_spans_make_the_bandit(tmp_path):
    """No --config: spans naming a period beyond 0 make the experiment a bandit; period 0 is assumed even."""
    spans = write_otlp(str(tmp_path / "spans.jsonl"), _traffic(SIMPSON, seed=4), child_spans=False)
    e = analyze(spans, metrics=[f"{METRIC}=true"], engine="chdb")["experiments"][KEY]
    b = e["bandit"]
    assert not b["declared"] and [p["version"] for p in b["periods"]] == [0, 1]
    assert b["periods"][0]["weights_source"].startswith("assumed equal")
    assert b["effect"]["bold"]["estimate"] == pytest.approx(TRUTH, abs=0.008)
    assert e["verdict_basis"].startswith("per-period")


def test_an_ab_experiment_gets_no_bandit_section(tmp_path):
    spans = write_otlp(str(tmp_path / "spans.jsonl"), _traffic(SIMPSON[:1], seed=2), child_spans=False)
    e = analyze(spans, _config(tmp_path), engine="python")["experiments"][KEY]
    assert "bandit" not in e and "verdict_basis" not in e and not e["srm"].get("per_period")


def _bandit_config_supported(tmp: Path) -> bool:
    try:
        Lab.from_file(_config(tmp, kind="bandit", bandit={"metric": METRIC}), reload_interval=0)
    except ConfigError:
        return False
    return True


def test_a_declared_bandit_never_updated_is_one_period_with_the_configs_weights(tmp_path):
    """``kind = "bandit"`` in the config, no weights ever published: one period, the config's split, and the
    decision metric from ``[experiments.bandit]`` without any --metric."""
    if not _bandit_config_supported(tmp_path):
        pytest.skip("this tree's config has no kind = 'bandit' yet (the runtime side adds it)")
    period0 = [dict(SIMPSON[0], units=1500)]
    spans = write_otlp(str(tmp_path / "spans.jsonl"), _traffic(period0, untagged_period0=1.0), child_spans=False)
    e = analyze(spans, _config(tmp_path, kind="bandit", bandit={"metric": METRIC}), engine="python")["experiments"][KEY]
    b = e["bandit"]
    assert b["declared"] and b["metric"] == f"{METRIC}=true"
    assert [p["version"] for p in b["periods"]] == [0] and b["periods"][0]["weights_bp"] == {
        "control": 5000,
        "bold": 5000,
    }
    assert "one period only" in b["note"] and "verdict_basis" not in e
    assert b["effect"]["bold"]["estimate"] == pytest.approx(0.02, abs=0.03)


def test_cli_json_text_and_html_show_the_periods(simpson, tmp_path, capsys):
    spans, cfg = simpson
    html = tmp_path / "report.html"
    args = ["analyze", spans, "--config", cfg, "--metric", f"{METRIC}=true", "--engine", "python"]
    assert main([*args, "--json"]) == 0
    b = json.loads(capsys.readouterr().out)["experiments"][KEY]["bandit"]
    assert [p["version"] for p in b["periods"]] == [0, 1] and b["effect"]["bold"]["estimate"] > 0
    assert b["pooled_naive"]["bold"]["estimate"] < 0
    assert main([*args, "--html", str(html)]) == 0
    text = capsys.readouterr().out
    assert "bandit: 2 period(s)" in text and "per period (stratified):  treatment better" in text
    assert "10.0%/90.0%" in text and "pooled (the verdict is per period, above)" in text
    page = html.read_text()
    assert "class='bandit-periods'" in page and "Bandit weights per period" in page
    assert render_html(json.loads(json.dumps(analyze(spans, cfg, engine="python")))).count("<svg") >= 3


def test_the_decision_metric_follows_the_bandit_table():
    """``[experiments.bandit] metric``/``metric_kind`` name what the analysis decides on (BANDIT_FORMAT)."""
    conv = decision_metric({"bandit": {"metric": METRIC}}, ())
    assert isinstance(conv, Metric) and (conv.name, conv.kind, conv.value) == (f"{METRIC}=true", "conversion", "true")
    assert (
        decision_metric({"bandit": {"metric": "app.plan=pro", "metric_kind": "conversion"}}, ()).name == "app.plan=pro"
    )
    num = decision_metric({"bandit": {"metric": "app.cart.value", "metric_kind": "numeric"}}, ())
    assert isinstance(num, Metric) and (num.kind, num.higher_is_better) == ("mean", True)
    assert decision_metric({"bandit": {"metric": "error", "metric_kind": "error"}}, ()) == "error_rate"
    assert decision_metric({"bandit": {"metric": "latency", "metric_kind": "latency"}}, ()) == "latency_ms"
    # a --metric of the same name keeps its direction; no bandit table: the first --metric, else latency
    lower = parse_metric("-app.queue.wait_ms")
    assert decision_metric({"bandit": {"metric": "app.queue.wait_ms", "metric_kind": "numeric"}}, (lower,)) is lower
    assert decision_metric(None, (lower,)) is lower and decision_metric(None, ()) == "latency_ms"


def test_a_long_bandit_shows_its_latest_periods_in_the_terminal(tmp_path):
    """30 hourly periods: the terminal table keeps the latest 20 and says where the rest are; the JSON has all."""
    rnd = random.Random(3)
    periods, weights = [], {}
    for v in range(30):
        share = rnd.randint(10, 90)
        weights[v] = [10000 - 100 * share, 100 * share]
        periods.append(
            {
                "version": v,
                "units": 60,
                "split": {"control": 100 - share, "bold": share},
                "conversion": {"control": 0.1, "bold": 0.12},
            }
        )
    spans = write_otlp(str(tmp_path / "spans.jsonl"), _traffic(periods, seed=6), child_spans=False)
    _state(tmp_path, weights)
    res = analyze(spans, _config(tmp_path), engine="python")
    assert [p["version"] for p in res["experiments"][KEY]["bandit"]["periods"]] == list(range(30))
    text = render_text(res)
    assert "(10 earlier period(s) in --json and --html)" in text
    table = [ln.split()[0] for ln in text.splitlines() if ln.startswith("     ") and ln.split()[0].isdigit()]
    assert table == [str(v) for v in range(10, 30)]
    assert "Bandit weights per period" in render_html(res)


def test_a_request_without_the_version_does_not_move_its_unit_to_period_0(tmp_path):
    """Every unit's first request lacks ``fieldlab.bandit.<key>``: a user is in the period its other requests
    name, and only a unit none of whose requests names one is in period 0 -- in both engines."""
    periods = [dict(p, units=400) for p in SIMPSON]
    reqs = _traffic(periods, seed=12, requests=(2, 3), untagged_first=True)
    spans = write_otlp(str(tmp_path / "spans.jsonl"), reqs, child_spans=False)
    users = {0: set(), 1: set()}
    for r in reqs:
        users[1 if r["attrs"].get(A.bandit_attr(KEY)) == 1 else 0].add(r["attrs"][A.unit_attr("user")])
    users[0] -= users[1]
    _state(tmp_path, WEIGHTS_BP)
    for engine in ("python", "chdb"):
        rows = analyze(spans, _config(tmp_path), engine=engine)["experiments"][KEY]["bandit"]["periods"]
        assert [sum(p["units"].values()) for p in rows] == [len(users[0]), len(users[1])] == [400, 400], engine


def test_the_decision_metric_reads_the_value_and_direction_the_controller_uses():
    """The analysis decides on what the controller optimises: the table's ``value`` and ``direction``."""
    from fieldlab import Lab

    lab = Lab.from_dict(
        {
            "experiments": [
                {
                    "key": "plans",
                    "kind": "bandit",
                    "unit": "request",
                    "variants": [{"name": "control"}, {"name": "annual"}],
                    "bandit": {"metric": "app.plan", "value": "gold", "direction": "lower"},
                }
            ]
        }
    )
    m = decision_metric(lab.experiments["plans"], ())
    assert isinstance(m, Metric)
    assert (m.name, m.attr, m.kind, m.value, m.higher_is_better) == (
        "app.plan=gold",
        "app.plan",
        "conversion",
        "gold",
        False,
    )
