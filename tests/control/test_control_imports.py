"""control/ imports no web framework, and the request-side state module needs neither numpy nor redis to load."""

from __future__ import annotations

import json
import subprocess
import sys

FRAMEWORKS = ("flask", "django", "starlette", "fastapi", "werkzeug", "uvicorn", "gunicorn")


def loaded_after(code: str) -> set[str]:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            code + "\nimport sys, json\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def test_the_request_side_state_module_is_light() -> None:
    loaded = loaded_after("import fieldlab.control.state")
    assert "fieldlab" in loaded
    assert not loaded & {"numpy", "scipy", "redis", "chdb", *FRAMEWORKS}


def test_the_whole_control_package_loads_no_framework() -> None:
    loaded = loaded_after(
        "import fieldlab.control.settings, fieldlab.control.budget, fieldlab.control.guardrails, "
        "fieldlab.control.controller, fieldlab.control.state"
    )
    assert "numpy" in loaded  # the check sees heavy imports when there are some
    assert not loaded & set(FRAMEWORKS)
