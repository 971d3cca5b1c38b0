"""The brakes always work: the kill switch's pace, the blast-radius cap over code-defined faults, fault exposure.

Each test names the defect it pins (issue 10, sections 2 and 3).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from faultkit import bound, unit_in

import fieldlab
from fieldlab import attributes as A
from fieldlab import faults

CONFIG = """
[lab]
reload_interval = {interval}

[faults]
enabled = true

[[experiments]]
key = "slow-db"
traffic = 4
[[experiments.variants]]
name = "control"
[[experiments.variants]]
name = "slow"
faults = [{{point = "brakes.query", latency_ms = 1}}]
"""


@fieldlab.fault_point("brakes.query")
def query() -> None:
    return None


def faulted(lab: fieldlab.Lab, unit: str) -> bool:
    with bound(lab, unit) as ctx:
        query()
        return ctx.fault_injected


def _write_state_as_another_process(path: str, experiments: dict[str, Any]) -> None:
    """What `fieldlab kill` in another process does: an atomic replace this process has not been told about."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump({"version": 1, "all": None, "experiments": experiments}, fh)
    os.replace(tmp, path)


def test_kill_switch_acts_within_one_second_even_when_the_reload_interval_is_long(tmp_path: Path) -> None:
    """The kill switch polled at the reload interval, so a long (or NaN/inf) interval delayed or disabled it."""
    cfg = tmp_path / "shop.toml"
    cfg.write_text(CONFIG.format(interval=600))
    lab = fieldlab.Lab.from_file(cfg)
    try:
        slow = unit_in(lab, "slow-db", "slow")
        assert faulted(lab, slow)  # first decision: the state file is polled (absent)
        _write_state_as_another_process(str(cfg) + ".state.json", {"slow-db": {"reason": "INC-1"}})
        deadline = time.monotonic() + 1.0 + 0.5
        while faulted(lab, slow):
            assert time.monotonic() < deadline, "a kill from another process did not act within 1 s"
            time.sleep(0.05)
        assert faults.stats()["skipped_killed"] >= 1
    finally:
        lab.close()


def test_fieldlab_kill_names_a_finite_check_interval_for_a_nan_reload_interval(tmp_path: Path) -> None:
    """`fieldlab kill` printed 'within nan s' for reload_interval = nan."""
    cfg = tmp_path / "shop.toml"
    cfg.write_text(CONFIG.format(interval="nan"))
    out = subprocess.run(
        [sys.executable, "-m", "fieldlab.cli", "kill", "slow-db", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "within 1 s" in out.stdout and "nan" not in out.stdout, out.stdout


# ------------------------------------------------------------ blast radius of inject()


def test_inject_variants_cannot_together_exceed_the_blast_radius_cap() -> None:
    """Each @inject variant was checked alone: three of them faulted 9 % of units under a 5 % cap."""
    exps = [fieldlab.Experiment(f"cap-{c}", {"control": 1, "bad": 1}, traffic=6) for c in "abc"]  # 3 % each
    lab = fieldlab.Lab(exps, faults={"enabled": True, "max_blast_radius": 5})

    @fieldlab.inject(experiment="cap-a", variant="bad", latency_ms=0)
    def step_a() -> None:
        return None

    @fieldlab.inject(experiment="cap-b", variant="bad", latency_ms=0)
    def step_b() -> None:
        return None

    @fieldlab.inject(experiment="cap-c", variant="bad", latency_ms=0)
    def step_c() -> None:
        return None

    n = 20_000
    hit_units = 0
    hit_experiments: set[str] = set()
    for i in range(n):
        with bound(lab, f"unit-{i}") as ctx:
            step_a()
            step_b()
            step_c()
            if ctx.fault_injected:
                hit_units += 1
                hit_experiments.update(f[A.FAULT_EXPERIMENT] for f in ctx.faults)
    assert hit_units / n * 100 <= 5.0, f"{hit_units / n:.2%} of units faulted under a 5 % cap"
    assert hit_experiments == {"cap-a"}  # admitted in registration order while the union fits
    assert faults.stats()["skipped_over_cap"] > 0
    radius = faults.blast_radius(lab)
    assert radius["code"] == {"cap-a/bad": 3.0} and radius["total"] <= 5.0
    assert {"cap-b/bad", "cap-c/bad"} <= set(radius["refused"])


def test_inject_variant_counts_on_top_of_the_configured_fault_variants() -> None:
    configured = fieldlab.Experiment(
        "cap-cfg", {"control": 1, "bad": 1}, traffic=8, faults={"bad": [{"point": "brakes.other", "latency_ms": 0}]}
    )  # 4 %
    extra = fieldlab.Experiment("cap-extra", {"control": 1, "bad": 1}, traffic=4)  # 2 %
    lab = fieldlab.Lab([configured, extra], faults={"enabled": True, "max_blast_radius": 5})

    @fieldlab.inject(experiment="cap-extra", variant="bad", latency_ms=0)
    def step() -> None:
        return None

    unit = unit_in(lab, "cap-extra", "bad")
    with bound(lab, unit) as ctx:
        step()
        assert not ctx.fault_injected
    assert "cap-extra/bad" in faults.blast_radius(lab)["refused"]


# ------------------------------------------------------------------ fault exposure


def _memory_exporter() -> Any:
    """An in-memory exporter on the process's global SDK provider (which can be set only once per process)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())
    exporter = InMemorySpanExporter()
    trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(exporter))  # type: ignore[attr-defined]
    return exporter


def test_reaching_a_fault_point_marks_the_experiment_exposed_for_control_and_faulted_units() -> None:
    """A fault experiment analysed to nothing: reaching its point did not mark the request exposed."""
    import flask
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from opentelemetry.trace import SpanKind

    from fieldlab.adapters.flask import FieldLab

    exp = fieldlab.Experiment(
        "slow-expo", {"control": 1, "slow": 1}, traffic=10, faults={"slow": [{"point": "expo.db", "latency_ms": 0}]}
    )
    lab = fieldlab.Lab([exp], faults={"enabled": True, "max_blast_radius": 5})

    @fieldlab.fault_point("expo.db")
    def load() -> str:
        return "rows"

    app = flask.Flask("fault-exposure")

    @app.get("/db")
    def db() -> Any:
        return {"rows": load()}

    @app.get("/other")
    def other() -> Any:
        return {"rows": "none"}

    FlaskInstrumentor().instrument_app(app)
    FieldLab(app, lab=lab, units={"user": lambda r: r.headers.get("X-User-Id")})
    exporter = _memory_exporter()
    client = app.test_client()

    control, slow = unit_in(lab, "slow-expo", "control"), unit_in(lab, "slow-expo", "slow")
    outside = unit_in(lab, "slow-expo", None)  # not in the experiment's 10 %
    exposed = A.exposed_attr("slow-expo")

    def span_of(path: str, unit: str) -> dict[str, Any]:
        exporter.clear()
        assert client.get(path, headers={"X-User-Id": unit}).status_code == 200
        spans = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
        assert len(spans) == 1, spans
        return dict(spans[0].attributes or {})

    assert span_of("/db", control).get(exposed) is True, "control reached the fault point but was not exposed"
    slow_span = span_of("/db", slow)
    assert slow_span.get(exposed) is True
    assert span_of("/other", control).get(exposed) is None, "a request that never reached the point was exposed"
    assert span_of("/other", slow).get(exposed) is None
    assert span_of("/db", outside).get(exposed) is None, "a unit outside the experiment was exposed"
    FlaskInstrumentor().uninstrument_app(app)
