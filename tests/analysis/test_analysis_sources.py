"""Every way of reading the same spans gives the same aggregates.

Real parts only: files come from the OpenTelemetry SDK and its JSON file exporter;
the ClickHouse path runs the production SQL on chdb against the Collector exporter's
``otel_traces`` schema with both enum spellings.
"""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pytest
from analysis_helpers import OTEL_TRACES_DDL, chdb_session, load_into_otel_traces, write_otlp

from fieldlab import attributes as A
from fieldlab.analysis.sources import ClickHouseSource, FileSource, QuerySpec, SourceError, open_source, parse_metric

SPEC = QuerySpec(metrics=(parse_metric("app.checkout.completed=true"), parse_metric("app.cart.value")))


def _rows(g):
    lat = np.round(g.latency_sum_ms, 6)
    cols = [g.requests, g.errors, lat, g.exposed.astype(float), np.round(g.first_seen, 6)]
    cols += [np.round(v, 6) for _, v in sorted(g.metric_sums.items())]
    cols += [v for _, v in sorted(g.metric_counts.items())] + [v for _, v in sorted(g.conversions.items())]
    m = np.column_stack(cols)
    return m[np.lexsort(m.T[::-1])]


def assert_same(a, b, *, lines=True):
    assert a.spans == b.spans and a.server_spans == b.server_spans
    if lines:
        assert a.malformed_lines == b.malformed_lines
    assert sorted(a.experiments) == sorted(b.experiments)
    assert sorted(a.holdouts) == sorted(b.holdouts)
    for key, ea in a.experiments.items():
        eb = b.experiments[key]
        assert (ea.forced_requests, ea.multi_variant_units, ea.unit_kinds) == (
            eb.forced_requests,
            eb.multi_variant_units,
            eb.unit_kinds,
        )
        assert sorted(ea.variants) == sorted(eb.variants)
        for v, ga in ea.variants.items():
            gb = eb.variants[v]
            assert ga.units == gb.units
            np.testing.assert_allclose(_rows(ga), _rows(gb), rtol=1e-9, atol=1e-6)
            np.testing.assert_array_equal(ga.hist_bins, gb.hist_bins)
            np.testing.assert_array_equal(ga.hist_all, gb.hist_all)
            np.testing.assert_array_equal(ga.hist_exposed, gb.hist_exposed)


@pytest.fixture(scope="module")
def reference(ab_file):
    return FileSource(ab_file, engine="python").aggregate(SPEC)


def test_reference_counts_match_what_was_written(ab_file, reference):
    """The streaming reader against a direct json walk of the exporter's file."""
    server = forced = 0
    with open(ab_file) as f:
        for line in f:
            for rs in json.loads(line)["resourceSpans"]:
                for ss in rs["scopeSpans"]:
                    for sp in ss["spans"]:
                        if sp["kind"] == 2:
                            server += 1
                            keys = {a["key"]: a["value"] for a in sp.get("attributes", [])}
                            forced += A.forced_attr("checkout") in keys
    assert reference.server_spans == server
    assert reference.spans == 2 * server  # one CLIENT child span each, ignored even with a variant attribute
    e = reference.experiments["checkout"]
    assert e.forced_requests == forced > 0
    total = sum(int(g.requests.sum()) for g in e.variants.values())
    assert total == server - forced
    assert e.unit_kinds == ["user"]
    assert "decoy" not in reference.experiments


def test_chdb_file_engine_matches_python(ab_file, reference):
    assert_same(FileSource(ab_file, engine="chdb").aggregate(SPEC), reference)


def test_gzip_directory_glob_and_split_files_match(ab_file, reference, tmp_path):
    gz = tmp_path / "gz" / "traces.jsonl.gz"
    gz.parent.mkdir()
    with open(ab_file, "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    nogz_name = tmp_path / "odd" / "traces.data"  # gzip without a .gz name: detected by content
    nogz_name.parent.mkdir()
    shutil.copy(gz, nogz_name)
    split = tmp_path / "split"
    split.mkdir()
    lines = open(ab_file).read().splitlines(keepends=True)
    half = len(lines) // 2
    (split / "a.jsonl").write_text("".join(lines[:half]))
    with gzip.open(split / "b.jsonl.gz", "wt") as f:
        f.write("".join(lines[half:]))
    for engine in ("chdb", "python"):
        assert_same(FileSource(str(gz), engine=engine).aggregate(SPEC), reference)
        assert_same(FileSource(str(nogz_name), engine=engine).aggregate(SPEC), reference)
        assert_same(FileSource(str(split), engine=engine).aggregate(SPEC), reference)
        assert_same(FileSource(str(split / "*.json*"), engine=engine).aggregate(SPEC), reference)
        assert_same(
            FileSource([str(split / "a.jsonl"), str(split / "b.jsonl.gz")], engine=engine).aggregate(SPEC), reference
        )


def test_malformed_lines_are_skipped_and_counted(ab_file, reference, tmp_path):
    lines = open(ab_file).read().splitlines()
    bad = [
        "not json at all",
        lines[0][: len(lines[0]) // 2],
        "[1, 2, 3]",
        '{"resourceSpans": 7}',
        "\x00\x01garbage{",
        "",
        "   ",
    ]
    mixed = []
    for i, line in enumerate(lines):
        mixed.append(line)
        if i < len(bad):
            mixed.append(bad[i])
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(mixed) + "\n")
    for engine in ("chdb", "python"):
        agg = FileSource(str(path), engine=engine).aggregate(SPEC)
        # 4 unusable lines: text, truncated, an array, binary. '{"resourceSpans": 7}' is a JSON object without
        # spans (like a metrics line): not malformed, just empty. Blank lines are not lines.
        assert agg.malformed_lines == 4, engine
        assert_same(agg, reference, lines=False)
    chdb_bad = FileSource(str(path), engine="chdb").aggregate(SPEC).malformed_lines
    py_bad = FileSource(str(path), engine="python").aggregate(SPEC).malformed_lines
    assert chdb_bad == py_bad


def test_collector_spellings_string_enums_and_numeric_ints(ab_file, reference, tmp_path):
    """The Collector/other producers: kind and status as enum strings, intValue as a JSON number."""
    out = tmp_path / "collector.jsonl"
    with open(ab_file) as src, open(out, "w") as dst:
        for line in src:
            doc = json.loads(line)
            for rs in doc["resourceSpans"]:
                for ss in rs["scopeSpans"]:
                    for sp in ss["spans"]:
                        sp["kind"] = {2: "SPAN_KIND_SERVER", 3: "SPAN_KIND_CLIENT"}[sp["kind"]]
                        if sp.get("status", {}).get("code") == 2:
                            sp["status"]["code"] = "STATUS_CODE_ERROR"
                        for a in sp.get("attributes", []):
                            if "intValue" in a["value"]:
                                a["value"]["intValue"] = int(a["value"]["intValue"])
            dst.write(json.dumps(doc) + "\n")
    for engine in ("chdb", "python"):
        assert_same(FileSource(str(out), engine=engine).aggregate(SPEC), reference)


@pytest.mark.parametrize("duration_type", ["UInt64", "Int64"])
def test_clickhouse_exporter_schema_on_chdb(ab_file, reference, tmp_path, duration_type):
    sess = chdb_session(str(tmp_path / "ch"))
    try:
        sess.query("CREATE DATABASE IF NOT EXISTS otel")
        sess.query(OTEL_TRACES_DDL.format(table="otel.otel_traces", duration_type=duration_type))
        n = load_into_otel_traces(sess, "otel.otel_traces", ab_file)
        assert n == reference.spans
        kinds = str(sess.query("SELECT groupUniqArray(SpanKind) FROM otel.otel_traces", "TSV"))
        assert "SPAN_KIND_SERVER" in kinds and "Server" in kinds
        agg = ClickHouseSource.from_chdb(sess, "otel.otel_traces").aggregate(SPEC)
        assert agg.engine == "clickhouse"
        assert_same(agg, reference)
    finally:
        sess.close()


def test_holdouts_multi_variant_units_and_request_units(tmp_path):
    from opentelemetry.trace import SpanKind

    reqs = [
        # held-out unit: its own group, never in an experiment its holdout covers even if a variant leaks onto
        # the span (the coverage comes from the config: QuerySpec.holdout_experiments)
        dict(
            attrs={A.holdout_attr("q3"): True, A.unit_attr("user"): "h1:aaaa", A.variant_attr("exp"): "control"},
            dur_ms=5,
        ),
        dict(attrs={A.holdout_attr("q3"): True, A.unit_attr("user"): "h1:aaaa"}, dur_ms=7),
        # a unit seen in two variants is excluded and counted
        dict(attrs={A.variant_attr("exp"): "control", A.unit_attr("user"): "h1:bbbb"}, dur_ms=5),
        dict(attrs={A.variant_attr("exp"): "treatment", A.unit_attr("user"): "h1:bbbb"}, dur_ms=5),
        dict(attrs={A.variant_attr("exp"): "control", A.unit_attr("user"): "h1:cccc"}, dur_ms=5),
        dict(attrs={A.variant_attr("exp"): "treatment", A.unit_attr("user"): "h1:dddd"}, dur_ms=5),
        # no unit attribute at all: the trace id is the unit (kind request)
        dict(attrs={A.variant_attr("req"): "a"}, dur_ms=3),
        dict(attrs={A.variant_attr("req"): "a"}, dur_ms=3),
        dict(attrs={A.variant_attr("req"): "b", A.HTTP_STATUS_CODE_OLD: 503}, dur_ms=3),
        # visitor before session when there is no user
        dict(attrs={A.variant_attr("vis"): "a", A.unit_attr("session"): "s1", A.unit_attr("visitor"): "v1"}, dur_ms=3),
        # not a server span: ignored
        dict(
            attrs={A.variant_attr("exp"): "control", A.unit_attr("user"): "h1:eeee"}, dur_ms=5, kind=SpanKind.INTERNAL
        ),
    ]
    path = write_otlp(str(tmp_path / "t.jsonl"), reqs, child_spans=False)
    for engine in ("chdb", "python"):
        agg = FileSource(path, engine=engine).aggregate(QuerySpec(holdout_experiments={"q3": ("exp",)}))
        assert sorted(agg.holdouts) == ["q3"]
        assert agg.holdouts["q3"].units == 1 and agg.holdouts["q3"].requests.sum() == 2
        e = agg.experiments["exp"]
        assert e.multi_variant_units == 1
        assert {v: g.units for v, g in e.variants.items()} == {"control": 1, "treatment": 1}
        r = agg.experiments["req"]
        assert r.unit_kinds == ["request"]
        assert {v: g.units for v, g in r.variants.items()} == {"a": 2, "b": 1}
        assert r.variants["b"].errors.sum() == 1  # old http.status_code >= 500
        assert agg.experiments["vis"].unit_kinds == ["visitor"]
        assert agg.server_spans == 10
    # with a configured unit kind the configured attribute is used
    spec = QuerySpec(unit_kinds={"vis": "session"})
    for engine in ("chdb", "python"):
        assert FileSource(path, engine=engine).aggregate(spec).experiments["vis"].unit_kinds == ["session"]


def test_bad_sources_say_what_to_do(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        open_source(str(tmp_path / "missing.jsonl"))
    with pytest.raises(SourceError, match="matches no files"):
        open_source(str(tmp_path / "*.jsonl"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="holds no .json"):
        open_source(str(tmp_path / "empty"))
    with pytest.raises(SourceError, match="clickhouse://"):
        open_source("ftp://example/x")
    with pytest.raises(ValueError, match="ATTR=VALUE"):
        parse_metric("app.x=")


def test_numpy_stays_out_of_import_fieldlab():
    import subprocess
    import sys

    code = "import sys, fieldlab, fieldlab.analysis; print('numpy' in sys.modules, 'scipy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_clickhouse_sql_asset_agrees_with_analyze(ab_file, tmp_path):
    """integrations/clickhouse/fieldlab_variant_summary.sql on the exporter schema gives analyze's ITT counts."""
    from pathlib import Path

    from fieldlab.analysis import analyze

    asset = Path(__file__).parents[2] / "integrations" / "clickhouse" / "fieldlab_variant_summary.sql"
    sql = asset.read_text()
    for name in (
        A.VARIANT_PREFIX,
        A.EXPOSED_PREFIX,
        A.FORCED_PREFIX,
        A.unit_attr("user"),
        A.HTTP_STATUS_CODE,
        A.HTTP_STATUS_CODE_OLD,
    ):
        assert f"'{name}" in sql
    sql = sql.replace("{start:DateTime64(9)}", "toDateTime64('2000-01-01 00:00:00', 9)")
    sql = sql.replace("{end:DateTime64(9)}", "toDateTime64('2100-01-01 00:00:00', 9)")
    sess = chdb_session(str(tmp_path / "ch"))
    try:
        sess.query(OTEL_TRACES_DDL.format(table="otel_traces", duration_type="UInt64"))
        load_into_otel_traces(sess, "otel_traces", ab_file)
        text = str(sess.query(sql, "JSONEachRow"))
    finally:
        sess.close()
    rows = {r["variant"]: r for r in map(json.loads, text.splitlines()) if r.get("experiment") == "checkout"}
    res = analyze(ab_file, all_assigned=True)["experiments"]["checkout"]["variants"]
    assert set(rows) == set(res) == {"control", "treatment"}
    for v, r in rows.items():
        assert (int(r["units"]), int(r["requests"]), int(r["errors"])) == (
            res[v]["units"],
            res[v]["requests"],
            res[v]["errors"],
        )


def test_auto_engine_falls_back_when_chdb_is_busy(ab_file, reference, tmp_path):
    """A process that already holds a chdb session on a path cannot open chdb's default one."""
    sess = chdb_session(str(tmp_path / "busy"))
    try:
        agg = FileSource(ab_file).aggregate(SPEC)
        assert agg.engine.startswith("python (chdb unavailable")
        assert_same(agg, reference)
        with pytest.raises(SourceError, match="--engine python"):
            FileSource(ab_file, engine="chdb").aggregate(SPEC)
    finally:
        sess.close()


def test_zstd_files_from_the_collector_file_exporter(ab_file, reference, tmp_path):
    """The Collector file exporter's ``compression: zstd``: detected by content, read by chdb."""
    import chdb

    out = tmp_path / "traces.zst"
    chdb.query(f"SELECT * FROM file('{ab_file}', 'RawBLOB') INTO OUTFILE '{out}' COMPRESSION 'zstd' FORMAT RawBLOB")
    assert out.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
    assert_same(FileSource(str(out)).aggregate(SPEC), reference)
    with pytest.raises(SourceError, match="zstd"):
        FileSource(str(out), engine="python").aggregate(SPEC)
