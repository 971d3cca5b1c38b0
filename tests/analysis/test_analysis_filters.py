"""``--where`` filters and the two request counts (issue 15 §4), through the real readers and engines.

Files come from the OpenTelemetry SDK and its JSON file exporter; the filters run as SQL on embedded
ClickHouse (files and the Collector exporter's ``otel_traces`` table) and in the pure-Python engine, and every
way must give what analysing only the matching requests gives.
"""

from __future__ import annotations

import random

import pytest
from analysis_helpers import OTEL_TRACES_DDL, Req, chdb_session, load_into_otel_traces, make_requests, write_otlp
from test_analysis_sources import assert_same

from fieldlab import attributes as A
from fieldlab.analysis import analyze
from fieldlab.analysis.model import parse_where
from fieldlab.analysis.sources import ClickHouseSource, FileSource, QuerySpec
from fieldlab.cli import main

ROUTES = [("/login", "POST"), ("/", "GET"), ("/checkout", "POST"), ("/checkout", "GET")]


def _routed(seed: int = 21) -> list[Req]:
    """Two-arm traffic where each request has a route and a method; a third of the spans carry the method
    under the older ``http.method`` name."""
    rnd = random.Random(seed)
    out = []
    for r in make_requests(
        900, experiment="checkout", latency_ms={"control": 20.0, "treatment": 26.0}, exposed_share=0.8, seed=seed
    ):
        route, method = rnd.choice(ROUTES)
        attrs = dict(r["attrs"], **{A.HTTP_ROUTE: route, "url.path": route})
        if rnd.random() < 0.33:
            attrs["http.method"] = method
        else:
            attrs[A.HTTP_METHOD] = method
        out.append(Req(r, attrs=attrs))
    return out


def _matches(r: Req, route: str, method: str) -> bool:
    a = r["attrs"]
    return a[A.HTTP_ROUTE] == route and (a.get(A.HTTP_METHOD) or a.get("http.method")) == method


@pytest.fixture(scope="module")
def routed(tmp_path_factory):
    reqs = _routed()
    d = tmp_path_factory.mktemp("routed")
    everything = write_otlp(str(d / "all.jsonl"), reqs)
    # ground truth: a file holding only the POSTs to /checkout (the child spans too, so the counts line up)
    only = write_otlp(str(d / "only.jsonl"), [r for r in reqs if _matches(r, "/checkout", "POST")])
    return everything, only


def test_where_filters_route_and_method_alike_in_every_engine(routed, tmp_path):
    """A latency comparison must not mix login POSTs and page GETs: ``--where`` keeps only the matching
    requests, as SQL over files, SQL over ``otel_traces`` and in the Python engine, old method name included."""
    everything, only = routed
    spec = QuerySpec(filters=(parse_where("http.route=/checkout"), parse_where("method=post")))
    truth = FileSource(only, engine="python").aggregate(QuerySpec())
    py = FileSource(everything, engine="python").aggregate(spec)
    ch = FileSource(everything, engine="chdb").aggregate(spec)
    unfiltered = FileSource(everything, engine="python").aggregate(QuerySpec())
    assert ch.engine == "chdb" and py.engine == "python"
    n_truth = sum(g.requests.sum() for g in truth.experiments["checkout"].variants.values())
    n_all = sum(g.requests.sum() for g in unfiltered.experiments["checkout"].variants.values())
    assert 0 < n_truth < n_all / 3  # the filter did something, and something is left
    assert_same(py, ch)
    # every span is still read and counted; only the analysed requests differ
    assert py.spans == unfiltered.spans and py.server_spans == unfiltered.server_spans
    for v, g in truth.experiments["checkout"].variants.items():
        f = py.experiments["checkout"].variants[v]
        assert (f.units, f.requests.sum(), f.errors.sum()) == (g.units, g.requests.sum(), g.errors.sum())
        assert f.latency_sum_ms.sum() == pytest.approx(g.latency_sum_ms.sum())
        assert list(f.hist_all) == list(g.hist_all)
    sess = chdb_session(str(tmp_path / "ch"))
    try:
        sess.query(OTEL_TRACES_DDL.format(table="otel_traces", duration_type="UInt64"))
        load_into_otel_traces(sess, "otel_traces", everything)
        table = ClickHouseSource.from_chdb(sess, "otel_traces").aggregate(spec)
    finally:
        sess.close()
    assert_same(table, py)


def test_where_on_the_cli_and_in_the_json(routed, capsys):
    everything, _ = routed
    res = analyze(everything, where=["route=/checkout", "http.request.method=POST"], engine="python")
    assert res["method"]["filters"] == ["http.route=/checkout", "http.request.method=POST"]
    assert any(
        "only requests with http.route = '/checkout' and http.request.method = 'POST'" in n for n in res["notes"]
    )
    base = analyze(everything, engine="python")
    n = sum(v["requests"] for v in res["experiments"]["checkout"]["variants"].values())
    assert 0 < n < sum(v["requests"] for v in base["experiments"]["checkout"]["variants"].values()) / 3
    assert (
        main(
            [
                "analyze",
                everything,
                "--where",
                "http.route=/checkout",
                "--where",
                "method=POST",
                "--json",
                "--engine",
                "python",
            ]
        )
        == 0
    )
    import json

    assert json.loads(capsys.readouterr().out)["experiments"] == res["experiments"]
    assert main(["analyze", everything, "--where", "http.route"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--where 'http.route': write ATTR=VALUE" in err


def test_requests_and_exposed_requests_are_named_apart(tmp_path, capsys):
    """``requests`` counts every request of an exposed unit; readers took it for exposed requests. Both are
    reported: here each unit reads the variant on its first request only."""
    reqs = make_requests(600, experiment="checkout", reqs_per_unit=(2, 4), seed=5)
    seen: set[str] = set()
    for r in reqs:
        uid = r["attrs"][A.unit_attr("user")]
        if uid in seen:
            r["attrs"].pop(A.exposed_attr("checkout"), None)
        seen.add(uid)
    path = write_otlp(str(tmp_path / "exp.jsonl"), reqs, child_spans=False)
    by_engine = {}
    for engine in ("python", "chdb"):
        res = analyze(path, engine=engine)
        by_engine[engine] = res["experiments"]["checkout"]["variants"]
    assert by_engine["python"] == by_engine["chdb"]
    for _v, s in by_engine["python"].items():
        assert s["exposed_requests"] == s["units"]  # one exposed request per unit
        assert s["requests"] > 2 * s["units"]  # every request of those units
    assert main(["analyze", path, "--engine", "python"]) == 0
    out = capsys.readouterr().out
    assert "exposed req" in out and "exposed req: the requests that read the variant" in out
    control = by_engine["python"]["control"]
    row = next(line for line in out.splitlines() if line.strip().startswith("control "))
    assert f"{control['requests']:,}" in row and f"{control['exposed_requests']:,}" in row
