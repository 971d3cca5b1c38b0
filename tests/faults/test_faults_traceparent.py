"""An abort with a rate, decided before any span exists, hashes the caller's W3C trace id."""

from __future__ import annotations

import flask

import fieldlab
from fieldlab import bucket, faults
from fieldlab.adapters.flask import FieldLab

CONFIG = {
    "faults": {"enabled": True},
    "experiments": [
        {
            "key": "flaky-edge",
            "traffic": 4,
            "variants": [
                {"name": "control"},
                {"name": "down", "faults": [{"point": "http", "status": 503, "rate": 50}]},
            ],
        }
    ],
}


def test_abort_rate_uses_inbound_traceparent_when_fieldlab_is_outermost():
    lab = fieldlab.Lab.from_dict(CONFIG)
    app = flask.Flask(__name__)

    @app.get("/")
    def index() -> str:
        return "ok"

    # fieldlab first and no OTel instrumentation at all: no span exists when the abort is decided
    FieldLab(app, lab=lab, units={"user": "header:X-User"})
    client = app.test_client()
    users = [u for u in (f"user-{i}" for i in range(20_000)) if lab.assign("flaky-edge", u).variant == "down"][:40]
    assert len(users) == 40
    aborted = 0
    for i, user in enumerate(users):
        trace_id = f"{i + 1:032x}"
        response = client.get("/", headers={"X-User": user, "traceparent": f"00-{trace_id}-{i + 1:016x}-01"})
        expected = bucket("flaky-edge:down:fault", trace_id) < 5000
        assert (response.status_code == 503) is expected, (user, trace_id)
        aborted += expected
        # the same trace id gives the same decision again (a replay, or the next service)
        again = client.get("/", headers={"X-User": user, "traceparent": f"00-{trace_id}-{i + 7:016x}-01"})
        assert again.status_code == response.status_code
    assert 0 < aborted < len(users)
    assert faults.stats().get("skipped_no_trace", 0) == 0
