"""A command whose optional dependency is missing says in one line which extra to install, and exits 2.

Each case runs the real ``fieldlab`` CLI in a fresh interpreter where the dependency cannot be imported
(``sys.modules[name] = None``, what Python does for a module it cannot find), so no traceback can hide.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "analysis"))
from analysis_helpers import make_requests, write_otlp

SRC = str(Path(__file__).resolve().parents[1] / "src")

_RUNNER = """
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None  # the import fails as if the package were not installed
sys.path.insert(0, sys.argv[2])
from fieldlab.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _run(blocked: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _RUNNER, blocked, SRC, *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def spans(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("extras") / "spans.jsonl"
    return write_otlp(str(path), make_requests(50, experiment="checkout", seed=3), child_spans=False)


def _one_line(proc: subprocess.CompletedProcess, command: str, extra: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"fieldlab {command}: ") and f"pip install 'fieldlab[{extra}]'" in proc.stderr


@pytest.mark.parametrize("engine", ["auto", "python"])
def test_analyze_without_numpy_names_the_analysis_extra(spans, engine):
    _one_line(_run("numpy,scipy,chdb", "analyze", spans, "--engine", engine), "analyze", "analysis")


def test_analyze_without_scipy_names_the_analysis_extra(spans):
    _one_line(_run("scipy", "analyze", spans, "--engine", "python"), "analyze", "analysis")


def test_engine_chdb_without_chdb_names_the_analysis_extra(spans):
    _one_line(_run("chdb", "analyze", spans, "--engine", "chdb"), "analyze", "analysis")


def test_balance_without_numpy_names_the_analysis_extra(spans, tmp_path):
    config = tmp_path / "lab.toml"
    config.write_text('[[experiments]]\nkey = "checkout"\nvariants = ["control", "treatment"]\n')
    _one_line(_run("numpy,scipy,chdb", "balance", str(config), "checkout", spans), "balance", "analysis")


def test_clickhouse_url_without_clickhouse_connect_names_the_clickhouse_extra():
    _one_line(_run("clickhouse_connect", "analyze", "clickhouse://default@127.0.0.1:1/db"), "analyze", "clickhouse")


def test_yaml_config_without_pyyaml_names_the_yaml_extra(tmp_path):
    config = tmp_path / "lab.yaml"
    config.write_text("experiments:\n  - key: checkout\n    variants: [control, treatment]\n")
    _one_line(_run("yaml", "validate", str(config)), "validate", "yaml")


def test_the_extras_run_when_installed(spans):
    """The blocker itself is harmless: with nothing blocked the same command works."""
    proc = _run("", "analyze", spans, "--engine", "python")
    assert proc.returncode == 0, proc.stderr
