"""The per-request context: which variants this request has, and what it did with them.

Data flows one way: request -> adapter -> context -> lab -> telemetry. An
adapter resolves the request's units and attributes, calls :func:`start` (which
evaluates every experiment once), and binds the context with a
:class:`contextvars.ContextVar`, so each request sees only its own assignments,
in threads started with a copied context, in asyncio tasks and in sync views
run in threadpools. Outside a request everything returns the default.

Telemetry hooks (set by :mod:`fieldlab.telemetry`) are called on exposure and
on fault events; a failing hook is swallowed, counted and logged once.
"""

from __future__ import annotations

import contextvars
from types import MappingProxyType
from typing import Any, Callable, Mapping

from . import _internal
from ._assignment import Assignment
from .lab import Lab
from .overrides import VerifiedOverrides

__all__ = ["RequestContext", "PreparedRequest", "read_from", "current", "start", "bind", "reset", "variant", "param", "choose", "assignment", "expose"]

_internal.counters("context", ("hook_errors",))
_NO_EXTRA: Mapping[str, Any] = MappingProxyType({})
_current: contextvars.ContextVar["RequestContext | None"] = contextvars.ContextVar("fieldlab_request", default=None)


class PreparedRequest:
    """What every request with the same unit ids shares, computed once (see :mod:`fieldlab._request`).

    Without targeting and without per-request units, assignments are a function
    of the unit ids alone, so an adapter evaluates them, and the span attributes
    they imply, once per distinct ids and hands each request this read-only
    bundle. ``events`` is filled by telemetry with ready-made exposure event
    attributes, per experiment.
    """

    __slots__ = ("units", "assignments", "held_out", "exposed", "version", "base_attrs", "unit_values", "events")

    def __init__(self, units: dict[str, str | None], assignments: dict[str, Assignment], held_out: list[str],
                 exposed: frozenset[str], version: str, base_attrs: dict[str, Any], unit_values: dict[str, str]) -> None:
        self.units = units
        self.assignments = assignments
        self.held_out = held_out
        self.exposed = exposed
        self.version = version
        self.base_attrs = base_attrs
        self.unit_values = unit_values
        self.events: dict[str, Any] = {}


class RequestContext:
    """Everything fieldlab knows about one request.

    ``assignments`` holds an :class:`Assignment` for every experiment (also
    those the unit is not in, with their reason); treat it and ``units`` as
    read-only, they may be shared with other requests of the same units.
    ``exposed`` holds the keys whose variant the code read (a frozenset until
    the first read). ``faults`` lists the faults injected into this
    request.

    Exposures, events and faults go to ``recorder`` (telemetry), unless a hook
    (``on_expose``, ``on_event``, ``on_fault``) is set on the context itself.
    The fields most requests never set live on the class, so creating a
    context costs only what a request uses.
    """

    __slots__ = ("lab", "units", "attributes", "assignments", "exposed", "version", "server_span", "recorder",
                 "prepared", "span_left_out", "__dict__")

    # rarely set: class-level defaults, set per instance only when needed
    #: What adapters and telemetry keep about the request besides its assignments (a new visitor
    #: id, a generated trace id, baggage tokens...): read-only and empty until :meth:`own_extra`.
    extra: Mapping[str, Any] = _NO_EXTRA
    overrides: VerifiedOverrides | None = None
    trace_id: str | None = None
    held_out: "list[str] | tuple[()]" = ()
    faults: "list[dict[str, Any]] | tuple[()]" = ()
    _fault_injected = False
    on_expose: Callable[["RequestContext", Assignment], None] | None = None
    on_event: Callable[["RequestContext", str, dict[str, Any]], None] | None = None
    on_fault: Callable[["RequestContext"], None] | None = None

    def __init__(self, lab: Lab, units: Mapping[str, str | None], attributes: Mapping[str, Any] | None = None,
                 overrides: VerifiedOverrides | None = None, trace_id: str | None = None, *,
                 copy: bool = True, assignments: dict[str, Assignment] | None = None,
                 version: str | None = None) -> None:
        self.lab = lab
        # copy=False: the caller hands over fresh dicts it will not touch again (the adapters' hot path)
        self.units = dict(units) if copy or units.__class__ is not dict else units  # type: ignore[assignment]
        self.attributes = dict(attributes or {}) if copy or attributes.__class__ is not dict else attributes  # type: ignore[assignment]
        if overrides is not None:
            self.overrides = overrides
        if trace_id is not None:
            self.trace_id = trace_id
        # assignments: already evaluated for exactly these units (an adapter's cache); else evaluate now,
        # taking the version from the same configuration snapshot as the assignments
        if assignments is not None:
            self.version = version if version is not None else lab.version
            self.assignments: dict[str, Assignment] = assignments
        else:
            self.version, self.assignments = lab.assign_all_with_version(self.units, self.attributes,
                                                                         overrides=overrides)
        if lab.holdouts:
            self.held_out = sorted({a.holdout for a in self.assignments.values() if a.holdout})
        self.exposed: set[str] = set()
        #: The request's SERVER span once telemetry found it (see :mod:`fieldlab.telemetry`).
        self.server_span: Any = None
        #: The telemetry recorder that writes this request onto its span, if any.
        self.recorder: Any = None
        self.prepared: PreparedRequest | None = None
        #: Experiments whose variant telemetry left off the server span for lack of room (None: none).
        self.span_left_out: set[str] | None = None
        self._expose_on_assign()

    @classmethod
    def from_prepared(cls, lab: Lab, attributes: dict[str, Any], prepared: PreparedRequest,
                      recorder: Any) -> "RequestContext":
        """A context for units whose evaluation was prepared earlier: no evaluation, nothing copied."""
        self = _new(cls)
        self.lab = lab
        self.units = prepared.units
        self.attributes = attributes
        self.assignments = prepared.assignments
        if prepared.held_out:
            self.held_out = prepared.held_out
        self.exposed = prepared.exposed  # shared frozenset; read() copies it on the first exposure
        self.version = prepared.version
        self.server_span = None
        self.recorder = recorder
        self.prepared = prepared
        self.span_left_out = None
        return self

    def _expose_on_assign(self) -> None:
        keys = _on_assign_keys(self.lab)
        if keys:
            assignments = self.assignments
            for key in keys:
                a = assignments.get(key)
                if a is not None and a.in_experiment:
                    self.exposed.add(key)

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
        if self.faults:
            self.faults.append(attributes)  # type: ignore[union-attr]
        else:
            self.faults = [attributes]

    def own_extra(self) -> dict[str, Any]:
        """``extra`` as this request's own dict, to write into (most requests never need one)."""
        extra = self.extra
        if extra is _NO_EXTRA:
            extra = self.extra = {}
        return extra  # type: ignore[return-value]

    def own_assignments(self) -> dict[str, Assignment]:
        """This request's own copy of ``assignments``, to change it without touching other requests."""
        if self.prepared is not None:
            self.assignments = dict(self.assignments)
            self.prepared = None
        return self.assignments

    def rebind_unit(self, kind: str, unit_id: str | None) -> None:
        """Re-evaluate the experiments of one unit kind with a new id.

        Used for the ``request`` unit when the server span (and so the trace
        id) only appears after the context was started; it happens before the
        application has read anything.
        """
        self.units = units = dict(self.units)
        units[kind] = unit_id
        lab = self.lab
        # only this kind's experiments: the others keep their one evaluation, if the config is still the one
        # that made it; after a reload everything is evaluated again, so version and assignments stay one snapshot
        version, fresh = lab.assign_all_with_version(units, self.attributes, overrides=self.overrides, unit_kind=kind)
        if version != self.version:
            version, fresh = lab.assign_all_with_version(units, self.attributes, overrides=self.overrides)
            self.version = version
            self.assignments = {}
            self.prepared = None
            self.exposed = set()
        elif not fresh:
            return
        assignments = self.own_assignments()
        self.exposed = set(self.exposed)
        for key, a in fresh.items():
            assignments[key] = a
            self.exposed.discard(key)
        if lab.holdouts:
            self.held_out = sorted({a.holdout for a in assignments.values() if a.holdout})
        self._expose_on_assign()

    def in_experiment(self) -> dict[str, Assignment]:
        """Assignments where the unit takes part (split or override) or got a concluded winner."""
        return {k: a for k, a in self.assignments.items() if a.variant is not None}

    def read(self, key: str) -> Assignment | None:
        """The assignment of ``key``, marking it exposed when the unit is in the experiment."""
        a = self.assignments.get(key)
        if a is None:
            if key not in self.lab._state.experiments:  # not a key added by a reload since this request began
                self.lab._unknown_key(key)
            return None
        if a.in_experiment and key not in self.exposed:
            exposed = self.exposed
            if exposed.__class__ is not set:
                exposed = self.exposed = set(exposed)
            exposed.add(key)
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


_new = object.__new__

_on_assign_cache: dict[int, tuple[str, tuple[str, ...]]] = {}


def _on_assign_keys(lab: Lab) -> tuple[str, ...]:
    """Keys of experiments exposed on assignment, cached per lab and config version."""
    state = lab._state  # one snapshot: version and experiments of the same config
    version = state.version
    hit = _on_assign_cache.get(id(lab))
    if hit is None or hit[0] != version:
        keys = tuple(k for k, e in state.experiments.items() if e.exposure == "on_assign")
        if len(_on_assign_cache) > 256:
            _on_assign_cache.clear()
        _on_assign_cache[id(lab)] = hit = (version, keys)
    return hit[1]


def _hook_failed(kind: str) -> None:
    """A telemetry hook failed: counted as ``context.hook_errors``, logged once per kind; the request goes on."""
    _internal.failed("context", "hook_errors", kind, "fieldlab: a telemetry %s hook failed; requests go on unrecorded",
                     kind)


def start(lab: Lab, units: Mapping[str, str | None], attributes: Mapping[str, Any] | None = None,
          overrides: VerifiedOverrides | None = None, trace_id: str | None = None) -> RequestContext:
    """Evaluate a request's experiments; does not bind the context (see :func:`bind`)."""
    return RequestContext(lab, units, attributes, overrides, trace_id)


#: ``bind(ctx)`` makes ``ctx`` the current request context and returns a token for :func:`reset`
#: (the ContextVar's own ``set``: no Python frame on the request path).
bind: Callable[["RequestContext | None"], contextvars.Token] = _current.set


def reset(token: contextvars.Token) -> None:
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
