"""Shared helpers for the fault-injection tests: labs with a fault variant, bound contexts, a real OTel SDK.

Imported by the tests as ``faultkit`` (pytest puts this directory on sys.path); fixtures are in conftest.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import fieldlab
from fieldlab import context


def slow_db(
    latency: dict[str, Any] | None = None,
    *,
    traffic: float = 4,
    status: str = "running",
    extra_faults: list[dict[str, Any]] | None = None,
    **kw: Any,
) -> fieldlab.Experiment:
    """Experiment slow-db: control / slow (50/50 at ``traffic``%), slow carries a db.query fault."""
    entries = [{"point": "db.query", **(latency or {"latency_ms": 150})}] + list(extra_faults or [])
    return fieldlab.Experiment(
        "slow-db", {"control": 1, "slow": 1}, traffic=traffic, status=status, faults={"slow": entries}, **kw
    )


def make_lab(*experiments: fieldlab.Experiment, enabled: bool = True, **kw: Any) -> fieldlab.Lab:
    settings = {"enabled": enabled, **{k: kw.pop(k) for k in ("max_blast_radius", "max_active") if k in kw}}
    return fieldlab.Lab(list(experiments) or [slow_db()], faults=settings, **kw)


def unit_in(lab: fieldlab.Lab, experiment: str, variant: str | None, start: int = 0) -> str:
    """The first unit id ``user-N`` (N >= start) the lab puts in ``variant`` of ``experiment``."""
    for i in range(start, start + 200_000):
        if lab.assign(experiment, f"user-{i}").variant == variant:
            return f"user-{i}"
    raise AssertionError(f"no unit lands in {experiment}/{variant}")


def trace_id(i: int) -> str:
    return f"{i:032x}"


class Otel:
    """A real SDK TracerProvider exporting to memory; ``on_event`` writes ctx events to the current span."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("tests.faults")

    @staticmethod
    def on_event(ctx: context.RequestContext, name: str, attrs: dict[str, Any]) -> None:
        trace.get_current_span().add_event(name, attrs)

    def spans(self) -> list[Any]:
        return list(self.exporter.get_finished_spans())


@contextlib.contextmanager
def bound(
    lab: fieldlab.Lab,
    unit: str,
    tid: str | None = "0af7651916cd43dd8448eb211c80319c",
    overrides: Any = None,
    otel: Otel | None = None,
) -> Iterator[context.RequestContext]:
    """A started and bound request context for ``unit`` (inside a server span when ``otel`` is given)."""
    span_cm = (
        otel.tracer.start_as_current_span("request", kind=trace.SpanKind.SERVER) if otel else contextlib.nullcontext()
    )
    with span_cm:
        ctx = context.start(
            lab, {"user": unit}, trace_id=tid, overrides=lab.verify_overrides(overrides) if overrides else None
        )
        events: list[tuple[str, dict[str, Any]]] = []
        ctx.own_extra()["test_events"] = events

        def on_event(c: context.RequestContext, name: str, attrs: dict[str, Any]) -> None:
            events.append((name, attrs))
            if otel is not None:
                Otel.on_event(c, name, attrs)

        ctx.on_event = on_event
        token = context.bind(ctx)
        try:
            yield ctx
        finally:
            context.reset(token)
