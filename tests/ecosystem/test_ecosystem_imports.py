"""The ecosystem modules import no web framework until asked to wire one (the core's rule)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from ecokit import SRC

FRAMEWORKS = ("flask", "django", "starlette", "fastapi", "werkzeug", "uvicorn", "gunicorn")


@pytest.mark.parametrize(
    "module", ["fieldlab.openfeature", "fieldlab.otel", "fieldlab.testing", "fieldlab.instrumentation"]
)
def test_importing_loads_no_framework(module):
    code = f"import {module}\nimport sys, json\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "PATH": ""},
    ).stdout
    loaded = json.loads(out.strip().splitlines()[-1])
    assert "fieldlab" in loaded and [m for m in FRAMEWORKS if m in loaded] == []
