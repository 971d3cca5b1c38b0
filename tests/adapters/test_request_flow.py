"""The request path runs one way: units (the trace id included) are known before the lab assigns, and the
recorder only writes. Adapter options are one typed set: a misspelt one is a ConfigError naming the fix."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware as OtelWSGI
from werkzeug.test import Client as WerkzeugClient

import fieldlab
from fieldlab import ConfigError, Experiment, Lab, context, telemetry
from fieldlab import attributes as A
from fieldlab.adapters import Options
from fieldlab.adapters import asgi as fl_asgi
from fieldlab.adapters import wsgi as fl_wsgi


def _per_request_lab() -> Lab:
    return Lab(
        [
            Experiment("checkout-redesign", {"control": 1, "treatment": 1}),
            Experiment("per-request", {"a": 1, "b": 1}, unit="request"),
        ]
    )


def _app(seen: dict[str, Any]) -> Callable[..., Any]:
    def app(environ: dict, start_response: Callable[..., Any]) -> list[bytes]:
        seen["ctx"] = fieldlab.current()
        seen["variant"] = fieldlab.variant("per-request")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    return app


def _counting(lab: Lab, calls: list[dict[str, Any]]) -> None:
    real = lab.assign_all_with_version

    def assign_all_with_version(units: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append({"units": dict(units), **kwargs})
        return real(units, *args, **kwargs)

    lab.assign_all_with_version = assign_all_with_version  # type: ignore[method-assign]


@pytest.mark.parametrize("outer", [False, True], ids=["otel-outer", "fieldlab-outer"])
def test_the_request_unit_is_never_assigned_with_an_id_other_than_the_spans_trace_id(otel: Any, outer: bool) -> None:
    """Before, outside the instrumentation, the lab assigned with a made-up id and the recorder re-ran it."""
    lab = _per_request_lab()
    calls: list[dict[str, Any]] = []
    _counting(lab, calls)
    seen: dict[str, Any] = {}
    units = {"user": "header:X-User-Id"}
    app = (
        fl_wsgi.FieldLabMiddleware(OtelWSGI(_app(seen)), lab=lab, units=units)
        if outer
        else OtelWSGI(fl_wsgi.FieldLabMiddleware(_app(seen), lab=lab, units=units))
    )
    assert WerkzeugClient(app).get("/", headers={"X-User-Id": "ann"}).status_code == 200
    (span,) = otel.server_spans()
    tid = format(span.context.trace_id, "032x")
    ids = [c["units"].get("request") for c in calls]
    assert set(ids) - {None} == {tid}, ids  # no evaluation with an id the span does not carry
    assert sum(c.get("unit_kind") is None for c in calls) == 1  # every experiment evaluated in one call
    assert seen["ctx"].units["request"] == tid == span.attributes[A.unit_attr("request")]
    assert seen["variant"] == lab.assign("per-request", tid).variant
    assert span.attributes[A.variant_attr("per-request")] == seen["variant"]


@pytest.mark.parametrize(
    "make",
    [
        lambda lab, **kw: fl_wsgi.FieldLabMiddleware(lambda e, s: [], lab=lab, **kw),
        lambda lab, **kw: fl_asgi.FieldLabMiddleware(lambda s, r, se: None, lab=lab, **kw),
    ],
    ids=["wsgi", "asgi"],
)
def test_a_misspelt_adapter_option_is_a_config_error_naming_the_closest(make: Callable[..., Any]) -> None:
    """Before, a typo came back as a raw TypeError from AdapterConfig."""
    with pytest.raises(ConfigError, match="did you mean 'units'"):
        make(_per_request_lab(), unitz={"user": "header:X-User-Id"})
    with pytest.raises(ConfigError, match="propagate_baggage"):
        make(_per_request_lab(), propagate_bagage=True)


def test_one_request_builder_name_and_the_old_asgi_name_still_works() -> None:
    lab = _per_request_lab()
    assert fl_wsgi.FieldLabMiddleware(lambda e, s: [], lab=lab, request_factory=dict).request_factory is dict
    assert fl_asgi.FieldLabMiddleware(lambda s, r, se: None, lab=lab, request_factory=dict).request_factory is dict
    with pytest.warns(DeprecationWarning, match="request_factory"):
        mw = fl_asgi.FieldLabMiddleware(lambda s, r, se: None, lab=lab, request_class=dict)
    assert mw.request_factory is dict


def test_options_list_what_every_adapter_takes() -> None:
    assert Options.names() == (
        "units",
        "headers",
        "attributes",
        "unit_ids",
        "trust_baggage",
        "propagate_baggage",
        "visitor_cookie",
        "override_header",
        "override_cookie",
        "cache_headers",
    )


def test_public_modules_export_no_request_path_internals() -> None:
    assert not {"start", "bind", "reset", "read_from", "PreparedRequest"} & set(context.__all__)
    assert not {"set_attributes", "add_event", "ensure_processor", "processor_installed"} & set(telemetry.__all__)
