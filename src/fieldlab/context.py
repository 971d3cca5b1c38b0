"""The per-request context: which variants this request has, and what it did with them.

Data flows one way: adapter -> request path (:mod:`fieldlab._request`: headers,
units, overrides, baggage) -> :class:`~fieldlab.lab.Lab` (every assignment,
from one configuration snapshot) -> :class:`RequestContext` -> recorder
(:mod:`fieldlab.telemetry`: spans). The context holds what the request path
found and the lab assigned; reads mark exposures and tell the recorder, which
only writes. Nothing here evaluates an experiment again behind the caller's
back (:meth:`RequestContext.rebind_unit` is an explicit call).

The context is bound with a :class:`contextvars.ContextVar`, so each request
sees only its own assignments, in threads started with a copied context, in
asyncio tasks and in sync views run in threadpools. Outside a request
everything returns the default. A failing recorder or hook is swallowed,
counted and logged once.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from . import _internal
from ._assignment import Assignment
from .lab import Lab
from .overrides import VerifiedOverrides

if TYPE_CHECKING:
    from opentelemetry.trace import Span

__all__ = ["Recorder", "RequestContext", "assignment", "choose", "current", "expose", "param", "variant"]

_internal.counters("context", ("hook_errors",))
_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("fieldlab_request", default=None)


class Recorder(Protocol):
    """What a context tells as the request goes on (:class:`fieldlab.telemetry.Recorder` writes it on spans)."""

    def on_expose(self, ctx: RequestContext, a: Assignment) -> None:
        """The request read ``a``'s variant for the first time."""

    def on_event(self, ctx: RequestContext, name: str, attributes: dict[str, Any]) -> None:
        """Something worth a span event happened (e.g. an injected fault)."""

    def on_fault(self, ctx: RequestContext) -> None:
        """A fault was injected into the request."""

    def on_attributes(self, ctx: RequestContext, attributes: dict[str, Any]) -> None:
        """The request earned span attributes as it ran (e.g. its arm of a sick canary)."""


class PreparedRequest:
    """What every request with the same unit ids shares, computed once (see :mod:`fieldlab._request`).

    Without targeting and without per-request units, assignments are a function
    of the unit ids alone, so an adapter evaluates them, and the span attributes
    they imply, once per distinct ids and hands each request this read-only
    bundle. ``events`` is filled by telemetry with ready-made exposure event
    attributes, per experiment.
    """

    def __init__(
        self,
        units: dict[str, str | None],
        assignments: dict[str, Assignment],
        held_out: list[str],
        exposed: frozenset[str],
        version: str,
        base_attrs: dict[str, Any],
        unit_values: dict[str, str],
    ) -> None:
        self.units = units
        self.assignments = assignments
        self.held_out = held_out
        self.exposed = exposed
        self.version = version
        self.base_attrs = base_attrs
        self.unit_values = unit_values
        self.events: dict[str, Any] = {}


def on_assign_exposures(lab: Lab, assignments: Mapping[str, Assignment]) -> set[str]:
    """Keys of ``assignments`` exposed as soon as they are assigned (``exposure = "on_assign"``, unit in it)."""
    experiments = lab.experiments
    exposed = set()
    for key, a in assignments.items():
        if a.in_experiment:
            exp = experiments.get(key)
            if exp is not None and exp.exposure == "on_assign":
                exposed.add(key)
    return exposed


class RequestContext:
    """Everything fieldlab knows about one request.

    ``assignments`` holds an :class:`Assignment` for every experiment (also
    those the unit is not in, with their reason); treat it and ``units`` as
    read-only, they may be shared with other requests of the same units.
    ``exposed`` holds the keys whose variant the code read. ``faults`` lists
    the faults injected into this request.

    Built by the request path (or :func:`start`) with the lab's assignments, or
    evaluated here when none are given. Exposures, events and faults go to
    ``recorder``, unless a hook (``on_expose``, ``on_event``, ``on_fault``) is
    set on the context itself.
    """

    def __init__(
        self,
        lab: Lab,
        units: Mapping[str, str | None],
        attributes: Mapping[str, Any] | None = None,
        overrides: VerifiedOverrides | None = None,
        trace_id: str | None = None,
        *,
        copy: bool = True,
        assignments: dict[str, Assignment] | None = None,
        version: str | None = None,
        recorder: Recorder | None = None,
        prepared: PreparedRequest | None = None,
    ) -> None:
        self.lab = lab
        # copy=False: the caller hands over fresh dicts it will not touch again (the request path)
        self.units: dict[str, str | None] = dict(units) if copy else units  # type: ignore[assignment]
        self.attributes: dict[str, Any] = dict(attributes or {}) if copy else attributes  # type: ignore[assignment]
        self.overrides = overrides
        #: The request's trace id (32 hex digits) once known: the current span's, the inbound traceparent's.
        self.trace_id = trace_id
        #: True when ``trace_id`` was made up by fieldlab (no span, no traceparent): faults ignore it.
        self.trace_id_generated = False
        self.prepared = prepared
        self.exposed: set[str]
        if prepared is not None:  # evaluated earlier for exactly these unit ids: nothing to do
            self.version = prepared.version
            self.assignments = prepared.assignments
            self.held_out: list[str] = prepared.held_out
            self.exposed = set(prepared.exposed)
        else:
            if assignments is None:
                version, assignments = lab.assign_all_with_version(self.units, self.attributes, overrides=overrides)
            self.version = version if version is not None else lab.version
            self.assignments = assignments
            self.held_out = _held_out(lab, assignments)
            self.exposed = on_assign_exposures(lab, assignments)
        #: Faults injected into this request (their span event attributes).
        self.faults: list[dict[str, Any]] = []
        self._fault_injected = False
        #: Per fault point, how many draws this request made there (the fault decisions' sequence).
        self.fault_seq: dict[str, int] = {}
        #: The request's SERVER span once it is known (see :mod:`fieldlab.telemetry`).
        self.server_span: Span | None = None
        #: Who writes this request's exposures, events and faults onto its span, if anyone.
        self.recorder = recorder
        #: ``fieldlab.unit.<kind>`` values, once the recorder computed them (prepared requests carry theirs).
        self.unit_values: dict[str, str] | None = prepared.unit_values if prepared is not None else None
        #: Span events recorded before the server span was known, written when it is.
        self.pending_events: list[tuple[str, dict[str, Any]]] = []
        #: Span attributes earned before the span was found (a canary arm), written when it is.
        self.pending_attributes: dict[str, Any] = {}
        #: Experiments whose variant telemetry left off the server span for lack of room (None: none).
        self.span_left_out: set[str] | None = None
        #: A visitor id fieldlab made for this request: the adapter sets it as a cookie.
        self.new_visitor_id: str | None = None
        #: Whether the ``request`` unit waits for the server span's trace id (see :mod:`fieldlab._request`).
        self.request_unit_pending = False
        #: The OpenTelemetry context token of the outbound baggage the request path attached, if any.
        self.baggage_token: object | None = None
        #: Experiments whose assignment the request's code read (in the experiment or not): what the response
        #: depends on, for its ``Vary`` / ``Cache-Control`` (see :mod:`fieldlab._request.caching`).
        self.read_keys: set[str] = set()
        #: Unit kinds whose id this request created (a new session): a cache must not share its response.
        self.new_unit_kinds: set[str] = set()
        #: Where each unit kind came from (see :mod:`fieldlab._cache_headers`), set by the request path when
        #: the adapter writes cache headers; None: it does not.
        self.unit_sources: Mapping[str, str] | None = None
        #: Free-form notes of the application (or its tests) about the request; fieldlab keeps nothing here.
        self.extra: dict[str, Any] = {}
        self.on_expose: Callable[[RequestContext, Assignment], None] | None = None
        self.on_event: Callable[[RequestContext, str, dict[str, Any]], None] | None = None
        self.on_fault: Callable[[RequestContext], None] | None = None

    @classmethod
    def from_prepared(
        cls, lab: Lab, attributes: dict[str, Any], prepared: PreparedRequest, recorder: Recorder | None
    ) -> RequestContext:
        """A context for units whose evaluation was prepared earlier: no evaluation, nothing copied."""
        return cls(lab, prepared.units, attributes, copy=False, recorder=recorder, prepared=prepared)

    @property
    def fault_injected(self) -> bool:
        """True once any fault was injected into this request; setting it tells telemetry."""
        return self._fault_injected

    @fault_injected.setter
    def fault_injected(self, value: bool) -> None:
        self._fault_injected = bool(value)
        if value:
            hook = self.on_fault
            try:
                if hook is not None:
                    hook(self)
                elif self.recorder is not None:
                    self.recorder.on_fault(self)
            except Exception:
                _hook_failed("fault")

    def add_fault(self, attributes: dict[str, Any]) -> None:
        """Note a fault injected into this request (its span event attributes)."""
        self.faults.append(attributes)

    def own_extra(self) -> dict[str, Any]:
        """``extra``, the application's own notes about the request (kept for callers of earlier releases)."""
        return self.extra

    def own_assignments(self) -> dict[str, Assignment]:
        """This request's own copy of ``assignments``, to change it without touching other requests."""
        if self.prepared is not None:
            self.assignments = dict(self.assignments)
            self.prepared = None
        return self.assignments

    def set_unit(self, kind: str, unit_id: str | None, version: str, fresh: Mapping[str, Assignment]) -> None:
        """Take a unit id learnt after the context was built, with the assignments the lab gave it.

        ``fresh`` holds the assignments of the experiments of ``kind`` made
        under configuration ``version``; when that is not the version of the
        other assignments, ``fresh`` must hold every experiment (one snapshot).
        """
        self.units = dict(self.units)
        self.units[kind] = unit_id
        self.unit_values = None
        if version != self.version:
            self.version = version
            self.assignments = {}
            self.prepared = None
            self.exposed = set()
        assignments = self.own_assignments()
        for key, a in fresh.items():
            assignments[key] = a
            self.exposed.discard(key)
        self.held_out = _held_out(self.lab, assignments)
        self.exposed |= on_assign_exposures(self.lab, fresh)

    def rebind_unit(self, kind: str, unit_id: str | None) -> None:
        """Evaluate the experiments of one unit kind again with a new id (the others keep theirs).

        After a reload since the context was built, everything is evaluated
        again, so version and assignments stay one snapshot.
        """
        units = {**self.units, kind: unit_id}
        lab = self.lab
        version, fresh = lab.assign_all_with_version(units, self.attributes, overrides=self.overrides, unit_kind=kind)
        if version != self.version:
            version, fresh = lab.assign_all_with_version(units, self.attributes, overrides=self.overrides)
        self.set_unit(kind, unit_id, version, fresh)

    def in_experiment(self) -> dict[str, Assignment]:
        """Assignments where the unit takes part (split or override) or got a concluded winner."""
        return {k: a for k, a in self.assignments.items() if a.variant is not None}

    def read(self, key: str) -> Assignment | None:
        """The assignment of ``key``, marking it exposed when the unit is in the experiment."""
        a = self.assignments.get(key)
        if a is None:
            if key not in self.lab.experiments:  # not a key added by a reload since this request began
                self.lab._unknown_key(key)
            return None
        self.read_keys.add(key)  # every read: a default page is as unit-specific as a variant's
        if a.in_experiment and key not in self.exposed:
            self.exposed.add(key)
            hook = self.on_expose
            try:
                if hook is not None:
                    hook(self, a)
                elif self.recorder is not None:
                    self.recorder.on_expose(self, a)
            except Exception:
                _hook_failed("expose")
        return a

    def annotate(self, attributes: dict[str, Any]) -> None:
        """Set attributes on the request's SERVER span through telemetry (e.g. a canary arm); never raises."""
        recorder = self.recorder
        try:
            if recorder is not None:
                recorder.on_attributes(self, attributes)
        except Exception:
            _hook_failed("attributes")

    def event(self, name: str, attributes: dict[str, Any]) -> None:
        """Record a span event (e.g. an injected fault) through telemetry or the ``on_event`` hook."""
        hook = self.on_event
        try:
            if hook is not None:
                hook(self, name, attributes)
            elif self.recorder is not None:
                self.recorder.on_event(self, name, attributes)
        except Exception:
            _hook_failed("event")


def _held_out(lab: Lab, assignments: Mapping[str, Assignment]) -> list[str]:
    if not lab.holdouts:
        return []
    return sorted({a.holdout for a in assignments.values() if a.holdout})


def _hook_failed(kind: str) -> None:
    """A telemetry hook failed: counted as ``context.hook_errors``, logged once per kind; the request goes on."""
    _internal.failed(
        "context", "hook_errors", kind, "fieldlab: a telemetry %s hook failed; requests go on unrecorded", kind
    )


def start(
    lab: Lab,
    units: Mapping[str, str | None],
    attributes: Mapping[str, Any] | None = None,
    overrides: VerifiedOverrides | None = None,
    trace_id: str | None = None,
) -> RequestContext:
    """Evaluate a request's experiments; does not bind the context (see :func:`bind`)."""
    return RequestContext(lab, units, attributes, overrides, trace_id)


def bind(ctx: RequestContext | None) -> contextvars.Token[RequestContext | None]:
    """Make ``ctx`` the current request context; returns the token for :func:`reset`."""
    return _current.set(ctx)


def reset(token: contextvars.Token[RequestContext | None]) -> None:
    """Undo :func:`bind`; never raises (a token from another context just clears the variable)."""
    try:
        _current.reset(token)
    except ValueError:
        _current.set(None)


def current() -> RequestContext | None:
    """The current request's context, or None outside a request."""
    return _current.get()


def read_from(ctx: RequestContext | None, key: str) -> Assignment | None:
    """``ctx.read(key)`` for a context that may be None; never raises (the default path)."""
    if ctx is None:
        return None
    try:
        return ctx.read(key)
    except Exception:
        return None


def assignment(key: str) -> Assignment | None:
    """The current request's assignment of ``key`` (marks it exposed), or None outside a request."""
    return read_from(_current.get(), key)


def expose(key: str) -> None:
    """Mark ``key`` exposed for the current request without reading a value."""
    assignment(key)


def variant(key: str, default: str | None = None) -> str | None:
    """The current request's variant of ``key``; ``default`` outside a request or when not in it."""
    ctx = _current.get()  # assignment() inlined: this runs on every read of every request
    if ctx is None:
        return default
    try:
        a = ctx.read(key)
    except Exception:
        return default
    if a is None or a.variant is None:
        return default
    return a.variant


def choose(key: str, options: Mapping[str, Any], default: Any = None) -> Any:
    """The value ``options`` maps the current variant of ``key`` to, else ``default``.

    >>> choose("checkout-redesign", {"treatment": "new.html"}, default="old.html")  # outside a request
    'old.html'
    """
    v = variant(key)
    if v is None:
        return default
    return options.get(v, default)


def param(key: str, name: str, default: Any = None) -> Any:
    """A parameter of the current request's variant of ``key``, else ``default``."""
    a = assignment(key)
    if a is None or a.variant is None:
        return default
    return a.params.get(name, default)
