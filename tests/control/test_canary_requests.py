"""The sick canary at request time, through the Flask adapter and the real OTel SDK: each request's arm
comes from its trace id and the weights in the state file; doses are injected at the point and recorded
on the SERVER span; the rails (enabled, FIELDLAB_FAULTS=off, the kill switch, the store) stop them."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import flask
import pytest
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import fieldlab
from fieldlab import attributes as A
from fieldlab import faults
from fieldlab.control import canary as C
from fieldlab.control.state import JsonFileStore, Mark

KEY = "inv-latency"
ATTR = A.canary_attr(KEY)


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(faults.FAULTS_ENV, raising=False)
    faults.reset_stats()
    yield
    assert faults.active() == 0


def lab_doc(state_file: str, *, enabled: bool = True, traffic: float = 50) -> dict[str, Any]:
    return {
        "lab": {"state": state_file, "state_poll_interval": 0.05},
        "faults": {"enabled": enabled, "max_blast_radius": 100},
        "canaries": [
            {
                "key": KEY,
                "point": "inv.reserve",
                "traffic": traffic,
                "doses": {"latency_ms": [20, 40, 80]},
                "steady_state": {"error_slo": 99, "latency_slo": {"ms": 500, "percent": 99}},
            }
        ],
    }


def publish(path: str, weights: dict[str, float], phase: str = "escalating") -> None:
    st = C.CanaryState(key=KEY, phase=phase)
    st.weights = weights
    st.weights_version = 1
    JsonFileStore(path).update(
        lambda cur: dataclasses.replace(cur, seq=cur.seq + 1, canaries={**cur.canaries, KEY: st.to_dict()})
    )


def shop(lab: fieldlab.Lab) -> tuple[Any, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = flask.Flask(f"canary-{id(lab)}")

    @fieldlab.fault_point("inv.reserve")
    def reserve() -> str:
        return "reserved"

    @app.get("/order")
    def order() -> Any:
        t0 = time.perf_counter()
        reserve()
        return {"ms": (time.perf_counter() - t0) * 1000}

    FlaskInstrumentor().instrument_app(app, tracer_provider=provider)
    fieldlab.adapters.flask.FieldLab(app, lab=lab, units={"user": "header:X-User"})
    return app.test_client(), exporter


def run(client: Any, exporter: InMemorySpanExporter, n: int, first: int = 1) -> list[tuple[str, str | None, float]]:
    """(trace id, arm attribute, measured ms at the point) for ``n`` requests with known trace ids."""
    out = []
    for i in range(first, first + n):
        tid = f"{i:032x}"
        exporter.clear()
        r = client.get("/order", headers={"traceparent": f"00-{tid}-{i:016x}-01"})
        assert r.status_code == 200
        (span,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
        assert f"{span.context.trace_id:032x}" == tid
        out.append((tid, (span.attributes or {}).get(ATTR), r.get_json()["ms"]))
    return out


WEIGHTS = {"control": 0.2, "20ms": 0.3, "40ms": 0.5}


def test_each_request_gets_the_arm_its_trace_id_chooses_and_the_dose_is_injected(tmp_path: Any) -> None:
    state = str(tmp_path / "lab.state.json")
    publish(state, WEIGHTS)
    import fieldlab.adapters.flask

    lab = fieldlab.Lab.from_dict(lab_doc(state))
    client, exporter = shop(lab)
    rows = run(client, exporter, 60)
    seen = set()
    for tid, arm, ms in rows:
        expected = C.choose_arm(KEY, tid, WEIGHTS, 50)
        assert arm == expected, (tid, arm, expected)
        dose = C.dose_of(expected)
        if dose is not None:
            assert ms >= dose * 0.95, (tid, arm, ms)
        else:
            assert ms < 15, (tid, arm, ms)  # control and outside: no delay
        seen.add(arm)
    assert seen == {None, "control", "20ms", "40ms"}
    assert faults.stats()["injected"] == sum(1 for _, a, _ in rows if a in ("20ms", "40ms"))


def test_the_span_event_names_the_canary_and_the_dose(tmp_path: Any) -> None:
    state = str(tmp_path / "lab.state.json")
    publish(state, {"control": 0.0, "40ms": 1.0})
    import fieldlab.adapters.flask

    client, exporter = shop(fieldlab.Lab.from_dict(lab_doc(state, traffic=100)))
    client.get("/order", headers={"traceparent": f"00-{7:032x}-{7:016x}-01"})
    (span,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert span.attributes[ATTR] == "40ms" and span.attributes[A.FAULT_INJECTED] is True
    (event,) = [e for e in span.events if e.name == A.FAULT_EVENT]
    assert event.attributes[A.FAULT_CANARY] == KEY and event.attributes[A.FAULT_VARIANT] == "40ms"
    assert event.attributes[A.FAULT_DELAY_MS] == 40.0


def test_rails_stop_the_canary(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import fieldlab.adapters.flask

    state = str(tmp_path / "lab.state.json")
    publish(state, {"control": 0.0, "80ms": 1.0})
    # [faults] enabled = false: no dose, no arm recorded
    client, exporter = shop(fieldlab.Lab.from_dict(lab_doc(state, enabled=False, traffic=100)))
    assert all(arm is None and ms < 40 for _, arm, ms in run(client, exporter, 5))
    # FIELDLAB_FAULTS=off
    lab = fieldlab.Lab.from_dict(lab_doc(state, traffic=100))
    client, exporter = shop(lab)
    monkeypatch.setenv(faults.FAULTS_ENV, "off")
    assert all(arm is None and ms < 40 for _, arm, ms in run(client, exporter, 5))
    monkeypatch.delenv(faults.FAULTS_ENV)
    assert all(arm == "80ms" and ms >= 75 for _, arm, ms in run(client, exporter, 3))
    # fieldlab kill <canary> (the kill switch's state file)
    JsonFileStore(state).update(lambda cur: dataclasses.replace(cur, seq=cur.seq + 1, killed={KEY: Mark("now", "t")}))
    time.sleep(1.2)  # the kill switch and the poller read the file again
    assert all(ms < 40 for _, _, ms in run(client, exporter, 3, first=100))


def test_a_finished_canary_or_a_broken_state_injects_nothing(tmp_path: Any) -> None:
    import fieldlab.adapters.flask

    state = str(tmp_path / "lab.state.json")
    publish(state, {"control": 0.0, "80ms": 1.0}, phase="done")
    client, exporter = shop(fieldlab.Lab.from_dict(lab_doc(state, traffic=100)))
    assert all(arm is None and ms < 40 for _, arm, ms in run(client, exporter, 3))
    with open(state, "w") as fh:
        fh.write("{not json")
    client, exporter = shop(fieldlab.Lab.from_dict(lab_doc(state, traffic=100)))
    assert all(arm is None and ms < 40 for _, arm, ms in run(client, exporter, 3))


def test_points_without_a_canary_count_no_canary_skips(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from fieldlab import context

    state = str(tmp_path / "lab.state.json")
    publish(state, {"control": 0.0, "80ms": 1.0})
    lab = fieldlab.Lab.from_dict(lab_doc(state, traffic=100))
    monkeypatch.setenv(faults.FAULTS_ENV, "off")
    token = context.bind(context.start(lab, {}, trace_id=f"{9:032x}"))
    try:
        with fieldlab.fault_point("elsewhere"):
            pass
        assert faults.stats()["skipped_env"] == 0
        with fieldlab.fault_point("inv.reserve"):
            pass
        assert faults.stats()["skipped_env"] == 1
    finally:
        context.reset(token)
