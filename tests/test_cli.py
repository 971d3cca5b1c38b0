"""The fieldlab command line: output, exit codes and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fieldlab import Lab, bucket, verify_token
from fieldlab.cli import main

EXAMPLE = str(Path(__file__).parent.parent / "examples" / "lab.toml")


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_validate(capsys):
    code, out, _ = run(capsys, "validate", EXAMPLE)
    assert code == 0
    assert "valid, config version" in out and Lab.from_file(EXAMPLE).version in out
    assert "checkout-redesign: running, unit user, traffic 50%" in out


def test_validate_bad_file_is_one_line(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[experiments]]\nkey = "a"\ntraffic = 300\nvariants = [{name = "x"}]\n')
    code, out, err = run(capsys, "validate", str(bad))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "experiments[0].traffic: traffic 300 is outside 0-100" in err
    assert "Traceback" not in err


def test_assign_json(capsys):
    code, out, _ = run(
        capsys, "assign", EXAMPLE, "--unit", "alice", "--attr", "country=DE", "--attr", "app_version=2.4.0", "--json"
    )
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert {r["experiment"] for r in rows} == set(Lab.from_file(EXAMPLE).experiments)
    for r in rows:
        assert set(r) >= {"experiment", "variant", "bucket", "reason"}
    by = {r["experiment"]: r for r in rows}
    assert by["checkout-redesign"]["bucket"] == bucket("checkout-redesign", "alice")
    assert by["search-ranking"]["reason"] in ("split", "traffic")
    assert by["recommendations-v2"] == {
        "experiment": "recommendations-v2",
        "variant": "v2",
        "bucket": None,
        "reason": "concluded",
    }


def test_token_roundtrip(capsys, monkeypatch):
    monkeypatch.setenv("FIELDLAB_SECRET", "k")
    code, out, _ = run(
        capsys, "token", EXAMPLE, "--experiment", "checkout-redesign", "--variant", "treatment", "--ttl", "10m"
    )
    assert code == 0
    token = out.strip()
    assert verify_token("k", token) == ("checkout-redesign", "treatment")
    code, out, _ = run(
        capsys, "assign", EXAMPLE, "--unit", "alice", "--experiment", "checkout-redesign", "--override", token, "--json"
    )
    assert json.loads(out)["variant"] == "treatment" and json.loads(out)["reason"] == "override"


def test_token_errors(capsys, monkeypatch):
    monkeypatch.delenv("FIELDLAB_SECRET", raising=False)
    code, _, err = run(capsys, "token", EXAMPLE, "--experiment", "checkout-redesign", "--variant", "treatment")
    assert code == 2 and "set the environment variable FIELDLAB_SECRET" in err
    monkeypatch.setenv("FIELDLAB_SECRET", "k")
    code, _, err = run(capsys, "token", EXAMPLE, "--experiment", "checkout-redesign", "--variant", "nope")
    assert code == 2 and "unknown variant 'nope'" in err and "--variant:" in err
    code, _, err = run(
        capsys, "token", EXAMPLE, "--experiment", "checkout-redesign", "--variant", "control", "--ttl", "soon"
    )
    assert code == 2 and "cannot read duration 'soon'" in err


def test_segment_units(capsys, tmp_path):
    units = tmp_path / "units.txt"
    ids = [f"user-{i}" for i in range(500)] + ["ünïcødé"]
    units.write_text("\n".join(ids) + "\n", "utf-8")
    code, out, _ = run(capsys, "segment", EXAMPLE, "checkout-redesign", "--units", str(units))
    assert code == 0
    lab = Lab.from_file(EXAMPLE)
    lines = out.splitlines()
    assert len(lines) == len(ids)
    for line, uid in zip(lines, ids, strict=False):
        got_id, variant = line.split("\t")
        assert got_id == uid
        assert (variant or None) == lab.assign("checkout-redesign", uid).variant


def test_segment_sql_reproduces_assignment_on_chdb(capsys):
    """The printed ClickHouse expression recomputes holdout, layer, traffic and split exactly."""
    chdb = pytest.importorskip("chdb")
    lab = Lab.from_file(EXAMPLE)
    for key in ("checkout-redesign", "free-shipping-banner", "recommendations-v2"):
        code, expr, _ = run(capsys, "segment", EXAMPLE, key, "--sql", "uid")
        assert code == 0
        ids = [f"user-{i}" for i in range(4000)] + ["ünïcødé", "🙂", "o'brien", ""]
        literal = ", ".join("'" + i.replace("\\", "\\\\").replace("'", "\\'") + "'" for i in ids)
        res = chdb.query(
            f"SELECT {expr.strip()} AS v FROM (SELECT arrayJoin([{literal}]) AS uid) FORMAT JSONEachRow", "JSONEachRow"
        )
        got = [json.loads(line)["v"] for line in str(res).strip().splitlines()]
        want = [lab.assign(key, i).variant for i in ids]
        assert got == want, key
        assert len({v for v in got if v}) >= 1


def test_segment_sql_notes_targeting(capsys):
    code, out, err = run(capsys, "segment", EXAMPLE, "search-ranking", "--sql", "uid")
    assert code == 0 and "targeting" in err and out.startswith("multiIf(")


def test_installed_entry_point():
    exe = Path(sys.executable).parent / "fieldlab"
    proc = subprocess.run(
        [str(exe), "assign", EXAMPLE, "--unit", "bob", "--experiment", "checkout-redesign"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "checkout-redesign" in proc.stdout
    proc = subprocess.run([str(exe), "validate", "/nonexistent.toml"], capture_output=True, text=True)
    assert proc.returncode == 2 and "cannot read" in proc.stderr and "Traceback" not in proc.stderr


def test_validate_shows_fault_blast_radius(capsys, tmp_path):
    cfg = tmp_path / "f.toml"
    cfg.write_text(
        '[faults]\nenabled = true\n[[experiments]]\nkey = "slow-db"\ntraffic = 4\n'
        'variants = [{ name = "control" }, { name = "slow", faults = [{ point = "db.query", latency_ms = 50 }] }]\n'
    )
    code, out, _ = run(capsys, "validate", str(cfg))
    assert code == 0
    assert "faults: enabled; blast radius 2.00% of a 5% cap (slow-db/slow 2.00%)" in out


# ------------------------------------------------- mistakes and closed pipes: one line or silence
SRC = str(Path(__file__).parent.parent / "src")


def cli(*argv: str, **kw):  # type: ignore[no-untyped-def]
    """The real command in a subprocess, running this checkout's source."""
    import os

    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "fieldlab.cli", *argv], env=env, **kw)


def test_segment_into_head_broken_pipe_exits_quietly(tmp_path):
    """`fieldlab segment ... | head -1`: the reader leaves early; no "Broken pipe", exit 0."""
    import os

    units = tmp_path / "units.txt"
    units.write_text("".join(f"user-{i}\n" for i in range(100_000)), "utf-8")
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fieldlab.cli", "segment", EXAMPLE, "checkout-redesign", "--units", str(units)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    first = proc.stdout.readline()  # what `head -1` does, then it exits
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 0, err
    assert first.startswith(b"user-0\t")
    assert err == ""


def test_closed_stdout_before_any_output_broken_pipe_exits_quietly():
    """Output small enough to sit in the buffer meets the closed pipe at the final flush: still silent, exit 0."""
    import os

    r, w = os.pipe()
    os.close(r)
    try:
        proc = cli("validate", EXAMPLE, stdout=w, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(w)
    assert (proc.returncode, proc.stderr) == (0, "")


def test_units_file_not_utf8_is_one_line_exit_2(tmp_path):
    units = tmp_path / "units.bin"
    units.write_bytes(b"alice\nb\xffob\n")
    proc = cli(
        "segment", EXAMPLE, "checkout-redesign", "--units", str(units), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1
    assert f"{units}: line 2: not valid UTF-8 text" in proc.stderr and "save the units file as UTF-8" in proc.stderr
    assert proc.stdout.startswith("alice\t")  # the good lines before it were written
    proc = cli(
        "segment", EXAMPLE, "checkout-redesign", "--units", "-", input=b"\xfe\xff\n", capture_output=True, timeout=60
    )
    assert (
        proc.returncode == 2
        and b"<stdin>: line 1: not valid UTF-8 text" in proc.stderr
        and b"Traceback" not in proc.stderr
    )


CONFIG_MISTAKES = [
    (
        "yaml syntax error",
        "lab.yaml",
        "experiments:\n  - key: a\n    variants: [{name: x}\n    traffic: 50\n",
        "(file): cannot parse YAML: line 4, column 5",
    ),
    (
        "duplicate key in json",
        "lab.json",
        '{"experiments": [{"key": "a", "traffic": 5, "traffic": 50, "variants": [{"name": "x"}]}]}',
        "experiments[0].traffic: key 'traffic' is given more than once",
    ),
    (
        "duplicate key in yaml",
        "lab.yaml",
        "experiments:\n  - key: a\n    key: b\n    variants: [{name: x}]\n",
        "experiments[0].key: key 'key' is given more than once (lines 2 and 3)",
    ),
    (
        "duplicate key in toml",
        "lab.toml",
        '[[experiments]]\nkey = "a"\nkey = "b"\nvariants = [{name = "x"}]\n',
        "cannot parse TOML: Cannot overwrite a value (at line 3",
    ),
    (
        "surrogate escape in json",
        "lab.json",
        '{"experiments": [{"key": "a", "variants": [{"name": "\\ud800"}]}]}',
        'experiments[0].variants[0].name: "\\ud800" holds a lone surrogate escape',
    ),
    (
        "misspelt field",
        "lab.toml",
        '[[experiments]]\nkey = "a"\ntrafic = 5\nvariants = [{name = "x"}]\n',
        "experiments[0]: unknown or misplaced field 'trafic'; did you mean 'traffic'?",
    ),
    ("config not utf-8", "lab.toml", b'[[experiments]]\nkey = "\xe9"\n', "(file): not UTF-8 text"),
]


@pytest.mark.parametrize("name,text,expected", [c[1:] for c in CONFIG_MISTAKES], ids=[c[0] for c in CONFIG_MISTAKES])
def test_config_mistakes_are_one_line_exit_2_through_the_real_cli(tmp_path, name, text, expected):
    if name.endswith(".yaml"):
        pytest.importorskip("yaml")
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    for command in (["validate", str(path)], ["assign", str(path), "--unit", "alice"]):
        proc = cli(*command, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and proc.stdout == "", proc.stderr
        assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith(f"fieldlab {command[0]}: {path}: ") and expected in proc.stderr, proc.stderr
