"""The core imports no web framework: adapters are opt-in imports."""

from __future__ import annotations

import json
import subprocess
import sys

FRAMEWORKS = ("flask", "django", "starlette", "fastapi", "werkzeug", "uvicorn", "gunicorn")


def loaded_after(code: str) -> list[str]:
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
    return json.loads(out.strip().splitlines()[-1])


def test_import_fieldlab_loads_no_framework() -> None:
    loaded = loaded_after("import fieldlab\nfieldlab.variant('x')\nimport fieldlab.switches, fieldlab.context")
    assert "fieldlab" in loaded
    assert [m for m in FRAMEWORKS if m in loaded] == []


def test_generic_adapters_load_no_framework() -> None:
    loaded = loaded_after("import fieldlab.adapters.wsgi, fieldlab.adapters.asgi, fieldlab.telemetry")
    assert [m for m in FRAMEWORKS if m in loaded] == []


def test_the_check_sees_a_framework_when_one_is_imported() -> None:
    assert "flask" in loaded_after("import fieldlab.adapters.flask")
