"""fieldlab's pytest plugin, loaded through its ``pytest11`` entry point by a pytest subprocess running a sample file."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

for _name in ("flask", "django", "starlette", "fastapi", "httpx"):
    pytest.importorskip(_name)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SRC = ROOT / "src"


def entry_points_dist(tmp: Path, group: str) -> Path:
    """A directory holding a dist-info whose ``group`` entry points are the ones pyproject.toml declares.

    The installed fieldlab may be an older editable install; this makes the subprocess find the entry points
    exactly as ``pip install`` would write them from this checkout, without touching the shared environment.
    """
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]["entry-points"][group]
    site = tmp / "site"
    info = site / "fieldlab_entry_points_under_test-0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fieldlab-entry-points-under-test\nVersion: 0\n")
    with open(info / "entry_points.txt", "a", encoding="utf-8") as f:
        f.write(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in declared.items()))
    return site


def installed_has(group: str, name: str) -> bool:
    return any(ep.name == name and ep.value.startswith("fieldlab.") for ep in metadata.entry_points(group=group))


def test_pyproject_registers_the_plugin():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]["entry-points"]["pytest11"]
    assert declared == {"fieldlab": "fieldlab.testing"}


def test_sample_test_file_under_the_plugin(tmp_path):
    shutil.copy(HERE / "samples" / "forcing_sample.py", tmp_path / "test_sample.py")
    paths = [str(SRC)]
    if not installed_has("pytest11", "fieldlab"):
        paths.append(str(entry_points_dist(tmp_path, "pytest11")))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": ""}
    env.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "-rA",
            "-W",
            "error::pytest.PytestUnknownMarkWarning",
            "test_sample.py",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    out = run.stdout + run.stderr
    outcomes = {
        name: status for status, name in re.findall(r"^(PASSED|FAILED|ERROR) test_sample.py::(\S+)", out, re.MULTILINE)
    }
    frameworks = ["django", "fastapi", "flask", "starlette"]
    expected = {
        f"test_{n}[{fw}]": "PASSED"
        for n in (
            "1_unforced_is_the_real_assignment",
            "2_marker_forces_every_test_client",
            "3_after_the_marker_nothing_is_forced",
        )
        for fw in frameworks
    }
    expected.update(
        {
            "TestClassMarker::test_4_class_and_function_markers_merge": "PASSED",
            "TestClassMarker::test_5_fixture_forces_more_during_the_test": "PASSED",
            "test_6_fixture_binds_a_request_for_code_outside_the_web": "PASSED",
            "test_7_spans_show_the_forced_variant": "PASSED",
            "test_8_spans_unforced": "PASSED",
            "test_9_a_variant_the_experiment_lacks_fails_the_test": "ERROR",
        }
    )
    assert outcomes == expected, out[-6000:]
    assert "experiment 'checkout-redesign' has no variant 'three-page' (its variants: control, one-page)" in out
