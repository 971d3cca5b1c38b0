"""Markers for the whole suite: ``./dev test`` runs everything; a fast subset is one flag away.

* ``server``: starts real servers or processes (gunicorn, uvicorn, redis-server, Phoenix,
  ``opentelemetry-instrument``) and talks to them over 127.0.0.1;
* ``browser``: drives headless Chromium;
* ``slow``: long statistical simulations (marked in the test files themselves).

``./dev test -m "not server and not browser and not slow"`` is the quick in-process subset.
The markers are given per module here, so a new test in one of these files is marked too.
"""

from __future__ import annotations

import pytest

_SERVER_MODULES = {
    "tests/adapters/test_adapter_servers.py",
    "tests/adapters/test_example_apps.py",
    "tests/adapters/test_django_app.py",
    "tests/faults/test_faults_servers.py",
    "tests/hardening/test_hardening_reload.py",
    "tests/hardening/test_hardening_request_path.py",
    "tests/control/test_control_e2e.py",
    "tests/control/test_control_scene.py",
    "tests/control/test_control_state.py",
    "tests/control/test_canary_demo.py",
    "tests/ecosystem/test_instrumentation.py",
    "tests/ecosystem/test_phoenix.py",
    "tests/ecosystem/test_pytest_plugin.py",
}
_BROWSER_MODULES = {"tests/analysis/test_analysis_report_browser.py"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = config.rootpath
    for item in items:
        path = item.path.relative_to(root).as_posix() if item.path.is_relative_to(root) else ""
        if path in _SERVER_MODULES:
            item.add_marker(pytest.mark.server)
        if path in _BROWSER_MODULES:
            item.add_marker(pytest.mark.browser)
