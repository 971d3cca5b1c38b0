"""Test support, and fieldlab's pytest plugin (registered through the ``pytest11`` entry point).

Force variants for the code under test, in requests of every adapter's test
client (Flask's ``test_client()``, Django's ``Client``, Starlette's and
FastAPI's ``TestClient``, or real servers in the test process) and in
fieldlab's own evaluations (``lab.assign``, the OpenFeature provider)::

    @pytest.mark.fieldlab(**{"checkout-redesign": "one-page"})
    def test_one_page_checkout(client):
        assert b"Pay now" in client.get("/checkout").data

    def test_both_layouts(client, fieldlab_variants):
        fieldlab_variants.force("checkout-redesign", "one-page")
        ...

and capture the spans fieldlab wrote, with the real OpenTelemetry SDK::

    def test_exposure_is_recorded(client, fieldlab_spans):
        client.get("/checkout", headers={"X-User-Id": "alice"})
        (span,) = fieldlab_spans.spans
        assert span.attributes["fieldlab.exposed.checkout-redesign"] is True

How forcing works, and why it cannot leak into production: while a forcing
is active (a marker, the fixture, or :func:`force` as a context manager) this
module replaces two methods of :class:`fieldlab.Lab` — the evaluation entry
points every adapter's request path goes through — with wrappers that answer
forced experiments with the forced variant (reason ``override``, so the span
shows ``fieldlab.forced.<key>``, as a signed QA override would) and leave
every other experiment to the real evaluation. When the last forcing ends the
original methods are put back. No production code path consults anything:
there is no flag, environment variable or secret an attacker could set, and
the wrappers exist only inside a test process that activated them. Entering
and leaving also hands every live Lab a fresh (identical) configuration
snapshot, so adapters drop evaluations they prepared before or during the
forcing. A forced variant the experiment does not have fails the test at
teardown, naming the experiment and its variants.

Forcing is process-wide (a test client may run the app in another thread), so
tests that force variants must not run concurrently in one process (pytest-xdist
runs them in separate processes, which is fine).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pytest

from . import attributes as A
from ._assignment import OVERRIDE, Assignment
from .context import RequestContext, bind, reset, start
from .errors import ConfigError
from .lab import _LABS, Lab

__all__ = [
    "CapturedSpans",
    "ForcedVariants",
    "fieldlab_spans",
    "fieldlab_variants",
    "force",
    "pytest_configure",
]

_lock = threading.RLock()
_active: list[ForcedVariants] = []
_originals: dict[str, Any] = {}


def _forced_for(lab: Lab, key: str) -> Assignment | None:
    """The forced assignment of ``key`` in ``lab`` (the innermost forcing wins), else None."""
    for forcing in reversed(_active):
        name = forcing.variants.get(key)
        if name is None:
            continue
        exp = lab.experiments.get(key)
        if exp is None:
            return None
        if name not in exp.variant_names:
            forcing.problems.add(
                f"experiment {key!r} has no variant {name!r} (its variants: {', '.join(exp.variant_names)})"
            )
            return None
        forcing.used.add(key)
        return Assignment(key, name, None, OVERRIDE, exp.variant(name).params)
    return None


def _assign(
    self: Lab, key: str, unit: Any, attributes: Mapping[str, Any] | None = None, overrides: Any = None
) -> Assignment:
    forced = _forced_for(self, key)
    if forced is not None:
        return forced
    return _originals["assign"](self, key, unit, attributes, overrides)  # type: ignore[no-any-return]


def _assign_all_with_version(
    self: Lab,
    units: Mapping[str, Any],
    attributes: Mapping[str, Any] | None = None,
    *,
    overrides: Any = None,
    unit_kind: str | None = None,
) -> tuple[str, dict[str, Assignment]]:
    version, out = _originals["assign_all_with_version"](
        self, units, attributes, overrides=overrides, unit_kind=unit_kind
    )
    for key in list(out):
        forced = _forced_for(self, key)
        if forced is not None:
            out[key] = forced
    return version, out


def _refresh_labs() -> None:
    """Give every live Lab an identical new configuration snapshot: adapters then re-evaluate."""
    for lab in list(_LABS):
        with lab._lock:  # the lock reload() swaps the state under: a concurrent reload is never undone
            lab._state = copy.copy(lab._state)


class ForcedVariants:
    """Experiment key -> variant name forced while active (see the module docs); nestable, innermost wins."""

    def __init__(self, variants: Mapping[str, str] | None = None) -> None:
        self.variants: dict[str, str] = {}
        self.problems: set[str] = set()
        #: keys some lab evaluated as forced while this was active
        self.used: set[str] = set()
        self._on = False
        for key, name in (variants or {}).items():
            self.force(key, name)

    def force(self, experiment: str, variant: str) -> ForcedVariants:
        """Force ``experiment`` to ``variant`` (from now on, for this forcing)."""
        if not isinstance(experiment, str) or not isinstance(variant, str):
            raise ConfigError(
                "fieldlab marker",
                f"cannot force {experiment!r} to {variant!r}",
                'name experiments and variants as strings: @pytest.mark.fieldlab(**{"key": "variant"})',
            )
        with _lock:
            self.variants[experiment] = variant
            if self._on:
                _refresh_labs()
        return self

    def unforce(self, experiment: str) -> None:
        """Stop forcing ``experiment`` (its real assignment applies again)."""
        with _lock:
            self.variants.pop(experiment, None)
            if self._on:
                _refresh_labs()

    def start(self) -> ForcedVariants:
        with _lock:
            if self._on:
                return self
            if not _active:
                _originals["assign"] = Lab.assign
                _originals["assign_all_with_version"] = Lab.assign_all_with_version
                Lab.assign = _assign  # type: ignore[method-assign]
                Lab.assign_all_with_version = _assign_all_with_version  # type: ignore[method-assign]
            _active.append(self)
            self._on = True
            _refresh_labs()
        return self

    def stop(self) -> None:
        with _lock:
            if not self._on:
                return
            _active.remove(self)
            self._on = False
            if not _active:
                Lab.assign = _originals.pop("assign")  # type: ignore[method-assign]
                Lab.assign_all_with_version = _originals.pop("assign_all_with_version")  # type: ignore[method-assign]
            _refresh_labs()

    def __enter__(self) -> ForcedVariants:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @contextmanager
    def request(
        self, lab: Lab, units: Mapping[str, str | None] | None = None, attributes: Mapping[str, Any] | None = None
    ) -> Iterator[RequestContext]:
        """Bind a request context for code under test that runs outside any web request.

        ``fieldlab.variant()`` and friends then answer as in a request of
        ``units`` (forced experiments included); the context is unbound after.
        """
        ctx = start(lab, units or {}, attributes)
        token = bind(ctx)
        try:
            yield ctx
        finally:
            reset(token)

    def __repr__(self) -> str:
        return f"ForcedVariants({self.variants!r})"


def force(variants: Mapping[str, str] | None = None, **more: str) -> ForcedVariants:
    """A forcing to use as a context manager: ``with fieldlab.testing.force({"checkout-redesign": "one-page"}):``."""
    return ForcedVariants({**(variants or {}), **more})


# ---------------------------------------------------------------------------------------------- spans
class CapturedSpans:
    """Spans finished while the ``fieldlab_spans`` fixture is active (the real SDK's ReadableSpans).

    ``spans`` holds those fieldlab wrote to (a ``fieldlab.*`` attribute or
    fieldlab's ``feature_flag.evaluation`` event), ``all`` every finished span.
    fieldlab writes onto the request's SERVER span, which the framework's
    OpenTelemetry instrumentation creates: instrument the app under test
    (e.g. ``FlaskInstrumentor().instrument_app(app)``) to get one.
    """

    def __init__(self) -> None:
        self.all: list[Any] = []
        self._lock = threading.Lock()

    def _add(self, span: Any) -> None:
        with self._lock:
            self.all.append(span)

    @property
    def spans(self) -> list[Any]:
        with self._lock:
            return [s for s in self.all if _written_by_fieldlab(s)]

    def variants(self) -> list[dict[str, str]]:
        """Per fieldlab span, in finishing order: experiment key -> variant."""
        n = len(A.VARIANT_PREFIX)
        return [
            {k[n:]: v for k, v in (s.attributes or {}).items() if k.startswith(A.VARIANT_PREFIX)} for s in self.spans
        ]

    def exposed(self) -> list[set[str]]:
        """Per fieldlab span, in finishing order: the experiments the code read."""
        n = len(A.EXPOSED_PREFIX)
        return [
            {k[n:] for k, v in (s.attributes or {}).items() if k.startswith(A.EXPOSED_PREFIX) and v} for s in self.spans
        ]

    def clear(self) -> None:
        with self._lock:
            self.all.clear()

    def __len__(self) -> int:
        return len(self.spans)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.spans)


def _written_by_fieldlab(span: Any) -> bool:
    if any(k.startswith(A.PREFIX) for k in (span.attributes or {})):
        return True
    return any(
        e.name == A.FLAG_EVENT and (e.attributes or {}).get(A.FLAG_PROVIDER) == A.PROVIDER_NAME for e in span.events
    )


_captures: list[CapturedSpans] = []
_capture_processor: list[Any] = []


def _ensure_capture_processor() -> None:
    """Add, once per process, a span processor feeding the active captures to the global SDK provider."""
    if _capture_processor:
        return
    from opentelemetry import trace
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

    class _Capture(SpanProcessor):  # type: ignore[misc]
        def on_end(self, span: Any) -> None:
            for capture in _captures:
                capture._add(span)

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        trace.set_tracer_provider(TracerProvider())
        provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        pytest.fail(
            "fieldlab_spans needs the OpenTelemetry SDK's TracerProvider as the global provider; "
            f"this process set a {type(provider).__name__}"
        )
    processor = _Capture()
    provider.add_span_processor(processor)
    _capture_processor.append(processor)


# ---------------------------------------------------------------------------------------------- pytest
def pytest_configure(config: Any) -> None:
    config.addinivalue_line(
        "markers",
        "fieldlab(**variants): force fieldlab variants for this test, e.g. "
        '@pytest.mark.fieldlab(**{"checkout-redesign": "one-page"})',
    )


def _marker_variants(node: Any) -> dict[str, str]:
    merged: dict[str, str] = {}
    for mark in reversed(list(node.iter_markers("fieldlab"))):  # outermost first: the closest marker wins
        if mark.args:
            if len(mark.args) != 1 or not isinstance(mark.args[0], Mapping):
                pytest.fail(
                    f"@pytest.mark.fieldlab takes experiment=variant keywords or one dict, got {mark.args!r}",
                    pytrace=False,
                )
            merged.update(mark.args[0])
        merged.update(mark.kwargs)
    return merged


def _forcing(request: Any) -> Iterator[ForcedVariants]:
    forcing = ForcedVariants(_marker_variants(request.node))
    with forcing:
        yield forcing
    if forcing.problems:
        pytest.fail("fieldlab: " + "; ".join(sorted(forcing.problems)), pytrace=False)


@pytest.fixture
def fieldlab_variants(request: Any) -> Iterator[ForcedVariants]:
    """Force variants for the code under test; starts with the test's ``@pytest.mark.fieldlab`` variants."""
    yield from _forcing(request)


@pytest.fixture(autouse=True)
def _fieldlab_marker(request: Any) -> Iterator[None]:
    """Apply ``@pytest.mark.fieldlab`` to tests that do not ask for ``fieldlab_variants``."""
    if "fieldlab_variants" in request.fixturenames or request.node.get_closest_marker("fieldlab") is None:
        yield
        return
    for _ in _forcing(request):
        yield


@pytest.fixture
def fieldlab_spans() -> Iterator[CapturedSpans]:
    """The spans finished during the test, through the real OpenTelemetry SDK (``.spans``: those fieldlab wrote)."""
    _ensure_capture_processor()
    capture = CapturedSpans()
    _captures.append(capture)
    try:
        yield capture
    finally:
        _captures.remove(capture)
