"""Adversarial inputs to ``fieldlab analyze`` and ``fieldlab balance``: nothing crashes, nothing is lost silently.

Each test feeds one kind of bad file found by probing (a truncated gzip, a deeply nested line, a ``1e999``
timestamp, a unit id with a lone surrogate, a 40 MB line) through the real CLI in a subprocess, with both
file engines (embedded ClickHouse and the pure-Python reader), and checks that the good lines are still
counted, the bad ones are skipped and counted, and the engines agree.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import tracemalloc

import pytest

from fieldlab import attributes as A

ENGINES = ("chdb", "python")
T0 = 1_795_000_000_000_000_000
N_GOOD = 120  # requests, 60 users, two arms


def _span(i: int, unit: str | None = None, start: object = None) -> dict:
    uid = unit if unit is not None else f"user-{i % 60}"
    attrs = [
        {"key": A.variant_attr("exp"), "value": {"stringValue": "control" if i % 2 else "treatment"}},
        {"key": A.unit_attr("user"), "value": {"stringValue": uid}},
        {"key": A.exposed_attr("exp"), "value": {"boolValue": True}},
    ]
    return {
        "traceId": f"{i:032x}",
        "spanId": f"{i:016x}",
        "name": "GET /",
        "kind": 2,
        "startTimeUnixNano": str(T0 + i * 10**6) if start is None else start,
        "endTimeUnixNano": str(T0 + i * 10**6 + 5 * 10**6),
        "attributes": attrs,
        "status": {},
    }


def _line(spans: list[dict]) -> str:
    return json.dumps(
        {"resourceSpans": [{"resource": {"attributes": []}, "scopeSpans": [{"scope": {"name": "t"}, "spans": spans}]}]}
    )


def _good_lines(first: int = 0) -> list[str]:
    return [_line([_span(i)]) for i in range(first, first + N_GOOD)]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    env["PYTHONPATH"] = os.path.abspath(src) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-c", "import sys, fieldlab.cli; sys.exit(fieldlab.cli.main())", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def _analyze(path: str, engine: str, *extra: str) -> dict:
    p = _run("analyze", path, "--engine", engine, "--json", *extra)
    assert p.returncode == 0, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr, p.stderr
    return json.loads(p.stdout)


def _counts(res: dict) -> tuple:
    e = res["experiments"]["exp"]
    return (
        res["spans"],
        res["server_spans"],
        res["malformed_lines"],
        res["long_lines"],
        {v: (s["units"], s["requests"]) for v, s in e["variants"].items()},
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_truncated_gzip_is_read_up_to_the_damage_not_an_eof_error(tmp_path, engine):
    """A gzip cut short (a copy interrupted, a disk full) gave EOFError / ZLIB_INFLATE_FAILED tracebacks."""
    whole = gzip.compress(("\n".join(_good_lines()) + "\n").encode())
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    intact = tmp_path / "intact.jsonl"
    intact.write_text("\n".join(_good_lines(1000)) + "\n")
    res = _analyze(str(tmp_path), engine)
    assert len(res["damaged_files"]) == 1 and "cut.jsonl.gz" in res["damaged_files"][0]
    assert "truncated" in res["damaged_files"][0]
    assert N_GOOD < res["spans"] < 2 * N_GOOD  # all of the intact file, part of the cut one
    assert any("damaged file" in n for n in res["notes"])
    other = _analyze(str(tmp_path), "python" if engine == "chdb" else "chdb")
    assert _counts(res) == _counts(other)
    text = _run("analyze", str(tmp_path), "--engine", engine)
    assert text.returncode == 0 and "1 damaged file(s) read in part" in text.stdout


@pytest.mark.parametrize("engine", ENGINES)
def test_deeply_nested_arrays_are_a_malformed_line_not_a_recursion_error(tmp_path, engine):
    path = tmp_path / "nested.jsonl"
    bad = ["[" * 100_000 + "]" * 100_000, '{"resourceSpans": ' + "[" * 5000 + "]" * 5000 + "}"]
    path.write_text("\n".join(_good_lines()[:60] + bad + _good_lines()[60:]) + "\n")
    res = _analyze(str(path), engine)
    assert res["malformed_lines"] == 2 and res["spans"] == N_GOOD


@pytest.mark.parametrize("engine", ENGINES)
def test_1e999_timestamp_is_a_malformed_line_not_an_overflow_error(tmp_path, engine):
    path = tmp_path / "inf.jsonl"
    bad = _line([_span(9999, start=1)]).replace('"startTimeUnixNano": 1', '"startTimeUnixNano": 1e999')
    nan = _line([_span(9998, start=1)]).replace('"startTimeUnixNano": 1', '"startTimeUnixNano": NaN')
    path.write_text("\n".join(_good_lines() + [bad, nan]) + "\n")
    res = _analyze(str(path), engine)
    assert res["malformed_lines"] == 2 and res["spans"] == N_GOOD


@pytest.mark.parametrize("engine", ENGINES)
def test_surrogate_unit_id_does_not_segfault_balance(tmp_path, engine):
    """``balance --engine python`` handed a lone surrogate to MurmurHash3's C code: the process died (SIGSEGV)."""
    path = tmp_path / "pre.jsonl"
    path.write_text("\n".join(_good_lines() + [_line([_span(5000, unit="x\udcff")])]) + "\n")
    cfg = tmp_path / "lab.toml"
    cfg.write_text('[[experiments]]\nkey = "exp"\nunit = "user"\nvariants = { control = 1, treatment = 1 }\n')
    p = _run("balance", str(cfg), "exp", str(path), "--engine", engine, "--json")
    assert p.returncode not in (-signal.SIGSEGV, 139), p.stderr
    assert p.returncode in (0, 1) and "Traceback" not in p.stderr, p.stderr[-2000:]
    res = json.loads(p.stdout)
    assert res["units"] == 60  # the line with the surrogate is not valid JSON text: skipped by both readers
    res = _analyze(str(path), engine)
    assert res["malformed_lines"] == 1


def test_non_utf8_unit_ids_from_clickhouse_are_skipped_and_counted_by_balance(tmp_path):
    """A ClickHouse table stores bytes; an id that is not UTF-8 must never reach the hash (or crash decoding)."""
    code = r"""
import json, sys
import chdb.session
from fieldlab.analysis.balance import balance
from fieldlab.analysis.sources import ClickHouseSource
from fieldlab.lab import Lab
from fieldlab.experiments import Experiment
sess = chdb.session.Session(sys.argv[1])
sess.query("CREATE TABLE t (TraceId String, SpanId String, Timestamp DateTime64(9), Duration UInt64, SpanKind String, "
           "StatusCode String, SpanAttributes Map(String, String)) ENGINE = MergeTree ORDER BY TraceId")
rows = ", ".join(f"('t{i}', 's{i}', now64(9), 5000000, 'Server', 'Unset', map('fieldlab.unit.user', 'u{i % 60}'))"
                 for i in range(240))
sess.query("INSERT INTO t VALUES " + rows)
sess.query("INSERT INTO t VALUES ('tx', 'sx', now64(9), 5000000, 'Server', 'Unset', "
           "map('fieldlab.unit.user', concat('bad', unhex('FFFE'))))")
lab = Lab([Experiment("exp", {"control": 1, "treatment": 1}, unit="user")])
res = balance(lab, "exp", ClickHouseSource.from_chdb(sess, "t"), tries=0)
print(json.dumps({"units": res["units"], "skipped": res["skipped_units"], "notes": res["notes"]}))
sess.close()
"""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "src"))
    p = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "ch")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert p.returncode == 0, (p.returncode, p.stderr[-2000:])
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["units"] == 60 and out["skipped"] == 1
    assert any("not valid UTF-8" in n for n in out["notes"])


@pytest.mark.parametrize("engine", ENGINES)
def test_over_long_line_is_skipped_and_counted_not_loaded(tmp_path, engine):
    """A 200 MB line took 2.7 GB; lines over the cap are now skipped unread (here a 3 MB line, a 1 MiB cap)."""
    path = tmp_path / "long.jsonl"
    huge = '{"resourceSpans": [], "pad": "' + "a" * 3_000_000 + '"}'
    path.write_text("\n".join(_good_lines()[:60] + [huge] + _good_lines()[60:]) + "\n")
    res = _analyze(str(path), engine, "--max-line-bytes", "1M")
    assert res["long_lines"] == 1 and res["malformed_lines"] == 0 and res["spans"] == N_GOOD
    assert any("longer than the 1 MiB line cap" in n for n in res["notes"])
    # with the default cap (16 MiB) the line is read and is simply a JSON object without spans
    res = _analyze(str(path), engine)
    assert res["long_lines"] == 0 and res["spans"] == N_GOOD


def test_line_reader_memory_does_not_grow_with_the_longest_line():
    """The reader drops an over-long line's bytes as they arrive: 64 MB of one line, at most ~2 chunks held."""
    from fieldlab.analysis import reader

    def chunks():
        block = b"x" * reader.CHUNK_BYTES
        for _ in range(64):
            yield block
        yield b"\n" + b'{"a": 1}\n'

    tracemalloc.start()
    try:
        out = list(reader.iter_lines(chunks(), 4 * reader.CHUNK_BYTES))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out == [reader.LONG_LINE, b'{"a": 1}']
    assert peak < 12 * reader.CHUNK_BYTES, peak


def test_max_line_bytes_must_be_a_size(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(_good_lines()) + "\n")
    p = _run("analyze", str(path), "--max-line-bytes", "lots")
    assert p.returncode == 2 and "16M" in p.stderr and "Traceback" not in p.stderr


def test_nesting_near_the_parser_limit_is_judged_alike_by_both_engines(tmp_path):
    """Python's parser stops near 1000 levels (less on a deep stack), ClickHouse's at 1024: the same lines
    must be read or refused by both engines, spans included."""
    lines = []
    for i, depth in enumerate((900, 1010, 1022, 1023, 1030)):
        doc = json.loads(_line([_span(7000 + i)]))
        text = json.dumps(doc)
        lines.append(text[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}")
    path = tmp_path / "deep.jsonl"
    path.write_text("\n".join(_good_lines() + lines) + "\n")
    res = {e: _analyze(str(path), e) for e in ENGINES}
    assert _counts(res["chdb"]) == _counts(res["python"])
    # levels = depth + 1 (the line's object): up to 1024 is read
    assert res["python"]["spans"] == N_GOOD + 4 and res["python"]["malformed_lines"] == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_balance_reports_a_damaged_file_and_long_lines_it_skipped(tmp_path, engine):
    whole = gzip.compress(("\n".join(_good_lines()) + "\n").encode())
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[: len(whole) * 2 // 3])
    huge = '{"resourceSpans": [], "pad": "' + "a" * 2_000_000 + '"}'
    (tmp_path / "more.jsonl").write_text("\n".join(_good_lines(1000) + [huge]) + "\n")
    cfg = tmp_path / "lab.toml"
    cfg.write_text('[[experiments]]\nkey = "exp"\nunit = "user"\nvariants = { control = 1, treatment = 1 }\n')
    p = _run("balance", str(cfg), "exp", str(tmp_path), "--engine", engine, "--json", "--max-line-bytes", "1M")
    assert p.returncode in (0, 1) and "Traceback" not in p.stderr, p.stderr[-2000:]
    res = json.loads(p.stdout)
    assert res["long_lines"] == 1 and len(res["damaged_files"]) == 1 and "cut.jsonl.gz" in res["damaged_files"][0]
    assert any("damaged file" in n for n in res["notes"])
