"""Adversarial input on the request path: nothing a client sends may crash a process or bend the contract.

Each test names the defect it pins (issue 10, section 1). Inputs that used to
kill the interpreter (MurmurHash's C code segfaults on a ``str`` holding a lone
surrogate) run in a child process, so the old behaviour fails the test instead
of the test run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fieldlab
from fieldlab import Experiment, Lab

LAB_TOML = """
[[experiments]]
key = "exp-a"
variants = ["control", "treatment"]
"""


def _child(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (a segfault there is a return code here)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)


# ----------------------------------------------------------- 1. lone surrogates never reach the C hash
def test_lone_surrogate_unit_id_does_not_segfault_and_gets_no_unit():
    proc = _child("""
        import json, fieldlab
        from fieldlab import Experiment, Holdout, Layer, Lab
        simple = Lab([Experiment("exp-a", {"control": 1, "treatment": 1})])
        full = Lab([Experiment("exp-b", {"control": 1, "treatment": 1}, layer="l1", layer_range=(0, 100),
                               targeting={"attr": "country", "op": "eq", "value": "DE"})],
                   layers=[Layer("l1")], holdouts=[Holdout("h", percent=10, experiments=["exp-b"])])
        out = []
        for unit in ("x\\udcff", "\\ud800", "\\udcff\\udcfe"):
            out.append(simple.assign("exp-a", unit).reason)
            out.append(simple.assign_all({"user": unit})["exp-a"].reason)
            out.append(full.assign("exp-b", unit, {"country": "DE"}).reason)
            out.append(full.assign_all({"user": unit}, {"country": "DE"})["exp-b"].reason)
        print(json.dumps({"reasons": out, "simple": simple.stats, "full": full.stats}))
    """)
    assert proc.returncode == 0, f"child died with {proc.returncode}: {proc.stderr[-2000:]}"
    result = json.loads(proc.stdout)
    assert set(result["reasons"]) == {"no_unit"}
    assert result["simple"]["invalid_units"] == 6 and result["full"]["invalid_units"] == 6
    assert result["simple"]["errors"] == 0 and result["full"]["errors"] == 0


def test_lone_surrogate_in_public_hash_raises_value_error_instead_of_segfault():
    proc = _child("""
        import fieldlab
        for call in (lambda: fieldlab.hash32("\\ud800"), lambda: fieldlab.bucket("salt", "x\\udcff")):
            try:
                call()
            except ValueError as exc:
                print("ValueError", "lone surrogate" in str(exc))
    """)
    assert proc.returncode == 0, f"child died with {proc.returncode}: {proc.stderr[-2000:]}"
    assert proc.stdout.split("\n")[:2] == ["ValueError True", "ValueError True"]


def test_valid_non_ascii_unit_ids_keep_their_contract_bucket():
    lab = Lab([Experiment("exp-a", {"control": 1, "treatment": 1})])
    salt = lab.experiments["exp-a"].salt
    for unit in ("ü", "Ã¼", "用户-42", "😀", "é" * 300):
        a = lab.assign("exp-a", unit)
        assert a.reason in ("split", "traffic") and a.bucket == fieldlab.bucket(salt, unit)
        assert lab.assign_all({"user": unit})["exp-a"] == a
    assert fieldlab.hash32("ü") == fieldlab.hash32("ü".encode("utf-8").decode("utf-8"))
    assert lab.stats["invalid_units"] == 0


def _cli(*argv: bytes | str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "fieldlab.cli", *argv], input=stdin, capture_output=True, timeout=60)


def test_cli_assign_non_utf8_unit_is_one_line_exit_2_not_segfault(tmp_path: Path):
    config = tmp_path / "lab.toml"
    config.write_text(LAB_TOML)
    for argv in ((b"--unit", b"\xff\xfe"), (b"--unit", b"ok", b"--unit-kind", b"user=\xed\xa0\x80")):
        proc = _cli(b"assign", str(config).encode(), *argv)
        assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
        assert proc.stdout == b""
        err = proc.stderr.decode("utf-8", "replace")
        assert err.count("\n") == 1 and "not valid UTF-8" in err and "Traceback" not in err
    ok = _cli(b"assign", str(config).encode(), "--unit", "ü", "--json")
    assert ok.returncode == 0
    lab = Lab.from_file(config, reload_interval=0)
    assert json.loads(ok.stdout)["bucket"] == fieldlab.bucket(lab.experiments["exp-a"].salt, "ü")


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_cli_segment_non_utf8_unit_is_one_line_exit_2_not_segfault(tmp_path: Path, source: str):
    config = tmp_path / "lab.toml"
    config.write_text(LAB_TOML)
    units = tmp_path / "units.txt"
    units.write_bytes(b"alice\n\xff\xfe\n")
    if source == "file":
        proc = _cli(b"segment", str(config).encode(), b"exp-a", b"--units", str(units).encode())
    else:
        proc = _cli(b"segment", str(config).encode(), b"exp-a", b"--units", b"-", stdin=units.read_bytes())
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    err = proc.stderr.decode("utf-8", "replace")
    assert err.count("\n") == 1 and "line 2" in err and "not valid UTF-8" in err and "Traceback" not in err
