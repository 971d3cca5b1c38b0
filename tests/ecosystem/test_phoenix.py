"""Optional: spans from a real Flask app in Arize Phoenix, filtered by variant through Phoenix's own client.

Skipped unless ``arize-phoenix`` is installed (it is not in the test extra: its dependency tree is large).
Checks what integrations/phoenix/README.md claims: the nested filter finds exactly the variant's requests, the
flat (dotted) form finds nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import requests
from ecokit import LAB_PATH, SRC, free_port

pytest.importorskip("phoenix.server.main")
pytest.importorskip("phoenix.client")
pytest.importorskip("flask")

from phoenix.client import Client
from phoenix.client.types.spans import SpanQuery

from fieldlab import Lab

USERS = [f"user-{i}" for i in range(30)]

APP = """
import sys
import flask
from opentelemetry.instrumentation.flask import FlaskInstrumentor
import fieldlab
from fieldlab import Lab, otel
from fieldlab.adapters.flask import FieldLab

provider = otel.configure_tracing("fieldlab-phoenix-test", endpoint=sys.argv[1])
app = flask.Flask(__name__)
app.get("/checkout")(lambda: fieldlab.variant("checkout-redesign", "none"))
FlaskInstrumentor().instrument_app(app)
FieldLab(app, lab=Lab.from_file(sys.argv[2], reload_interval=0), units={{"user": "header:X-User-Id"}})
web = app.test_client()
for user in {users!r}:
    web.get("/checkout", headers={{"X-User-Id": user}})
provider.shutdown()
"""


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory):
    work = tmp_path_factory.mktemp("phoenix")
    port = free_port()
    env = {
        **os.environ,
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(free_port()),
        "PHOENIX_WORKING_DIR": str(work),
    }
    log = open(work / "phoenix.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "phoenix.server.main", "serve"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("Phoenix did not start:\n" + (work / "phoenix.log").read_text(errors="replace"))
            try:
                if requests.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def count(client: Client, condition: str) -> int:
    df = client.spans.get_spans_dataframe(query=SpanQuery().where(condition), project_identifier="default")
    return len(df)


def test_nested_filter_finds_the_variant_and_the_flat_form_nothing(phoenix):
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(APP.format(users=USERS)), phoenix, str(LAB_PATH)],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    lab = Lab.from_file(LAB_PATH, reload_interval=0)
    expected = sum(lab.assign("checkout-redesign", u).variant == "one-page" for u in USERS)
    assert 0 < expected < len(USERS)
    client = Client(base_url=phoenix)
    nested = "attributes['fieldlab']['variant']['checkout-redesign'] == 'one-page'"
    deadline = time.monotonic() + 60
    while count(client, nested) < expected and time.monotonic() < deadline:
        time.sleep(1)  # Phoenix ingests asynchronously
    assert count(client, nested) == expected
    assert count(client, "attributes['fieldlab']['exposed']['checkout-redesign'] == True") == len(USERS)
    assert count(client, "attributes['fieldlab.variant.checkout-redesign'] == 'one-page'") == 0
