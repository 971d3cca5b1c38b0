"""Helpers of the ecosystem tests: entry points declared in pyproject.toml, servers under opentelemetry-instrument,
OTLP JSON lines span files read back."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import requests

try:
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SRC = ROOT / "src"
APPS = HERE / "apps"
LAB_PATH = HERE / "lab.toml"
BIN = Path(sys.executable).parent


def declared_entry_points(group: str) -> dict[str, str]:
    return dict(tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]["entry-points"][group])


def installed_has(group: str, name: str, value: str) -> bool:
    return any(ep.name == name and ep.value == value for ep in metadata.entry_points(group=group))


def python_path(tmp: Path, groups: list[str], *more: Path) -> str:
    """PYTHONPATH for a subprocess: this checkout's src, plus (when the installed fieldlab does not declare
    them yet, e.g. an older editable install) a dist-info holding the entry points pyproject.toml declares,
    exactly as ``pip install`` would write them. The shared environment is left untouched."""
    paths = [str(SRC), *map(str, more)]
    missing = {
        g: d
        for g in groups
        for d in [declared_entry_points(g)]
        if not all(installed_has(g, k, v) for k, v in d.items())
    }
    if missing:
        site = tmp / "entry-points-site"
        info = site / "fieldlab_entry_points_under_test-0.dist-info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fieldlab-entry-points-under-test\nVersion: 0\n")
        (info / "entry_points.txt").write_text(
            "".join(f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in d.items()) + "\n" for g, d in missing.items())
        )
        paths.append(str(site))
    return os.pathsep.join(paths)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class InstrumentedServer:
    """``opentelemetry-instrument <server> ...`` on a free port of 127.0.0.1; its log in ``log``."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = [str(BIN / "opentelemetry-instrument"), *[a.replace("{port}", str(self.port)) for a in argv]]
        self.env, self.log = env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> InstrumentedServer:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, cwd=str(APPS), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv} exited:\n{self.log.read_text()}")
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"{self.argv} did not answer:\n{self.log.read_text()}")

    def __exit__(self, *exc: object) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _value(v: dict[str, Any]) -> Any:
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in v:
            return v[key]
    if "intValue" in v:
        return int(v["intValue"])
    return v


def read_spans(directory: Path) -> list[dict[str, Any]]:
    """Every span in the OTLP JSON lines files of ``directory``, attributes flattened, with its file."""
    out = []
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_text("utf-8").splitlines():
            if not line.strip():
                continue
            for rs in json.loads(line).get("resourceSpans", []):
                for ss in rs.get("scopeSpans", []):
                    for span in ss.get("spans", []):
                        attrs = {a["key"]: _value(a["value"]) for a in span.get("attributes", [])}
                        out.append(
                            {
                                "name": span.get("name"),
                                "kind": span.get("kind"),
                                "attributes": attrs,
                                "events": [e.get("name") for e in span.get("events", [])],
                                "file": path.name,
                            }
                        )
    return out


def wait_for_spans(directory: Path, predicate: Any, timeout: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    spans: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        spans = read_spans(directory)
        if predicate(spans):
            return spans
        time.sleep(0.3)
    return spans
