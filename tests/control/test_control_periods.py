"""``fieldlab analyze`` keeps paused periods apart and shows the decisions on the report's timeline (issue 12 §3),
and ``--since`` / ``--until`` window the analysis in every engine.

The spans come from the real OpenTelemetry SDK and its JSON file exporter (``span_kit``); the decisions are in
a real JSON-file state store (``JsonFileStore``), recorded as the controller records them. The story: a
variant fails 20 % of its requests, a guardrail pauses it (its users get control, their spans carry
``fieldlab.guardrail.checkout``), an operator resumes it after a fix, and it fails 1 % like control.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from span_kit import Request, write_spans

from fieldlab import attributes as A
from fieldlab.analysis import analyze
from fieldlab.analysis.model import QuerySpec, TimeWindow, parse_time, time_window
from fieldlab.analysis.sources import ClickHouseSource, FileSource
from fieldlab.cli import main
from fieldlab.control.state import Decision, JsonFileStore

EXP = "checkout"
T0 = 1_796_000_000  # seconds since the epoch; the run lasts three hours
PAUSE, RESUME, END = T0 + 3600, T0 + 7200, T0 + 10800
UNITS = 400  # per variant

TOML = f"""
[lab]
state = "state.json"
[[experiments]]
key = "{EXP}"
variants = [{{ name = "control" }}, {{ name = "one-page" }}]
[experiments.guardrails]
error_slo = 99.5
"""


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _requests(seed: int = 5) -> list[Request]:
    """Every user makes 6 requests at random times over the three hours; one-page's users fail 20 % before
    the pause, are served control (1 %) during it, and fail 1 % after the resume."""
    rnd = random.Random(seed)
    out = []
    for variant in ("control", "one-page"):
        for u in range(UNITS):
            uid = f"u-{variant}-{u}"
            for _ in range(6):
                t_ns = rnd.randint(T0 * 10**9, END * 10**9 - 10**9)
                attrs: dict[str, Any] = {A.unit_attr("user"): uid, A.exposed_attr(EXP): True}
                served = variant
                if variant == "one-page" and PAUSE * 10**9 <= t_ns < RESUME * 10**9:
                    served = "control"
                    attrs[A.guardrail_attr(EXP)] = "one-page"
                attrs[A.variant_attr(EXP)] = served
                rate = 0.2 if variant == "one-page" and t_ns < PAUSE * 10**9 else 0.01
                attrs[A.HTTP_STATUS_CODE] = 500 if rnd.random() < rate else 200
                out.append(Request(t_ns, 20.0 * rnd.uniform(0.5, 1.5), False, attrs))
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Spans of the story, its config and its state store with the pause and the resume."""
    d = tmp_path_factory.mktemp("periods")
    spans = write_spans(str(d / "traces.jsonl"), _requests())
    (d / "lab.toml").write_text(TOML)
    store = JsonFileStore(str(d / "state.json"))
    store.record(
        [Decision("pause", EXP, "one-page", "guardrail", "error burn 1h/5m", "fieldlab-controller@test")],
        at=_iso(PAUSE),
    )
    store.record(
        [Decision("alert", EXP, "one-page", "guardrail", "latency", "fieldlab-controller@test")], at=_iso(PAUSE + 600)
    )
    store.record([Decision("resume", EXP, None, "operator", "fixed in 1.4.2", "alice")], at=_iso(RESUME))
    store.record([Decision("halt_faults", EXP, None, "operator", "way past the run", "bob")], at=_iso(END + 86400))
    return {"dir": d, "spans": spans, "config": str(d / "lab.toml")}


def _analyze_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["analyze", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_analyze_keeps_the_paused_period_apart_and_itt_counts_units_by_their_assignment(run, capsys) -> None:
    """Before the pause one-page is far worse, while paused (served control) it is not, after the fix it is
    not; the headline stays intent-to-treat: every one-page user counts in one-page, none in two variants."""
    code, out, err = _analyze_cli(capsys, run["spans"], "--config", run["config"], "--all-assigned", "--json")
    assert code == 0, err
    e = json.loads(out)["experiments"][EXP]
    # ITT over the whole run: all units, in the variant they were assigned, the paused requests included
    assert e["variants"]["one-page"]["units"] == UNITS and e["variants"]["control"]["units"] == UNITS
    assert e["multi_variant_units_excluded"] == 0 and not e["srm"]["mismatch"]
    served = e["variants"]["one-page"]["served_control_requests"]
    assert served > 500 and e["variants"]["control"]["served_control_requests"] == 0
    periods = e["periods"]
    assert [p["label"] for p in periods] == ["before", "paused one-page", "after resume"]
    assert [p["paused"] for p in periods] == [[], ["one-page"], []]
    assert periods[0]["since"] is None and periods[0]["until"] == PAUSE
    assert (periods[1]["since"], periods[1]["until"]) == (PAUSE, RESUME) and periods[2]["until"] is None
    assert "paused" in periods[1]["opened_by"] and "alice" in periods[2]["opened_by"]
    before, paused, after = (p["comparisons"]["one-page"]["error_rate"] for p in periods)
    assert before["estimate"] > 0.15 and before["ci_low"] > 0.1
    for c in (paused, after):
        assert abs(c["estimate"]) < 0.02 and c["ci_low"] < 0 < c["ci_high"]
    assert periods[0]["verdicts"]["one-page"].startswith("guardrail breached")
    assert periods[1]["verdicts"]["one-page"] == "keep running"
    # the requests served control are those of the paused period, all of them in one-page
    assert [p["served_control_requests"] for p in periods] == [0, served, 0]
    # units are counted in each period they were active in, in their assigned variant
    assert all(p["variants"]["one-page"]["units"] > 0.9 * UNITS for p in periods)
    # the whole-run effect is diluted by the paused and fixed periods, and says so
    assert 0 < e["comparisons"]["one-page"]["error_rate"]["estimate"] < before["estimate"] / 2
    note = next(n for n in e["notes"] if n.startswith("periods:"))
    assert "'paused one-page'" in note and "control-served" in note and "intent-to-treat" in note


def test_the_text_report_shows_a_period_table_and_keeps_the_decision_lines(run, capsys) -> None:
    code, out, err = _analyze_cli(capsys, run["spans"], "--config", run["config"], "--all-assigned")
    assert code == 0, err
    table = out[out.index("   periods (") :].splitlines()
    assert table[1].split()[:4] == ["period", "from", "to", "variant"]
    rows = [r for r in table[3:6]]
    assert [r.split()[0] for r in rows] == ["before", "paused", "after"]
    assert "one-page" in rows[1] and _iso(PAUSE)[:19] in rows[1]
    assert out.count("guardrail decision") == 4  # pause, alert, resume, halt: each as a note


def _markers(html: str) -> list[tuple[str, float, float, str]]:
    """(action, t, x, label) of each decision marker of the timeline SVG, in document order."""
    lines = re.findall(r'<line class="decision" data-action="([a-z_]+)" data-t="([0-9.]+)" x1="([0-9.]+)"', html)
    labels = re.findall(r'<text class="decision-label"[^>]*>([^<]*)</text>', html)
    return [(a, float(t), float(x), lab) for (a, t, x), lab in zip(lines, labels, strict=True)]


def test_the_html_timeline_marks_each_decision_at_its_time(run, capsys, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    code, _out, err = _analyze_cli(
        capsys, run["spans"], "--config", run["config"], "--all-assigned", "--html", str(page)
    )
    assert code == 0, err
    html = page.read_text()
    marks = _markers(html)
    assert [(a, lab) for a, _t, _x, lab in marks] == [
        ("pause", "paused one-page"),
        ("alert", "alert one-page"),
        ("resume", "resumed"),
    ]
    ts = [t for _a, t, _x, _l in marks]
    xs = [x for _a, _t, x, _l in marks]
    assert ts == [PAUSE, PAUSE + 600, RESUME]
    assert xs[0] < xs[1] < xs[2]  # placed by time
    # the plot's x axis runs from 0 to the last look's units; users arrive early, so 1 h in is past half of them
    svg = html[html.index("interval at each look") :]
    frame = re.search(r'<rect x="([0-9.]+)" y="[0-9.]+" width="([0-9.]+)"', svg)
    assert frame is not None
    left, width = float(frame[1]), float(frame[2])
    assert left < xs[0] < left + width and xs[2] < left + width
    assert "decision faults halted at" in html and "outside the plotted range" in html
    assert "Paused periods" in html and "<table class='periods'>" in html


def test_without_a_pause_there_are_no_periods(tmp_path: Path, capsys) -> None:
    (tmp_path / "lab.toml").write_text(TOML)
    spans = write_spans(str(tmp_path / "t.jsonl"), [r for r in _requests() if r.start_ns < PAUSE * 10**9])
    code, out, err = _analyze_cli(capsys, spans, "--config", str(tmp_path / "lab.toml"), "--json")
    assert code == 0, err
    e = json.loads(out)["experiments"][EXP]
    assert "periods" not in e and not any(n.startswith("periods:") for n in e["notes"])


# ----------------------------------------------------------------------------- --since / --until


def _same(a: Any, b: Any) -> None:
    assert (a.spans, a.server_spans, a.malformed_lines) == (b.spans, b.server_spans, b.malformed_lines)
    assert set(a.experiments) == set(b.experiments)
    for k, ea in a.experiments.items():
        eb = b.experiments[k]
        assert set(ea.variants) == set(eb.variants)
        for v, ga in ea.variants.items():
            gb = eb.variants[v]
            assert ga.units == gb.units
            for col in ("requests", "errors", "exposed_requests", "guarded_requests"):
                assert sorted(getattr(ga, col)) == sorted(getattr(gb, col)), (k, v, col)
            assert sorted(ga.first_seen) == pytest.approx(sorted(gb.first_seen))
            assert list(ga.hist_all) == list(gb.hist_all)


def test_since_until_window_is_half_open_and_identical_in_every_engine(run, tmp_path: Path) -> None:
    """Spans that start exactly at ``since`` are in, exactly at ``until`` out; SQL over files (chdb), SQL over
    the Collector's ``otel_traces`` table and the Python engine give the same aggregates."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "analysis"))
    from analysis_helpers import OTEL_TRACES_DDL, chdb_session, load_into_otel_traces

    edge = [
        Request(PAUSE * 10**9, 10.0, False, {A.variant_attr("edge"): "control", A.unit_attr("user"): "at-since"}),
        Request(RESUME * 10**9, 10.0, False, {A.variant_attr("edge"): "control", A.unit_attr("user"): "at-until"}),
        Request(RESUME * 10**9 - 1, 10.0, False, {A.variant_attr("edge"): "control", A.unit_attr("user"): "last"}),
    ]
    spans = write_spans(str(tmp_path / "all.jsonl"), _requests() + edge)
    window = time_window(_iso(PAUSE), RESUME)
    assert window == TimeWindow(PAUSE * 10**9, RESUME * 10**9)
    spec = QuerySpec(window=window)
    py = FileSource(spans, engine="python").aggregate(spec)
    ch = FileSource(spans, engine="chdb").aggregate(spec)
    assert (py.engine, ch.engine) == ("python", "chdb")
    _same(py, ch)
    edge_units = py.experiments["edge"].variants["control"]
    assert edge_units.units == 2  # at-since and last; at-until is outside
    # ground truth: the requests that started in the window, counted by hand
    inside = [r for r in _requests() if PAUSE * 10**9 <= r.start_ns < RESUME * 10**9]
    got = sum(g.requests.sum() for g in py.experiments[EXP].variants.values())
    assert got == len(inside) and py.server_spans == len(inside) + 2
    # each request has one child span starting 1 ns after it: the last request's child starts at until, outside
    assert py.spans == 2 * py.server_spans - 1
    assert py.experiments[EXP].variants["one-page"].guarded_requests.sum() == sum(
        1 for r in inside if A.guardrail_attr(EXP) in r.attrs
    )
    sess = chdb_session(str(tmp_path / "ch"))
    try:
        sess.query("CREATE DATABASE IF NOT EXISTS otel")
        sess.query(OTEL_TRACES_DDL.format(table="otel.otel_traces", duration_type="UInt64"))
        load_into_otel_traces(sess, "otel.otel_traces", spans)
        table = ClickHouseSource.from_chdb(sess, "otel.otel_traces").aggregate(spec)
    finally:
        sess.close()
    _same(py, table)
    # open bounds: only since, only until
    for w in (TimeWindow(PAUSE * 10**9, None), TimeWindow(None, PAUSE * 10**9)):
        _same(
            FileSource(spans, engine="python").aggregate(QuerySpec(window=w)),
            FileSource(spans, engine="chdb").aggregate(QuerySpec(window=w)),
        )


def test_analyze_since_until_from_python_and_the_cli(run, capsys) -> None:
    r = analyze(run["spans"], run["config"], since=PAUSE, until=_iso(RESUME), all_assigned=True, engine="python")
    e = r["experiments"][EXP]
    assert (r["method"]["since"], r["method"]["until"]) == (PAUSE, RESUME)
    assert any("--since / --until" in n for n in r["notes"])
    assert abs(e["comparisons"]["one-page"]["error_rate"]["estimate"]) < 0.02
    code, out, err = _analyze_cli(
        capsys, run["spans"], "--config", run["config"], "--all-assigned", "--json", "--until", str(PAUSE)
    )
    assert code == 0, err
    doc = json.loads(out)
    assert doc["experiments"][EXP]["comparisons"]["one-page"]["error_rate"]["estimate"] > 0.15
    # the periods are cut to the window: only "before" has data
    periods = doc["experiments"][EXP]["periods"]
    assert [p["verdict"] for p in periods[1:]] == ["no data", "no data"]


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--since", "yesterday"], "--since"),
        (["--until", "2026-13-01"], "--until"),
        (["--since", "5", "--until", "5"], "--until"),
    ],
)
def test_a_bad_time_is_a_one_line_error_naming_the_flag(run, capsys, args: list[str], flag: str) -> None:
    code, out, err = _analyze_cli(capsys, run["spans"], *args)
    assert code == 2 and out == ""
    assert err.startswith(f"fieldlab analyze: {flag} ") and err.count("\n") == 1, err


def test_parse_time_reads_iso_to_the_nanosecond_and_epoch_seconds_exactly() -> None:
    assert parse_time("2026-12-04T20:31:07.123456789Z") == 1_796_416_267_123_456_789
    assert parse_time("2026-12-04T21:31:07.5+01:00") == 1_796_416_267_500_000_000
    assert parse_time("2026-12-04T20:31:07") == 1_796_416_267 * 10**9  # no zone: UTC
    assert parse_time(1796416267.25) == 1_796_416_267_250_000_000
    assert parse_time("1796416267") == parse_time(1796416267) == 1_796_416_267 * 10**9
    assert parse_time(dt.datetime(2026, 12, 4, 20, 31, 7, tzinfo=dt.timezone.utc)) == 1_796_416_267 * 10**9


def test_pause_periods_replay_the_store_rules_per_variant_and_experiment_wide() -> None:
    """Two variants paused at different times, one resumed on its own, then all; a budget resume that may not
    lift a guardrail pause changes nothing; a second pause gets its own period; other experiments are apart."""
    from fieldlab.control.report import pause_periods

    def d(action: str, t: int, variant: str | None = None, cause: str = "guardrail", exp: str = EXP) -> Decision:
        return Decision(action, exp, variant, cause, "", "x", _iso(t))

    history = [
        d("pause", T0 + 10, "a"),
        d("pause", T0 + 20, "b"),
        d("resume", T0 + 25, "a", cause="budget"),  # may not lift a guardrail pause: no change, no split
        d("alert", T0 + 27, "a"),  # an alert changes nothing for requests
        d("resume", T0 + 30, "b", cause="operator"),
        d("pause", T0 + 35, "z", exp="other"),
        d("resume", T0 + 40, cause="operator"),
        d("pause", T0 + 50, "a"),
    ]
    got = pause_periods(history)
    assert set(got) == {EXP, "other"}
    rows = [(p.label, p.since_ns, p.until_ns, p.paused) for p in got[EXP]]
    ns = 10**9
    assert rows == [
        ("before", None, (T0 + 10) * ns, ()),
        ("paused a", (T0 + 10) * ns, (T0 + 20) * ns, ("a",)),
        ("paused a, b", (T0 + 20) * ns, (T0 + 30) * ns, ("a", "b")),
        ("paused a (2)", (T0 + 30) * ns, (T0 + 40) * ns, ("a",)),
        ("after resume", (T0 + 40) * ns, (T0 + 50) * ns, ()),
        ("paused a (3)", (T0 + 50) * ns, None, ("a",)),
    ]
    assert [p.label for p in got["other"]] == ["before", "paused z"]
