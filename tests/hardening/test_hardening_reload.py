"""A config file rewritten in place while a real server (uvicorn) takes requests.

Defect (issue 10, section 2): rewriting the file in place (``open(path, "w")``
and a few writes, as editors and ``cat >`` do) during 20,000 requests put
2,003 of them under configs with zero experiments: the watcher read the file
half-written, it parsed, and it replaced the good config. A reload must only
take effect from a complete, stable file, and an empty document never
replaces a config with experiments.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from fieldlab import Lab

HERE = Path(__file__).resolve().parent
N_EXPERIMENTS = 12
INTERVAL = 0.05


def config_text(traffic: int) -> str:
    parts = [f"[lab]\nreload_interval = {INTERVAL}\n"]
    for i in range(N_EXPERIMENTS):
        parts.append(
            f'\n[[experiments]]\nkey = "exp-{i:02d}"\ntraffic = {traffic}\n'
            f'variants = [{{ name = "control" }}, {{ name = "treatment" }}]\n'
        )
    return "".join(parts)


def chunks(text: str) -> list[str]:
    """Pieces that leave the file parseable but incomplete in between: whole experiments, some cut mid-table."""
    cuts = sorted(
        {0, len(text)}
        | {i for i in range(len(text)) if text.startswith("\n[[experiments]]", i)}
        | {text.index("traffic", i) for i in range(len(text)) if text.startswith("[[experiments]]", i)}
    )
    return [text[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_config_rewritten_in_place_never_serves_an_empty_or_truncated_config(tmp_path: Path) -> None:
    complete = {traffic: config_text(traffic) for traffic in (100, 50)}
    versions = {}
    for traffic, text in complete.items():
        probe = tmp_path / f"probe-{traffic}.toml"
        probe.write_text(text)
        versions[traffic] = Lab.from_file(probe, reload_interval=0).version
    path = tmp_path / "lab.toml"
    path.write_text(complete[100])

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    env = {
        **os.environ,
        "RELOAD_TEST_LAB": str(path),
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--app-dir",
                str(HERE),
                "--log-level",
                "warning",
                "--no-access-log",
                "--timeout-keep-alive",
                "120",
                "reload_app:app",
            ],
            env=env,
            cwd=str(HERE),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if requests.get(url + "/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)

        seen: list[tuple[str, int]] = []
        done = threading.Event()

        def client() -> None:
            with requests.Session() as session:
                i = 0
                while not done.is_set():
                    body = session.get(url + "/v", headers={"X-User-Id": f"user-{i}"}, timeout=10).json()
                    seen.append((body["version"], len(body["experiments"])))
                    i += 1
                    time.sleep(0.002)

        reader = threading.Thread(target=client, daemon=True)
        reader.start()
        for k in range(8):
            text = complete[50 if k % 2 == 0 else 100]
            with open(path, "w", encoding="utf-8") as fh:  # in place: the file is empty, then partial
                for piece in chunks(text):
                    fh.write(piece)
                    fh.flush()
                    time.sleep(0.01)
            time.sleep(1.4)  # complete and unchanged: the watcher applies it (settle 1 s)
        done.set()
        reader.join(timeout=30)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    assert len(seen) > 200, f"only {len(seen)} responses"
    bad = [(v, n) for v, n in seen if v not in versions.values() or n != N_EXPERIMENTS]
    assert not bad, (
        f"{len(bad)} of {len(seen)} responses came from an empty or truncated config, e.g. {sorted(set(bad))[:5]}"
    )
    used = {v for v, _ in seen}
    assert used == set(versions.values()), "the complete rewrites were not all picked up"


def _replace(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, "utf-8")
    st = path.stat()
    os.replace(tmp, path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_an_empty_document_never_replaces_a_config_with_experiments(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(config_text(100))
    lab = Lab.from_file(path, reload_interval=0)
    version = lab.version
    for empty in ("", "# nothing yet\n", f"[lab]\nreload_interval = {INTERVAL}\n"):
        _replace(path, empty)
        assert lab.reload() is False
        assert lab.version == version and len(lab.experiments) == N_EXPERIMENTS
        assert "declares no experiments" in (lab.config_error or ""), lab.config_error
    _replace(path, "experiments = []\n")  # removing every experiment on purpose is still possible
    assert lab.reload() is True and len(lab.experiments) == 0 and lab.config_error is None
